"""Chat sessions over one image: multi-round segmentation with the KV cache kept between rounds.

    pipeline = SegLLMPipeline.from_pretrained("ckpt/", dtype="bf16")      # or load_in_4bit=True
    session = pipeline.start("photo.jpg")
    first = session.ask("Segment the man in the red shirt.")
    second = session.ask("Segment the bag left of <ref:0>.")   # round 0's masks come back
    first.masks[0].shape == (H, W)                              # bool, original image size
    session.undo()                                              # drops round 1, cache included

What a round costs (DESIGN.md section 1): the session keeps the LLM's key/value cache and the
SAM image features of its image, so a new round feeds only the tokens it adds (the last answer's
``</s>``, then ``USER: {question} ASSISTANT:``) and then decodes. ``reuse_cache=False`` gives the
baseline that recomputes the whole history every round (what LISA's chat does), with identical
results; the benchmark and a test compare the two.

Masks come from the last-layer hidden state that *predicts* each generated ``[SEG]`` (the state
at the position before it), through the seg head and the mask decoder, at the original size.

``<ref:k>`` in a question brings back round k's masks through the mask encoder: the session's
own predicted masks, or, for ground-truth-reference evaluation, ``ask(text, ref_masks={k: [...]})``
(the protocol of ``segllm.eval.predictor``). A referenced round without any non-empty mask is
dropped from the question with a warning on the reply; a round that does not exist is refused.

Every refusal raises ``InputError`` (a ``ValueError``) before the session changes, so the
session stays usable after an error.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .conversation import ConversationError, Turn, encode_round
from .processing import (
    masked_crop,
    normalized_box,
    preprocess_clip,
    preprocess_sam,
    sam_resized_size,
    to_image_tensor,
)
from .tokens import REF_PATTERN

__all__ = [
    "ChatSession", "ForcedTokens", "GenerationConfig", "ImageError", "ImageLimits", "InputError",
    "Reply", "SegLLMPipeline", "load_image", "parse_dtype",
]


class InputError(ValueError):
    """A question, reference or image the session refuses; the session is left unchanged."""


class ImageError(InputError):
    """An image that cannot be used: not an image, too large, or of a shape the model can't take."""


# -- settings ------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ImageLimits:
    """What ``load_image`` accepts.

    ``max_pixels`` is checked on the header, before any pixel is decoded (PIL's decompression
    bomb guard is kept as a second line). Images larger than ``max_model_side`` are scaled down
    for the model only (the CLIP square and SAM inputs are small anyway); masks are still
    returned at the original size.
    """

    max_pixels: int = 40_000_000
    max_file_bytes: int = 50 * 1024 * 1024
    max_model_side: int = 4096


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


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``, ``"bfloat16"``, ``"fp16"``, ``"float16"``, ``"fp32"``, ``"float32"`` or a dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
             "float32": torch.float32, "float": torch.float32}
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[key]


# -- images ----------------------------------------------------------------------------------------

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def load_image(source, limits: ImageLimits = ImageLimits()):
    """Any image input -> an RGB ``PIL.Image`` as a viewer shows it (EXIF orientation applied).

    ``source``: a path, ``bytes``, a binary file object, a PIL image, an ``HxW`` / ``HxWx3`` /
    ``HxWx4`` array or a ``[3, H, W]`` uint8 tensor. Alpha is composited on white; 16-bit
    images are scaled to 8 bits (not clipped, as PIL's own conversion does); palettes expand.
    Raises ``ImageError`` with a message for anything that is not a usable image.
    """
    from PIL import ImageOps

    image = _open_image(source, limits)
    _check_pixels(image.size, limits)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageError(f"the image could not be decoded ({err})") from err
    return _to_rgb(image)


def _open_image(source, limits: ImageLimits):
    """Open lazily (header only) with PIL's decompression-bomb guard turned into errors."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().permute(1, 2, 0).numpy() if source.ndim == 3 else source.numpy()
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    name = "the upload"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: no such file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageError(f"{path.name}: the file is {size / 2**20:.1f} MiB; the limit is "
                             f"{limits.max_file_bytes / 2**20:.0f} MiB")
        name, source = path.name, path.read_bytes()
    elif hasattr(source, "read"):
        source = source.read(limits.max_file_bytes + 1)
    if not isinstance(source, (bytes, bytearray)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}")
    if len(source) > limits.max_file_bytes:
        raise ImageError(f"the file is larger than the {limits.max_file_bytes / 2**20:.0f} MiB limit")
    if not source:
        raise ImageError(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(source))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{name} is not an image PIL can read (PNG, JPEG, WebP, ...)") from err
    except OSError as err:
        raise ImageError(f"{name} could not be opened as an image ({err})") from err


def _image_from_array(array: np.ndarray):
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.dtype == np.uint16:
        array = _scale_16_to_8(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise ImageError(f"expected a uint8 (or uint16) array, got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def _scale_16_to_8(array: np.ndarray) -> np.ndarray:
    """Full 16-bit range to 8 bits (65535 -> 255), rounding."""
    return ((array.astype(np.float64) / 257.0).round().clip(0, 255)).astype(np.uint8)


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"the image is empty ({width}x{height} pixels)")
    if width * height > limits.max_pixels:
        raise ImageError(f"the image is {width}x{height} = {width * height / 1e6:.0f} M pixels; "
                         f"the limit is {limits.max_pixels / 1e6:.0f} M pixels")


def _to_rgb(image):
    """Convert any PIL mode to RGB the way a viewer would show it."""
    from PIL import Image

    if image.mode in _HIGH_BIT_MODES:
        array = np.asarray(image)
        if image.mode == "I" and array.max(initial=0) <= 255 and array.min(initial=0) >= 0:
            array = array.astype(np.uint8)  # 8-bit data stored in a 32-bit mode
        else:
            array = _scale_16_to_8(array.clip(0, 65535))
        image = Image.fromarray(array)
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA") if image.mode != "La" else image.convert("LA").convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"images in mode {image.mode!r} are not supported ({err})") from err


# -- replies -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One round's answer.

    ``masks``: one ``(H, W)`` bool array per generated ``[SEG]``, at the original image size;
    ``boxes``: their tight ``[x, y, w, h]`` boxes (zeros for an empty mask); ``scores``: the
    decoder's predicted IoU per mask; ``warnings``: references that were dropped, and such.
    """

    question: str
    text: str
    masks: list[np.ndarray]
    scores: list[float]
    boxes: list[list[float]]
    round: int
    token_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Round:
    """What the session keeps of a round: enough to undo it and to recompute it."""

    reply: Reply
    start: int  # length of the history token list before the round
    past_len_before: int  # cache length before the round
    ref_crops: torch.Tensor  # [R, 3, S, S] masked crops fed in this round's question
    ref_boxes: torch.Tensor  # [R, 4]


@dataclass
class _Job:
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
    max_new_tokens: int
    generation: GenerationConfig
    generator: torch.Generator | None
    warnings: list[str]


@dataclass
class _Outcome:
    tokens: list[int]
    seg_states: list[torch.Tensor]
    past: list[tuple[torch.Tensor, torch.Tensor]]


# -- the pipeline --------------------------------------------------------------------------------


class SegLLMPipeline:
    """A loaded model plus decoding settings; ``start(image)`` opens a chat session.

    Args:
        model: a ``SegLLMModel`` with its tokenizer attached.
        generation: default decoding settings (a session's ``ask`` may override them).
        limits: what images ``start`` accepts.
        reuse_cache: keep the KV cache and the SAM features between rounds (default). False
            recomputes the whole history, image features included, every round: the baseline.
    """

    def __init__(self, model, generation: GenerationConfig | None = None,
                 limits: ImageLimits | None = None, reuse_cache: bool = True):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer attached; load it with "
                             "SegLLMModel.from_pretrained or pass tokenizer= to from_config")
        self.model = _sam_in_float32(model.eval())
        self.tokenizer = model.tokenizer
        self.config = model.config
        self.token_ids = dict(model.config.token_ids)
        self.generation = generation or GenerationConfig()
        self.limits = limits or ImageLimits()
        self.reuse_cache = reuse_cache
        self.max_length = min(model.config.max_length, model.config.llm.max_position_embeddings)
        self._lock = threading.Lock()  # one model, one run at a time (the demo has threads)
        self._suppressed = self._never_generated()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str | torch.dtype | None = None,
                        load_in_4bit: bool = False, load_in_8bit: bool = False,
                        device: str | torch.device = "cpu", **kwargs) -> SegLLMPipeline:
        """Load what ``SegLLMModel.save_pretrained`` wrote.

        ``dtype``: bf16 / fp16 / fp32 for the whole model (the compute dtype of the quantized
        layers too). ``load_in_4bit`` (NF4) / ``load_in_8bit`` quantize the LLM's linear layers
        through bitsandbytes; the vision tower, projector, lm_head, seg head and mask decoder
        stay in ``dtype``. ``kwargs`` go to the constructor.
        """
        from .modeling.model import SegLLMModel

        if load_in_4bit and load_in_8bit:
            raise ValueError("choose one of load_in_4bit and load_in_8bit")
        torch_dtype = parse_dtype(dtype)
        model = SegLLMModel.from_pretrained(path, dtype=torch_dtype, device=device)
        if load_in_4bit or load_in_8bit:
            from .quantization import quantize_language_model

            quantize_language_model(model, bits=4 if load_in_4bit else 8,
                                    compute_dtype=torch_dtype or torch.float32)
        return cls(model, **kwargs)

    # -- sessions ------------------------------------------------------------------------------

    def start(self, image, reuse_cache: bool | None = None,
              generation: GenerationConfig | None = None) -> ChatSession:
        """Open a session on ``image`` (anything ``load_image`` takes); SAM features are computed here."""
        pil = load_image(image, self.limits)
        return ChatSession(self, pil, self.reuse_cache if reuse_cache is None else reuse_cache,
                           generation or self.generation)

    def ask_batch(self, requests: Sequence[tuple[ChatSession, str]],
                  generation: GenerationConfig | None = None,
                  ref_masks: Sequence[Mapping[int, Sequence[np.ndarray]] | None] | None = None
                  ) -> list[Reply]:
        """One round for several sessions in one batched run (prefill and decode together).

        Every request is validated first: if one is refused, ``InputError`` names it and no
        session changes. Results match asking each session alone (up to float rounding).
        """
        sessions = [s for s, _ in requests]
        if len({id(s) for s in sessions}) != len(sessions):
            raise InputError("a session may appear only once in a batch")
        for s in sessions:
            if s.pipeline is not self:
                raise InputError("every session of a batch must come from this pipeline")
        refs = list(ref_masks) if ref_masks is not None else [None] * len(requests)
        jobs = []
        for i, ((session, text), ref) in enumerate(zip(requests, refs, strict=True)):
            try:
                jobs.append(session._prepare(text, ref, None, generation or session.generation))
            except InputError as err:
                raise type(err)(f"request {i}: {err}") from err
        outcomes = self._run(jobs)
        return [job.session._commit(job, out) for job, out in zip(jobs, outcomes, strict=True)]

    def answer_token_ids(self, answer: str) -> list[int]:
        """An answer as the template encodes it: `` {answer}`` then ``</s>``."""
        ids = self.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
        return list(ids) + [self.token_ids["eos"]]

    # -- the engine ------------------------------------------------------------------------------

    def _never_generated(self) -> torch.Tensor:
        """Ids the decoder must never emit: input-only slots, BOS, padding, unused vocabulary rows."""
        vocab = self.model.llava.lm_head.out_features
        banned = torch.zeros(vocab, dtype=torch.bool)
        banned[min(len(self.tokenizer), vocab):] = True
        for name in ("image", "mask_crop", "mask_box", "pad", "bos"):
            if self.token_ids[name] != self.token_ids["eos"]:
                banned[self.token_ids[name]] = True
        return banned

    @torch.inference_mode()
    def _run(self, jobs: list[_Job]) -> list[_Outcome]:
        """Prefill every job's new tokens over its own cache, then decode all rows together."""
        with self._lock:
            embeds = [self._embed_job(job) for job in jobs]
            batch = _Batch.start(jobs, embeds, self.model.language_model)
            hidden = batch.prefill(self.model.language_model)
            return self._decode(jobs, batch, hidden)

    def _embed_job(self, job: _Job) -> torch.Tensor:
        device = self.model.device
        ids = torch.tensor([job.new_ids], device=device)
        crops = job.feed_crops.to(device) if len(job.feed_crops) else None
        boxes = job.feed_boxes.to(device) if len(job.feed_boxes) else None
        pixels = job.pixel_values.to(device)[None] if job.pixel_values is not None else None
        return self.model.embed_inputs(ids, pixel_values=pixels, ref_pixel_values=crops,
                                       ref_boxes=boxes)[0]

    def _decode(self, jobs: list[_Job], batch: _Batch, hidden: torch.Tensor) -> list[_Outcome]:
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
        while not all(done):
            logits = lm_head(last).float()
            for i, job in enumerate(jobs):
                if done[i]:
                    continue
                token = self._choose(logits[i], tokens[i], job.generation, job.generator)
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
        return [_Outcome(tokens[i], states[i], batch.row_cache(i)) for i in range(len(jobs))]

    def _choose(self, logits: torch.Tensor, generated: list[int], cfg: GenerationConfig,
                generator: torch.Generator | None) -> int:
        """The next token of one row: suppression, processors, then greedy or sampling."""
        scores = logits.clone()
        scores[self._suppressed.to(scores.device)] = float("-inf")
        if len(generated) < cfg.min_new_tokens:
            scores[self.token_ids["eos"]] = float("-inf")
        if cfg.logits_processors:
            ids = torch.tensor([generated], dtype=torch.long, device=scores.device).view(1, -1)
            row = scores[None]
            for processor in cfg.logits_processors:
                row = processor(ids, row)
            scores = row[0]
        if not cfg.do_sample:
            return int(torch.argmax(scores))
        return _sample(scores, cfg, generator)

    # -- masks ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _masks(self, states: list[torch.Tensor], features: torch.Tensor,
               input_size: tuple[int, int], original_size: tuple[int, int]
               ) -> tuple[list[np.ndarray], list[float]]:
        if not states:
            return [], []
        logits, scores, _ = self.model.decode_masks(torch.stack(states), features, input_size,
                                                    original_size)
        binary = (logits.float() > self.config.sam.mask_threshold).cpu().numpy()
        return [m for m in binary], [float(s) for s in scores.float().cpu()]


def _sample(scores: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    """Temperature, top-k and top-p (nucleus) sampling of one row."""
    scores = scores / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(scores, min(cfg.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= cfg.top_p  # keeps >= 1 token
        scores = scores.clone()
        scores[order[drop]] = float("-inf")
    probs = torch.softmax(scores, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


class _Batch:
    """Several sessions' caches side by side, left-padded so every row ends at the same column.

    A row is ``[pad][cache_i][pad][new_i]`` during the prefill, then grows by one column per
    decode step (a pad for rows that have finished). ``valid`` marks real tokens; attention
    never looks at pads, and a pad query attends to itself only, so no softmax row is empty.
    With no padding at all (one session), no mask is passed and transformers' defaults apply.
    """

    def __init__(self, cache, valid: torch.Tensor, positions: torch.Tensor, new_len: int,
                 new_lens: list[int], attn_impl: str, dtype: torch.dtype):
        self.cache, self.valid, self.positions = cache, valid, positions
        self.new_len, self.new_lens = new_len, new_lens
        self.attn_impl, self.dtype = attn_impl, dtype
        self.embeds: torch.Tensor | None = None

    @classmethod
    def start(cls, jobs: list[_Job], embeds: list[torch.Tensor], language_model) -> _Batch:
        from transformers import DynamicCache

        rows = len(jobs)
        past_len = max(j.past_len for j in jobs)
        new_len = max(e.shape[0] for e in embeds)
        device, dtype = embeds[0].device, embeds[0].dtype
        cache = DynamicCache(ddp_cache_data=_pad_caches(jobs, past_len)) if past_len else DynamicCache()
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
        batch = cls(cache, valid, positions, new_len, [e.shape[0] for e in embeds],
                    language_model.config._attn_implementation, dtype)
        batch.embeds = padded
        return batch

    def _mask(self, query_len: int):
        if bool(self.valid.all()):
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
        return None if bool(self.valid.all()) else positions

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
        out = language_model(inputs_embeds=embeds, attention_mask=self._mask(1),
                             position_ids=self._positions(self.next_positions[:, None]),
                             past_key_values=self.cache, use_cache=True)
        self.next_positions = self.next_positions + act.long()
        return out.last_hidden_state

    def forced_seg_states(self, row: int, hidden: torch.Tensor, job: _Job, seg: int
                          ) -> list[torch.Tensor]:
        """States that predict each [SEG] of a teacher-forced answer (the position before it)."""
        offset = self.new_len - self.new_lens[row]
        answer_start = len(job.new_ids) - (len(job.forced_answer) - 1)
        return [hidden[row, offset + p - 1] for p in range(answer_start, len(job.new_ids))
                if job.new_ids[p] == seg]

    def row_cache(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Row ``row``'s keys and values with the pads taken out: [1, heads, L_row, dim]."""
        keep = self.valid[row]
        everything = bool(keep.all())
        out = []
        for layer in self.cache.layers:
            k, v = layer.keys[row:row + 1], layer.values[row:row + 1]
            out.append((k, v) if everything else (k[:, :, keep], v[:, :, keep]))
        return out


def _pad_caches(jobs: list[_Job], past_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Left-pad each job's cache to ``past_len`` and stack the rows, layer by layer."""
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


# -- sessions ------------------------------------------------------------------------------------


class ChatSession:
    """A conversation about one image. Create with ``SegLLMPipeline.start``."""

    def __init__(self, pipeline: SegLLMPipeline, image, reuse_cache: bool,
                 generation: GenerationConfig):
        self.pipeline = pipeline
        self.image = image  # RGB PIL image, EXIF orientation applied
        self.size = (image.height, image.width)  # (H, W) of every mask
        self.reuse_cache = reuse_cache
        self.generation = generation
        cfg = pipeline.config
        self._model_pixels = _model_pixels(image, pipeline.limits.max_model_side, cfg.sam.image_size)
        self._clip_pixels = preprocess_clip(self._model_pixels, cfg.vision.image_size)
        self._sam_pixels, self._sam_input_size = preprocess_sam(self._model_pixels,
                                                                cfg.sam.image_size)
        self._sam_features = self._encode_sam() if reuse_cache else None
        self._ids: list[int] = []  # every token of the conversation so far
        self._past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._past_len = 0
        self._rounds: list[_Round] = []

    # -- public ------------------------------------------------------------------------------

    @property
    def history(self) -> list[Reply]:
        """The replies so far, round 0 first."""
        return [r.reply for r in self._rounds]

    @property
    def num_rounds(self) -> int:
        return len(self._rounds)

    @property
    def cache_length(self) -> int:
        """Tokens in the KV cache (0 when the session recomputes every round)."""
        return self._past_len

    @property
    def token_ids(self) -> list[int]:
        """The whole conversation as token ids (the last answer's ``</s>`` included)."""
        return list(self._ids)

    def ask(self, text: str, *, ref_masks: Mapping[int, Sequence[np.ndarray]] | None = None,
            answer: str | None = None, generation: GenerationConfig | None = None) -> Reply:
        """Ask one question; returns the reply and stores it as the next round.

        ``ref_masks``: ground-truth masks to use, for this question only, in place of the
        session's own masks of each referenced round (see ``segllm.eval.predictor``).
        ``answer``: teacher-force this answer instead of generating (masks still come from the
        states that predict its ``[SEG]`` tokens).
        """
        job = self._prepare(text, ref_masks, answer, generation or self.generation)
        outcome = self.pipeline._run([job])[0]
        return self._commit(job, outcome)

    def undo(self) -> Reply:
        """Forget the last round (its tokens, cache entries and masks); returns its reply."""
        if not self._rounds:
            raise InputError("there is no round to undo")
        last = self._rounds.pop()
        del self._ids[last.start:]
        self._truncate_cache(last.past_len_before)
        return last.reply

    # -- preparing a round (validation only: nothing changes until _commit) ----------------------

    def _prepare(self, text: str, ref_masks, answer: str | None,
                 generation: GenerationConfig) -> _Job:
        p = self.pipeline
        r = len(self._rounds)
        question = _check_question(text)
        notes: list[str] = []
        referable = self._referable_masks(question, ref_masks, notes)
        question = _drop_empty_refs(question, referable)
        counts = [len(referable.get(k, [])) for k in range(r + 1)]
        try:
            prefix, _, slots, _ = encode_round(
                Turn(question), r, counts, p.tokenizer, p.token_ids,
                p.config.vision.num_image_tokens, sample="session", generation=True)
        except ConversationError as err:
            raise InputError(str(err).replace("sample 'session' ", "")) from err
        if r == 0:
            prefix = [p.token_ids["bos"]] + prefix
        crops, boxes = self._reference_inputs(slots, referable)
        forced = p.answer_token_ids(answer) if answer is not None else None
        past_len = self._past_len if self.reuse_cache else 0
        pending = self._ids[past_len:]
        new_ids = pending + prefix + (forced[:-1] if forced else [])
        room = p.max_length - len(self._ids) - len(prefix)
        needed = len(forced) if forced else 1
        if room < needed:
            raise InputError(f"the conversation is full ({len(self._ids)} tokens; the model "
                             f"takes {p.max_length}): undo rounds or start a new session")
        feed_crops, feed_boxes = crops, boxes
        if past_len == 0 and self._rounds:  # recomputing: every earlier round's slots too
            feed_crops = torch.cat([rd.ref_crops for rd in self._rounds] + [crops])
            feed_boxes = torch.cat([rd.ref_boxes for rd in self._rounds] + [boxes])
        return _Job(
            session=self, question=text, round=r, prefix_ids=prefix, new_ids=new_ids,
            pixel_values=self._clip_pixels if past_len == 0 else None,
            ref_crops=crops, ref_boxes=boxes, feed_crops=feed_crops, feed_boxes=feed_boxes,
            past=self._past if past_len else None, past_len=past_len, forced_answer=forced,
            max_new_tokens=min(generation.max_new_tokens, room), warnings=notes,
            generation=generation, generator=_generator(generation, r),
        )

    def _referable_masks(self, question: str, ref_masks, notes: list[str]
                         ) -> dict[int, list[np.ndarray]]:
        """Round -> the non-empty masks a ``<ref:k>`` of this question brings back."""
        r = len(self._rounds)
        wanted = sorted({int(k) for k in REF_PATTERN.findall(question)})
        for k in wanted:
            if k >= r:
                have = f"rounds 0..{r - 1}" if r else "no rounds yet"
                raise InputError(f"<ref:{k}> refers to round {k}, which does not exist "
                                 f"(this session has {have})")
        given = self._check_ref_masks(ref_masks, r)
        referable = {}
        for k in wanted:
            masks = given[k] if k in given else self._rounds[k].reply.masks
            kept = [m for m in masks if m.any()]
            if len(kept) < len(masks):
                notes.append(f"<ref:{k}>: {len(masks) - len(kept)} empty mask(s) of round {k} "
                             "left out")
            if not kept:
                notes.append(f"<ref:{k}>: round {k} has no mask to refer to; the reference "
                             "was dropped from the question")
            referable[k] = kept
        return referable

    def _check_ref_masks(self, ref_masks, r: int) -> dict[int, list[np.ndarray]]:
        if ref_masks is None:
            return {}
        checked = {}
        for k, masks in ref_masks.items():
            k = int(k)
            if not 0 <= k < r:
                raise InputError(f"ref_masks gives masks for round {k}, which does not exist "
                                 f"(this session has {r} round(s))")
            arrays = [np.asarray(m).astype(bool) for m in masks]
            for j, m in enumerate(arrays):
                if m.shape != self.size:
                    raise InputError(f"ref_masks[{k}][{j}] has shape {m.shape}; the image is "
                                     f"{self.size[0]}x{self.size[1]}")
            checked[k] = arrays
        return checked

    def _reference_inputs(self, slots, referable) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked crops and boxes for this question's mask-encoder slots, in slot order."""
        size = self.pipeline.config.vision.image_size
        crops, boxes = [], []
        for _, k, j in slots:
            mask = _mask_for_model(referable[k][j], self._model_pixels.shape[1:])
            crops.append(masked_crop(self._model_pixels, mask, size))
            boxes.append(normalized_box(mask))
        if not crops:
            return torch.zeros((0, 3, size, size)), torch.zeros((0, 4))
        return torch.stack(crops), torch.stack(boxes)

    # -- committing a round --------------------------------------------------------------------

    def _commit(self, job: _Job, outcome: _Outcome) -> Reply:
        p = self.pipeline
        features = self._sam_features if self._sam_features is not None else self._encode_sam()
        masks, scores = p._masks(outcome.seg_states, features, self._sam_input_size, self.size)
        eos = p.token_ids["eos"]
        answer_ids = outcome.tokens if outcome.tokens[-1:] == [eos] else outcome.tokens + [eos]
        shown = [t for t in outcome.tokens if t != eos]
        reply = Reply(
            question=job.question, text=p.tokenizer.decode(shown).strip(), masks=masks,
            scores=scores, boxes=[_xywh(m) for m in masks], round=job.round,
            token_ids=list(outcome.tokens), warnings=job.warnings)
        self._rounds.append(_Round(reply=reply, start=len(self._ids),
                                   past_len_before=self._past_len, ref_crops=job.ref_crops,
                                   ref_boxes=job.ref_boxes))
        self._ids = self._ids + job.prefix_ids + answer_ids
        if self.reuse_cache:
            self._past = outcome.past
            self._past_len = int(outcome.past[0][0].shape[2]) if outcome.past else 0
        return reply

    def _truncate_cache(self, length: int) -> None:
        if self._past is None or length >= self._past_len:
            return
        self._past = [(k[:, :, :length], v[:, :, :length]) for k, v in self._past] if length else None
        self._past_len = length

    def _encode_sam(self) -> torch.Tensor:
        with torch.inference_mode():
            model = self.pipeline.model
            return model.encode_images_for_decoder(self._sam_pixels[None].to(model.device))


# -- small helpers ---------------------------------------------------------------------------------


def _sam_in_float32(model):
    """Keep the mask decoder (SAM) in float32 when the rest is bf16 / fp16.

    SAM runs in half precision too (the wrapper keeps segment_anything's positional matrix in
    float32 for that), but mask logits near the 0 threshold are the part most sensitive to
    rounding, and SAM is small next to the LLM (ViT-H: 641 M of 7.7 B parameters). The decoder
    casts prompts to the image features' dtype.
    """
    sam = model.decoder.sam
    if next(sam.parameters()).dtype != torch.float32:
        sam.float()
    return model

_MAX_QUESTION_CHARS = 4000


def _check_question(text) -> str:
    if not isinstance(text, str):
        raise InputError(f"the question must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError("the question is empty")
    if len(text) > _MAX_QUESTION_CHARS:
        raise InputError(f"the question is {len(text)} characters long; the limit is "
                         f"{_MAX_QUESTION_CHARS}")
    return text.strip()


def _drop_empty_refs(question: str, referable: dict[int, list[np.ndarray]]) -> str:
    """Remove ``<ref:k>`` for rounds with nothing to bring back (the template needs >= 1 mask)."""
    out = REF_PATTERN.sub(lambda m: m.group(0) if referable.get(int(m.group(1))) else "", question)
    out = re.sub(r"\s{2,}", " ", out).strip()
    if not out:
        raise InputError("the question has nothing left once references to rounds without "
                         "masks are dropped")
    return out


def _model_pixels(image, max_side: int, sam_size: int) -> torch.Tensor:
    """The [3, H, W] uint8 tensor the model sees: the image, scaled down past ``max_side``."""
    from PIL import Image

    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    h, w = sam_resized_size(image.height, image.width, sam_size)
    if min(h, w) < 1:
        ratio = max(width, height) / min(width, height)
        raise ImageError(f"the image is {width}x{height} pixels: an aspect ratio of "
                         f"{ratio:.0f}:1 is too extreme for the mask decoder (its {sam_size}-pixel "
                         f"input would be less than one pixel across)")
    # a writable copy: torch warns on the read-only buffer np.asarray gives for a PIL image
    return to_image_tensor(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))


def _mask_for_model(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A mask at the original size -> the model image's size (any covered pixel counts)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask))
    if tuple(tensor.shape) == tuple(size):
        return tensor
    area = F.interpolate(tensor[None, None].float(), size=tuple(size), mode="area")[0, 0]
    return area > 0


def _xywh(mask: np.ndarray) -> list[float]:
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1),
            float(rows[-1] - rows[0] + 1)]


def _generator(cfg: GenerationConfig, round_index: int) -> torch.Generator | None:
    if not cfg.do_sample:
        return None
    seed = cfg.seed + round_index if cfg.seed is not None else int(torch.randint(0, 2**62, ()))
    return torch.Generator().manual_seed(seed)

