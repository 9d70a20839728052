"""The batched key/value-cache engine behind chat sessions.

A ``Job`` is one session's share of a run (the tokens to feed, its cache, how to decode); the
``Engine`` runs several jobs together through a ``BatchedCache``, which lays the sessions' caches
side by side, left-padded, and returns each row's cache and the states that predict its
``[SEG]`` tokens (``Outcome``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.cache_utils import Cache

from .batched_inputs import embed_jobs, takes_batched_path
from .generation import GenerationConfig, choose_token
from .kv_cache import GrowingLayer, growing_cache

if TYPE_CHECKING:
    from .session import ChatSession


@dataclass
class Job:
    """One session's share of a batched run: what to feed and how to decode."""

    session: ChatSession
    question: str
    round: int
    prefix_ids: list[int]
    new_ids: list[int]  # history not yet in the cache, the prefix, and a forced answer's tokens
    pixel_values: torch.Tensor | None
    ref_crops: torch.Tensor  # this round's slots only
    ref_boxes: torch.Tensor
    feed_crops: torch.Tensor  # every slot in new_ids (more than this round's when recomputing)
    feed_boxes: torch.Tensor
    past: list[tuple[torch.Tensor, torch.Tensor]] | None
    past_len: int
    forced_answer: list[int] | None  # teacher-forced answer ids, </s> included
    decoder_ref_mask: np.ndarray | None  # union of the referenced masks (mask-aware decoding)
    max_new_tokens: int
    generation: GenerationConfig
    generator: torch.Generator | None
    warnings: list[str]
    frame_pixel_values: torch.Tensor | None = None  # [F, 3, S, S] a video's reference frames
    frame_tokens: torch.Tensor | None = None  # or [F, tokens_per_frame, H] them already encoded
    past_layers: list | None = None  # ``Outcome.layers`` of the round that made ``past``
    # region-encoder models (GLaMM): this round's boxes, the boxes of every <bbox> slot in
    # new_ids, and the CLIP input they are read from (also when the cache holds the image)
    region_boxes: torch.Tensor | None = None
    feed_region_boxes: torch.Tensor | None = None
    region_pixel_values: torch.Tensor | None = None


@dataclass
class Outcome:
    """What a run gives back per job: its tokens, its [SEG] states, its row of the cache."""

    tokens: list[int]
    seg_states: list[torch.Tensor]
    past: list[tuple[torch.Tensor, torch.Tensor]]
    # the run's cache layers when the job ran alone: its next round writes on after ``past``
    # in their spare room instead of copying the history into a new cache
    layers: list | None = None


class Engine:
    """Runs jobs of one model: prefill each job's new tokens over its own cache, then decode all
    rows together, collecting the states that predict each ``[SEG]``.

    Args:
        model: a ``SegLLMModel`` in eval mode.
        tokenizer: its tokenizer (the vocabulary rows past it are never generated).
        token_ids: its special-token ids.
    """

    def __init__(self, model, tokenizer, token_ids: dict[str, int]):
        self.model = model
        self.tokenizer = tokenizer
        self.token_ids = token_ids
        self._lock = threading.Lock()  # one model, one run at a time (the demo has threads)
        self._suppressed = self._never_generated()

    def _never_generated(self) -> torch.Tensor:
        """Ids the decoder must never emit: input-only slots, BOS, padding, unused vocabulary rows."""
        vocab = self.model.llava.lm_head.out_features
        banned = torch.zeros(vocab, dtype=torch.bool)
        banned[min(len(self.tokenizer), vocab):] = True
        for name in ("image", "mask_crop", "mask_box", "pad", "bos", "frame"):
            if name in self.token_ids and self.token_ids[name] != self.token_ids["eos"]:
                banned[self.token_ids[name]] = True
        return banned

    @torch.inference_mode()
    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Prefill every job's new tokens over its own cache, then decode all rows together."""
        with self._lock:
            embeds = self._embed_jobs(jobs)
            batch = BatchedCache.start(jobs, embeds, self.model.language_model)
            hidden = batch.prefill(self.model.language_model)
            return self._decode(jobs, batch, hidden)

    def _embed_jobs(self, jobs: list[Job]) -> list[torch.Tensor]:
        """Every job's input embeddings; the vision tower runs once for all the jobs it can
        take together (``batched_inputs``), the others go through ``embed_inputs`` alone."""
        together = [job for job in jobs if takes_batched_path(job)]
        embedded = dict(zip(map(id, together), embed_jobs(self.model, together), strict=True))
        return [embedded[id(job)] if id(job) in embedded else self._embed_job(job)
                for job in jobs]

    def _embed_job(self, job: Job) -> torch.Tensor:
        device = self.model.device
        ids = torch.tensor([job.new_ids], device=device)
        crops = job.feed_crops.to(device) if len(job.feed_crops) else None
        boxes = job.feed_boxes.to(device) if len(job.feed_boxes) else None
        pixels = job.pixel_values.to(device)[None] if job.pixel_values is not None else None
        frames = (job.frame_pixel_values.to(device)
                  if job.frame_pixel_values is not None and pixels is not None else None)
        frame_tokens = (job.frame_tokens.to(device)
                        if job.frame_tokens is not None and pixels is not None else None)
        regions = job.feed_region_boxes
        region_kwargs = {}
        if regions is not None and len(regions):
            region_kwargs = {"region_boxes": [regions.to(device)],
                             "region_pixel_values": job.region_pixel_values.to(device)[None]}
        return self.model.embed_inputs(ids, pixel_values=pixels, ref_pixel_values=crops,
                                       ref_boxes=boxes, frame_pixel_values=frames,
                                       frame_tokens=frame_tokens,
                                       **region_kwargs)[0]

    def _decode(self, jobs: list[Job], batch: BatchedCache, hidden: torch.Tensor) -> list[Outcome]:
        seg, eos = self.token_ids["seg"], self.token_ids["eos"]
        lm_head = self.model.llava.lm_head
        tokens: list[list[int]] = [[] for _ in jobs]
        states: list[list[torch.Tensor]] = [[] for _ in jobs]
        done = [False] * len(jobs)
        for i, job in enumerate(jobs):
            if job.forced_answer is not None:  # teacher-forced: states come from the prefill
                tokens[i] = list(job.forced_answer)
                states[i] = batch.forced_seg_states(i, hidden, job, seg)
                done[i] = True
        last = hidden[:, -1]
        suppressed = self._suppressed.to(last.device)  # once a run, not once a token and row
        while not all(done):
            # never-generated ids masked for every row in one op (no copy of a row per token)
            logits = lm_head(last).float().masked_fill_(suppressed, float("-inf"))
            for i, job in enumerate(jobs):
                if done[i]:
                    continue
                token = choose_token(logits[i], tokens[i], job.generation, job.generator,
                                     eos_id=eos)
                tokens[i].append(token)
                if token == seg:
                    states[i].append(last[i])
                done[i] = token == eos or len(tokens[i]) >= job.max_new_tokens
            if all(done):
                break
            feed = [tokens[i][-1] if not done[i] else self.token_ids["pad"] for i in range(len(jobs))]
            embeds = self.model.language_model.embed_tokens(
                torch.tensor(feed, device=last.device)[:, None])
            last = batch.step(self.model.language_model, embeds, [not d for d in done])[:, -1]
        layers = batch.cache.layers if batch.reusable else None
        return [Outcome(tokens[i], states[i], batch.row_cache(i), layers)
                for i in range(len(jobs))]


class BatchedCache:
    """Several sessions' caches side by side, left-padded so every row ends at the same column.

    A row is ``[pad][cache_i][pad][new_i]`` during the prefill, then grows by one column per
    decode step (a pad for rows that have finished). ``valid`` marks real tokens; attention
    never looks at pads, and a pad query attends to itself only, so no softmax row is empty.
    With no padding at all (one session), no mask is passed and transformers' defaults apply.
    """

    def __init__(self, *, cache, valid: torch.Tensor, positions: torch.Tensor, new_len: int,
                 new_lens: list[int], attn_impl: str, dtype: torch.dtype):
        self.cache, self.valid, self.positions = cache, valid, positions
        self.new_len, self.new_lens = new_len, new_lens
        self.attn_impl, self.dtype = attn_impl, dtype
        self.embeds: torch.Tensor | None = None
        self.padded = not bool(valid.all())  # kept up to date, so a step needs no reduction

    @classmethod
    def start(cls, jobs: list[Job], embeds: list[torch.Tensor], language_model) -> BatchedCache:
        rows = len(jobs)
        past_len = max(j.past_len for j in jobs)
        new_len = max(e.shape[0] for e in embeds)
        device, dtype = embeds[0].device, embeds[0].dtype
        cache = reused_cache(jobs, past_len) or growing_cache(
            language_model.config.num_hidden_layers,
            pad_caches(jobs, past_len) if past_len else None)
        valid = torch.zeros(rows, past_len + new_len, dtype=torch.bool, device=device)
        padded = torch.zeros(rows, new_len, embeds[0].shape[-1], dtype=dtype, device=device)
        positions = torch.zeros(rows, new_len, dtype=torch.long, device=device)
        for i, (job, emb) in enumerate(zip(jobs, embeds, strict=True)):
            n = emb.shape[0]
            valid[i, past_len - job.past_len:past_len] = True
            valid[i, past_len + new_len - n:] = True
            padded[i, new_len - n:] = emb
            positions[i] = job.past_len  # pads: any position; real tokens follow their cache
            positions[i, new_len - n:] = torch.arange(job.past_len, job.past_len + n, device=device)
        batch = cls(cache=cache, valid=valid, positions=positions, new_len=new_len,
                    new_lens=[e.shape[0] for e in embeds],
                    attn_impl=language_model.config._attn_implementation, dtype=dtype)
        batch.embeds = padded
        return batch

    @property
    def reusable(self) -> bool:
        """Whether the cache is one row without pads, in growing layers: a session's next
        round can write on in it."""
        return (self.valid.shape[0] == 1 and not self.padded
                and all(isinstance(layer, GrowingLayer) for layer in self.cache.layers))

    def _mask(self, query_len: int):
        if not self.padded:
            return None
        length = self.valid.shape[1]
        query_cols = torch.arange(length - query_len, length, device=self.valid.device)
        cols = torch.arange(length, device=self.valid.device)
        causal = cols[None, :] <= query_cols[:, None]
        itself = cols[None, :] == query_cols[:, None]
        allowed = (self.valid[:, None, :] & causal[None]) | itself[None]
        allowed = allowed[:, None]  # [B, 1, q, K]
        if self.attn_impl == "sdpa" or self.attn_impl == "flex_attention":
            return allowed
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return additive.masked_fill(~allowed, torch.finfo(self.dtype).min)

    def _positions(self, positions: torch.Tensor):
        return positions if self.padded else None

    def prefill(self, language_model) -> torch.Tensor:
        """Run the new tokens of every row; returns the last hidden states [B, N, H]."""
        out = language_model(inputs_embeds=self.embeds, attention_mask=self._mask(self.new_len),
                             position_ids=self._positions(self.positions),
                             past_key_values=self.cache, use_cache=True)
        self.next_positions = self.positions[:, -1] + 1
        self.embeds = None
        return out.last_hidden_state

    def step(self, language_model, embeds: torch.Tensor, active: list[bool]) -> torch.Tensor:
        """One decode step: ``embeds`` [B, 1, H]; rows not ``active`` get a pad column."""
        act = torch.tensor(active, device=self.valid.device)
        self.valid = torch.cat([self.valid, act[:, None]], dim=1)
        self.padded = self.padded or not all(active)
        out = language_model(inputs_embeds=embeds, attention_mask=self._mask(1),
                             position_ids=self._positions(self.next_positions[:, None]),
                             past_key_values=self.cache, use_cache=True)
        self.next_positions = self.next_positions + act.long()
        return out.last_hidden_state

    def forced_seg_states(self, row: int, hidden: torch.Tensor, job: Job, seg: int
                          ) -> list[torch.Tensor]:
        """States that predict each [SEG] of a teacher-forced answer (the position before it)."""
        offset = self.new_len - self.new_lens[row]
        answer_start = len(job.new_ids) - (len(job.forced_answer) - 1)
        return [hidden[row, offset + p - 1] for p in range(answer_start, len(job.new_ids))
                if job.new_ids[p] == seg]

    def row_cache(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row ``row``'s keys and values with the pads taken out: [1, heads, L_row, dim]."""
        keep = self.valid[row]
        everything = not self.padded or bool(keep.all())
        out = []
        for layer in self.cache.layers:
            k, v = layer.keys[row:row + 1], layer.values[row:row + 1]
            out.append((k, v) if everything else (k[:, :, keep], v[:, :, keep]))
        return out


def reused_cache(jobs: list[Job], past_len: int) -> Cache | None:
    """A lone job's cache layers from its previous round (``Outcome.layers``), to write on in
    place; None where there are none to reuse. Columns past ``past_len`` (a round undone or
    refused after its prefill) are dropped first; the ones before it are the job's ``past``."""
    if len(jobs) != 1 or not past_len or jobs[0].past_layers is None:
        return None
    layers = jobs[0].past_layers
    if any(layer.length < past_len for layer in layers):
        return None
    for layer in layers:
        layer.crop(past_len - layer.length)
    return Cache(layers=layers)


def pad_caches(jobs: list[Job], past_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Left-pad each job's cache to ``past_len`` and stack the rows, layer by layer."""
    if len(jobs) == 1 and jobs[0].past_len == past_len:  # one row, nothing to pad: no copy here
        return list(jobs[0].past)
    template = next(j.past for j in jobs if j.past)
    layers = []
    for layer, (k0, v0) in enumerate(template):
        keys = k0.new_zeros((len(jobs), k0.shape[1], past_len, k0.shape[3]))
        values = v0.new_zeros((len(jobs), v0.shape[1], past_len, v0.shape[3]))
        for i, job in enumerate(jobs):
            if job.past_len:
                keys[i, :, past_len - job.past_len:] = job.past[layer][0][0]
                values[i, :, past_len - job.past_len:] = job.past[layer][1][0]
        layers.append((keys, values))
    return layers
