"""How an answer is decoded: the settings, forced answers, and the choice of each next token.

Sampling runs through transformers' logits warpers (temperature, top-k, top-p); with a seed, round
r of any session draws from a generator seeded with ``seed + r``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .pipeline import SegLLMPipeline

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(generated [1, t] long, scores [1, V] float) -> scores``; ``generated`` holds the tokens of
the current answer only (not the history)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How an answer is decoded.

    Greedy unless ``do_sample``; sampling uses ``temperature``, then ``top_k`` (0: off), then
    ``top_p`` (1.0: off). With ``seed`` set, sampling is reproducible: round r of any session
    draws from a generator seeded with ``seed + r``.
    """

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logits_processors: tuple[LogitsProcessor, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


class ForcedTokens:
    """A logits processor that makes the answer exactly ``token_ids`` (then ``eos`` if it runs past).

    For tests and benchmarks: a random model then emits ``[SEG]`` where wanted and every run
    generates the same number of tokens, step by step, as real decoding does.
    """

    def __init__(self, token_ids: Sequence[int], eos_id: int):
        self.token_ids = list(token_ids)
        self.eos_id = eos_id

    @classmethod
    def from_text(cls, pipeline: SegLLMPipeline, text: str) -> ForcedTokens:
        """The answer ``text`` tokenized as the template does, ``</s>`` included."""
        ids = pipeline.answer_token_ids(text)
        return cls(ids, pipeline.token_ids["eos"])

    def __call__(self, generated: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = generated.shape[1]
        token = self.token_ids[step] if step < len(self.token_ids) else self.eos_id
        forced = torch.full_like(scores, float("-inf"))
        forced[..., token] = 0.0
        return forced


def choose_token(logits: torch.Tensor, generated: list[int], cfg: GenerationConfig,
                 generator: torch.Generator | None, *, eos_id: int,
                 suppressed: torch.Tensor | None = None) -> int:
    """The next token of one row: never-generated ids masked (``suppressed``, a bool mask over
    the vocabulary; None: the caller masked them), ``</s>`` held back until
    ``min_new_tokens``, the config's processors, then greedy or sampling. ``logits`` is not
    changed."""
    scores = logits
    if suppressed is not None:
        scores = scores.masked_fill(suppressed.to(scores.device), float("-inf"))
    if len(generated) < cfg.min_new_tokens:
        scores = scores.clone() if scores is logits else scores
        scores[eos_id] = float("-inf")
    if cfg.logits_processors and scores is logits:  # processors may write in place
        scores = scores.clone()
    if cfg.logits_processors:
        ids = torch.tensor([generated], dtype=torch.long, device=scores.device).view(1, -1)
        row = scores[None]
        for processor in cfg.logits_processors:
            row = processor(ids, row)
        scores = row[0]
    if not cfg.do_sample:
        return int(torch.argmax(scores))
    return sample_token(scores, cfg, generator)


def sample_token(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """Temperature, top-k and top-p (nucleus) sampling of one row, through transformers' warpers."""
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers = LogitsProcessorList([TemperatureLogitsWarper(cfg.temperature)])
    if cfg.top_k:
        warpers.append(TopKLogitsWarper(top_k=cfg.top_k))
    if cfg.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=cfg.top_p))
    no_ids = torch.zeros((1, 0), dtype=torch.long, device=scores.device)  # warpers ignore ids
    probs = torch.softmax(warpers(no_ids, scores[None].float())[0], dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def round_generator(cfg: GenerationConfig, round_index: int) -> torch.Generator | None:
    """The random generator of round ``round_index`` (None when decoding greedily)."""
    if not cfg.do_sample:
        return None
    seed = cfg.seed + round_index if cfg.seed is not None else int(torch.randint(0, 2**62, ()))
    return torch.Generator().manual_seed(seed)
