"""A chat session: one image, several rounds, the KV cache and the decoder's image features
kept between rounds (see ``segllm.pipeline`` for the whole picture and the rules)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..conversation import REGION_ROUND, ConversationError, Turn, encode_round, region_indices
from ..images import ImageError, InputError
from ..masks import box_to_mask, mask_to_bbox
from ..processing import masked_crop, normalized_box, preprocess_clip, to_image_tensor
from ..tokens import REF_PATTERN, REGION_PATTERN
from .engine import Job, Outcome
from .generation import GenerationConfig, round_generator

if TYPE_CHECKING:
    from .pipeline import SegLLMPipeline


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
class SessionRound:
    """What the session keeps of a round: enough to undo it and to recompute it."""

    reply: Reply
    start: int  # length of the history token list before the round
    past_len_before: int  # cache length before the round
    ref_crops: torch.Tensor  # [R, 3, S, S] masked crops fed in this round's question
    ref_boxes: torch.Tensor  # [R, 4]
    # [K, 4] the round's region-encoder boxes (GLaMM's <bbox> slots), x1y1x2y2 / image size
    region_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4)))


class ChatSession:
    """A conversation about one image (a video's target frame, with its reference frames
    when given). Create with ``SegLLMPipeline.start``."""

    def __init__(self, pipeline: SegLLMPipeline, image, reuse_cache: bool,
                 generation: GenerationConfig, reference_frames: Sequence | None = None,
                 encode_decoder: bool = True,
                 reference_frame_tokens: torch.Tensor | None = None):
        self.pipeline = pipeline
        self.image = image  # RGB PIL image, in the orientation ``start`` was given
        self.size = (image.height, image.width)  # (H, W) of every mask
        self.reuse_cache = reuse_cache
        self.generation = generation
        cfg = pipeline.config
        decoder = pipeline.model.decoder
        self._model_pixels = _model_pixels(
            image, pipeline.limits.max_model_side,
            lambda h, w: decoder.resized_size(h, w, cfg.decoder_config))
        self._clip_pixels = preprocess_clip(self._model_pixels, cfg.vision.image_size,
                                            aspect=cfg.vision.aspect)
        self._decoder_pixels, self._decoder_input_size = decoder.preprocess(self._model_pixels,
                                                                            cfg.decoder_config)
        self._frame_pixels = _reference_frame_pixels(pipeline, reference_frames or [])
        # or the frames already encoded ([F, tokens_per_frame, H], ``reference_frame_tokens``)
        self._frame_tokens = reference_frame_tokens
        self._num_frames = (len(reference_frame_tokens) if reference_frame_tokens is not None
                            else len(self._frame_pixels))
        # False: the caller encodes several sessions' images in one call (``start_batch``)
        self._decoder_features = (self._encode_for_decoder() if reuse_cache and encode_decoder
                                  else None)
        self._ids: list[int] = []  # every token of the conversation so far
        self._past: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._past_layers: list | None = None  # the cache layers ``_past`` is the start of
        self._past_len = 0
        self._rounds: list[SessionRound] = []

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
            regions: Sequence[np.ndarray] | None = None, answer: str | None = None,
            generation: GenerationConfig | None = None) -> Reply:
        """Ask one question; returns the reply and stores it as the next round.

        ``ref_masks``: ground-truth masks to use, for this question only, in place of the
        session's own masks of each referenced round (see ``segllm.eval.predictor``).
        ``regions``: what ``<region>`` / ``<region:i>`` in the question stand for: each an
        ``(H, W)`` mask at the image size or a box ``[x, y, w, h]`` in pixels.
        ``answer``: teacher-force this answer instead of generating (masks still come from the
        states that predict its ``[SEG]`` tokens).
        """
        job = self.prepare(text, ref_masks=ref_masks, answer=answer,
                           generation=generation or self.generation,
                            regions=regions)
        outcome = self.pipeline.run_jobs([job])[0]
        return self.commit(job, outcome)

    def decode_states(self, states: Sequence[torch.Tensor]) -> tuple[list[np.ndarray], list[float]]:
        """Masks and scores of ``[SEG]`` states (from any session of this pipeline) on this
        session's image; the session does not change. Video propagation re-prompts the
        decoder on every frame this way (``segllm.video.propagation``)."""
        features = self.decoder_features()
        return self.pipeline.decode_masks(list(states), features=features,
                                          input_size=self._decoder_input_size,
                                          original_size=self.size)

    def undo(self) -> Reply:
        """Forget the last round (its tokens, cache entries and masks); returns its reply."""
        if not self._rounds:
            raise InputError("there is no round to undo")
        last = self._rounds.pop()
        del self._ids[last.start:]
        self._truncate_cache(last.past_len_before)
        return last.reply

    # -- preparing a round (validation only: nothing changes until commit) -----------------------

    def prepare(self, text: str, *, ref_masks, answer: str | None,
                generation: GenerationConfig, regions=None) -> Job:
        """Check a question and build the job that runs it; the session is not changed (so a
        refused question leaves it usable). ``ask`` and the pipeline's ``ask_batch`` call it."""
        p = self.pipeline
        r = len(self._rounds)
        question = _check_question(text)
        notes: list[str] = []
        referable = self._referable_masks(question, ref_masks, notes)
        areas = self._region_masks(question, regions, notes)
        question = _drop_empty_refs(question, referable)
        counts = [len(referable.get(k, [])) for k in range(r + 1)]
        frame_tokens = self._num_frames * p.config.video.tokens_per_frame if r == 0 else 0
        try:
            encoded = encode_round(
                Turn(question), r, counts, p.tokenizer, p.token_ids,
                p.config.vision.num_image_tokens, sample="session", generation=True,
                num_regions=len(areas), num_frame_tokens=frame_tokens,
                template=p.config.prompt_template)
        except ConversationError as err:
            raise InputError(str(err).replace("sample 'session' ", "")) from err
        prefix = ([p.token_ids["bos"]] if r == 0 else []) + encoded.input_ids
        crops, boxes = self._reference_inputs(encoded.ref_slots, referable, areas)
        used_areas = [areas[i] for i in sorted(set(region_indices(question)))]
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
        region_boxes = self._region_boxes(question, areas)
        feed_regions = region_boxes
        if past_len == 0 and self._rounds:  # recomputing: every earlier round's slots too
            feed_crops = torch.cat([rd.ref_crops for rd in self._rounds] + [crops])
            feed_boxes = torch.cat([rd.ref_boxes for rd in self._rounds] + [boxes])
            feed_regions = torch.cat([rd.region_boxes for rd in self._rounds] + [region_boxes])
        return Job(
            session=self, question=text, round=r, prefix_ids=prefix, new_ids=new_ids,
            pixel_values=self._clip_pixels if past_len == 0 else None,
            ref_crops=crops, ref_boxes=boxes, feed_crops=feed_crops, feed_boxes=feed_boxes,
            past=self._past if past_len else None, past_len=past_len, forced_answer=forced,
            past_layers=self._past_layers if past_len else None,
            decoder_ref_mask=_union([*referable.values(), used_areas]),
            max_new_tokens=min(generation.max_new_tokens, room), warnings=notes,
            generation=generation, generator=round_generator(generation, r),
            frame_pixel_values=self._frame_pixels if past_len == 0 and len(self._frame_pixels)
            else None,
            frame_tokens=self._frame_tokens if past_len == 0 and self._num_frames else None,
            region_boxes=region_boxes, feed_region_boxes=feed_regions,
            region_pixel_values=self._clip_pixels if len(feed_regions) else None,
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

    def _region_masks(self, question: str, regions, notes: list[str]) -> list[np.ndarray]:
        """Every given region as a bool mask at the image size; each region tag of the
        question must name one. An unused region is noted, not refused."""
        areas = [self._region_mask(i, region) for i, region in enumerate(regions or [])]
        wanted = region_indices(question)
        for tag, i in zip(REGION_PATTERN.finditer(question), wanted, strict=True):
            if i >= len(areas):
                given = f"only {len(areas)} region(s) were given" if areas else "no region was given"
                raise InputError(f"{tag.group(0)} stands for region {i}, but {given}: draw one "
                                 "or pass regions=[mask or box]")
        for i in sorted(set(range(len(areas))) - set(wanted)):
            notes.append(f"region {i} was given but the question has no <region:{i}>; "
                         "it was not used")
        return areas

    def _region_mask(self, i: int, region) -> np.ndarray:
        """Region ``i`` as a mask: an (H, W) mask as it is, a box [x, y, w, h] filled."""
        array = np.asarray(region)
        if array.dtype != bool and not np.issubdtype(array.dtype, np.number):
            raise InputError(f"region {i} must be a mask or a box of numbers, got {array.dtype}")
        if array.shape == (4,):
            if not np.isfinite(array).all():
                raise InputError(f"region {i}: the box {array.tolist()} is not finite")
            array = box_to_mask(array, *self.size)
        elif array.shape != self.size:
            raise InputError(f"region {i} has shape {array.shape}; it must be a mask of the "
                             f"image's size {self.size} or a box [x, y, w, h]")
        mask = array.astype(bool)
        if not mask.any():
            raise InputError(f"region {i} is empty: it covers no pixel of the "
                             f"{self.size[1]}x{self.size[0]} image")
        return mask

    def _region_boxes(self, question: str, areas: list[np.ndarray]) -> torch.Tensor:
        """[K, 4] for a region-encoder model (GLaMM): each region tag's region as the box
        around it, x1 y1 x2 y2 divided by the image's width and height (GLaMM's app.py); in
        tag order, which is the order of the ``<bbox>`` slots. Empty for other models."""
        if "region" not in self.pipeline.token_ids:
            return torch.zeros((0, 4))
        h, w = self.size
        boxes = []
        for i in region_indices(question):
            ys, xs = np.nonzero(areas[i])
            boxes.append([xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h])
        return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)

    def _reference_inputs(self, slots, referable, regions=()) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked crops and boxes for this question's mask-encoder slots, in slot order."""
        size = self.pipeline.config.vision.image_size
        crops, boxes = [], []
        for _, k, j in slots:
            source = regions[j] if k == REGION_ROUND else referable[k][j]
            mask = _mask_for_model(source, self._model_pixels.shape[1:])
            crops.append(masked_crop(self._model_pixels, mask, size))
            boxes.append(normalized_box(mask))
        if not crops:
            return torch.zeros((0, 3, size, size)), torch.zeros((0, 4))
        return torch.stack(crops), torch.stack(boxes)

    # -- committing a round --------------------------------------------------------------------

    def commit(self, job: Job, outcome: Outcome, features: torch.Tensor | None = None
               ) -> Reply:
        """Decode the masks of a finished job and store the round (tokens, cache, masks).
        ``features``: the decoder's features of the image when already computed
        (``ask_batch`` encodes the images of a batch together)."""
        p = self.pipeline
        features = self.decoder_features() if features is None else features
        masks, scores = p.decode_masks(outcome.seg_states, features=features,
                                       input_size=self._decoder_input_size,
                                       original_size=self.size, ref_mask=job.decoder_ref_mask)
        eos = p.token_ids["eos"]
        answer_ids = outcome.tokens if outcome.tokens[-1:] == [eos] else outcome.tokens + [eos]
        shown = [t for t in outcome.tokens if t != eos]
        reply = Reply(
            question=job.question, text=p.tokenizer.decode(shown).strip(), masks=masks,
            scores=scores, boxes=[mask_to_bbox(m) for m in masks], round=job.round,
            token_ids=list(outcome.tokens), warnings=job.warnings)
        self._rounds.append(SessionRound(reply=reply, start=len(self._ids),
                                   past_len_before=self._past_len, ref_crops=job.ref_crops,
                                   ref_boxes=job.ref_boxes, region_boxes=job.region_boxes))
        self._ids = self._ids + job.prefix_ids + answer_ids
        if self.reuse_cache:
            self._past, self._past_layers = outcome.past, outcome.layers
            self._past_len = int(outcome.past[0][0].shape[2]) if outcome.past else 0
        return reply

    def _truncate_cache(self, length: int) -> None:
        if self._past is None or length >= self._past_len:
            return
        self._past = [(k[:, :, :length], v[:, :, :length]) for k, v in self._past] if length else None
        self._past_len = length

    def decoder_features(self) -> torch.Tensor:
        """The mask decoder's features of the image: the kept ones, else computed now (and
        kept when the session keeps its cache; recomputing sessions encode every round)."""
        if self._decoder_features is not None:
            return self._decoder_features
        features = self._encode_for_decoder()
        self.keep_decoder_features(features)
        return features

    def keep_decoder_features(self, features: torch.Tensor) -> None:
        """Keep ``features`` [1, ...] (computed for this session's image, alone or in a batch)
        for later rounds, when the session keeps its cache."""
        if self.reuse_cache:
            self._decoder_features = features

    @property
    def decoder_input(self) -> torch.Tensor | None:
        """[3, S', S'] the decoder's input image when its features are not kept yet."""
        return self._decoder_pixels if self._decoder_features is None else None

    def _encode_for_decoder(self) -> torch.Tensor:
        with torch.inference_mode():
            model = self.pipeline.model
            return model.encode_images_for_decoder(self._decoder_pixels[None].to(model.device))


# -- small helpers ---------------------------------------------------------------------------------


def _reference_frame_pixels(pipeline: SegLLMPipeline, frames: Sequence) -> torch.Tensor:
    """CLIP input of a video's reference frames (PIL images), [F, 3, S, S]; refused for a model
    that takes none (``config.video.tokens_per_frame`` is 0)."""
    size = pipeline.config.vision.image_size
    if not frames:
        return torch.zeros((0, 3, size, size))
    if pipeline.config.video.tokens_per_frame == 0:
        raise InputError("reference frames were given but this model takes none "
                         "(config.video.tokens_per_frame is 0)")
    aspect = pipeline.config.vision.aspect  # as the target frame's
    return torch.stack([preprocess_clip(to_image_tensor(frame), size, aspect=aspect)
                        for frame in frames])


def _union(mask_lists) -> np.ndarray | None:
    """The union of every mask in ``mask_lists`` (None when there is none)."""
    masks = [m for masks in mask_lists for m in masks]
    if not masks:
        return None
    return np.logical_or.reduce(np.stack([np.asarray(m, dtype=bool) for m in masks]))


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


def _model_pixels(image, max_side: int,
                  resized_size: Callable[[int, int], tuple[int, int]]) -> torch.Tensor:
    """The [3, H, W] uint8 tensor the model sees: the image, scaled down past ``max_side``.
    ``resized_size(h, w)``: the (h, w) the image takes inside the mask decoder's input."""
    from PIL import Image

    width, height = image.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    h, w = resized_size(image.height, image.width)
    if min(h, w) < 1:
        ratio = max(width, height) / min(width, height)
        raise ImageError(f"the image is {width}x{height} pixels: an aspect ratio of "
                         f"{ratio:.0f}:1 is too extreme for the mask decoder (its input "
                         "would hold less than one pixel across)")
    # a writable copy: torch warns on the read-only buffer np.asarray gives for a PIL image
    return to_image_tensor(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))


def _mask_for_model(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """A mask at the original size -> the model image's size (any covered pixel counts)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask))
    if tuple(tensor.shape) == tuple(size):
        return tensor
    area = F.interpolate(tensor[None, None].float(), size=tuple(size), mode="area")[0, 0]
    return area > 0
