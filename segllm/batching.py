"""From MRSeg records (docs/architecture.md, "Record formats") and images to a model batch.

Every round of a conversation goes into one sequence; earlier rounds' masks that a question
references are fed back teacher-forced (the ground-truth masks), as SegLLM trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from .config import SegLLMConfig
from .conversation import ConversationError, EncodedConversation, Turn, encode_conversation
from .masks import decode_checked
from .modeling.decoders import decoder_class
from .processing import masked_crop, normalized_box, preprocess_clip, to_image_tensor
from .tokens import REF_PATTERN


@dataclass
class SegBatch:
    """A padded batch. B samples, L tokens, R reference slots in the whole batch.

    Per-sample lists keep masks at each image's own original size.
    """

    sample_ids: list[str]
    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    labels: torch.Tensor  # [B, L] long, -100 outside the answers
    round_ids: torch.Tensor  # [B, L] long, -1 on padding
    pixel_values: torch.Tensor  # [B, 3, S, S] CLIP input
    decoder_pixel_values: torch.Tensor  # [B, 3, S', S'] the mask decoder's input
    decoder_input_sizes: list[tuple[int, int]]  # resized (h, w) inside the decoder's square
    original_sizes: list[tuple[int, int]]  # (H, W)
    target_masks: list[torch.Tensor]  # per sample [n_i, H, W] float, in [SEG] order
    target_rounds: list[torch.Tensor]  # per sample [n_i] long: round of each target
    # per sample [n_i] float: each target's weight in the mask losses (0 for a mask filled
    # from a box, "box_derived": the model must not learn rectangles)
    target_weights: list[torch.Tensor]
    # per sample [n_i, H, W] float: for each [SEG], the union of the masks its question
    # references (mask-aware decoding; all zero for a question without references)
    seg_ref_masks: list[torch.Tensor]
    ref_pixel_values: torch.Tensor  # [R, 3, S, S] masked crops, in slot order
    ref_boxes: torch.Tensor  # [R, 4] normalised (x0, y0, x1, y1)
    ref_rounds: list[torch.Tensor]  # per sample [r_i] long: round of the question of each slot
    num_rounds: list[int]  # rounds kept per sample
    dropped_rounds: list[int]  # rounds dropped by the length limit per sample
    # a video's reference frames (VISA): [F, 3, S, S] CLIP input of the whole batch, sample
    # by sample (None when no sample has any), and how many are each sample's
    frame_pixel_values: torch.Tensor | None = None
    frame_counts: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SegBatch:
        """Move tensors to ``device``; floating image tensors also to ``dtype`` when given."""
        def move(x):
            if isinstance(x, torch.Tensor):
                cast = dtype if (dtype is not None and x.is_floating_point()) else None
                return x.to(device=device, dtype=cast)
            if isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
                return [move(t) for t in x]
            return x
        return SegBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def model_inputs(self) -> dict:
        """The keyword arguments of ``SegLLMModel.forward`` (targets and labels stay here)."""
        return {name: getattr(self, name) for name in MODEL_INPUTS}


MODEL_INPUTS = ("input_ids", "attention_mask", "decoder_pixel_values", "decoder_input_sizes",
                "original_sizes", "pixel_values", "ref_pixel_values", "ref_boxes", "ref_rounds",
                "round_ids", "seg_ref_masks", "sample_ids", "frame_pixel_values", "frame_counts")


def record_turns(record: dict) -> list[Turn]:
    """The rounds of an MRSeg record as template turns, checking ``refs`` against the text."""
    sample = record.get("id", "?")
    turns = []
    for r, rnd in enumerate(record["rounds"]):
        in_text = sorted({int(k) for k in REF_PATTERN.findall(rnd["question"])})
        listed = sorted(set(rnd.get("refs", in_text)))
        if in_text != listed:
            raise ConversationError(
                f"sample {sample!r} round {r}: 'refs' lists {listed} but the question "
                f"references {in_text}")
        turns.append(Turn(rnd["question"], rnd["answer"], len(rnd.get("targets", []))))
    return turns


decode_rle = decode_checked  # its old name here: COCO RLE -> [H, W] bool of the image's size


def round_masks(record: dict, size: tuple[int, int]) -> list[list[np.ndarray]]:
    """Decoded target masks per round."""
    sample = record.get("id", "?")
    return [[decode_checked(t["rle"], size, f"sample {sample!r} round {r} target {j}")
             for j, t in enumerate(rnd.get("targets", []))]
            for r, rnd in enumerate(record["rounds"])]


def mask_loss_weight(target: dict) -> float:
    """A target's weight in the mask losses: 0 when its mask is a filled box (``box_derived``,
    Visual Genome), 1 otherwise."""
    return 0.0 if target.get("box_derived", False) else 1.0


@dataclass
class EncodedSample:
    sample_id: str
    conversation: EncodedConversation
    pixel_values: torch.Tensor
    decoder_pixel_values: torch.Tensor
    decoder_input_size: tuple[int, int]
    original_size: tuple[int, int]
    target_masks: torch.Tensor
    target_rounds: torch.Tensor
    target_weights: torch.Tensor
    seg_ref_masks: torch.Tensor
    ref_pixel_values: torch.Tensor
    ref_boxes: torch.Tensor
    ref_rounds: torch.Tensor
    frame_pixel_values: torch.Tensor | None = None  # [F, 3, S, S] reference frames (video)


def reference_frame_pixels(record: dict, frames, config: SegLLMConfig) -> torch.Tensor:
    """CLIP input of a record's reference frames (``reference_frames``, VISA's): [F, 3, S, S],
    F = 0 for a record without them. ``frames``: the loaded images, in the record's order."""
    sample = record.get("id", "?")
    listed = record.get("reference_frames") or []
    frames = list(frames or [])
    if len(frames) != len(listed):
        raise ConversationError(f"sample {sample!r}: the record lists {len(listed)} reference "
                                f"frame(s) but {len(frames)} were loaded")
    if frames and config.video.tokens_per_frame == 0:
        raise ConversationError(f"sample {sample!r}: the record has reference frames but the "
                                "model takes none (config.video.tokens_per_frame is 0)")
    size = config.vision.image_size
    if not frames:
        return torch.zeros((0, 3, size, size))
    return torch.stack([preprocess_clip(to_image_tensor(f), size, aspect=config.vision.aspect)
                        for f in frames])


def encode_sample(record: dict, image, tokenizer, config: SegLLMConfig, *,
                  reference_frames=None) -> EncodedSample:
    """Tokens, image tensors, targets and teacher-forced reference crops of one record;
    ``reference_frames``: the images of its ``reference_frames`` (a video frame's record)."""
    sample = record.get("id", "?")
    pixels = to_image_tensor(image)
    size = (int(pixels.shape[1]), int(pixels.shape[2]))
    frames = reference_frame_pixels(record, reference_frames, config)
    conv = encode_conversation(record_turns(record), tokenizer, config.token_ids,
                               config.vision.num_image_tokens, config.max_length, sample=sample,
                               num_frame_tokens=len(frames) * config.video.tokens_per_frame)
    masks = round_masks(record, size)
    targets = [masks[r][j] for r, j in conv.seg_targets]
    crop_size = config.vision.image_size
    crops, boxes = [], []
    for q_round, k, j in conv.ref_slots:
        ref = torch.from_numpy(masks[k][j])
        if not ref.any():
            raise ValueError(f"sample {sample!r} round {q_round}: referenced mask of round {k} "
                             "is empty")
        crops.append(masked_crop(pixels, ref, crop_size))
        boxes.append(normalized_box(ref))
    # the decoder's own preprocessing, through the registry: batching has a config, no model
    decoder_pixels, decoder_size = decoder_class(config.decoder).preprocess(
        pixels, config.decoder_config)
    union = {}
    for q_round, k, j in conv.ref_slots:
        union[q_round] = union.get(q_round, np.zeros(size, dtype=bool)) | masks[k][j]
    seg_refs = [union.get(r, np.zeros(size, dtype=bool)) for r, _ in conv.seg_targets]
    return EncodedSample(
        sample_id=sample, conversation=conv,
        pixel_values=preprocess_clip(pixels, crop_size, aspect=config.vision.aspect),
        decoder_pixel_values=decoder_pixels,
        decoder_input_size=decoder_size, original_size=size,
        target_masks=torch.from_numpy(np.stack(targets)).float() if targets
        else torch.zeros((0, *size)),
        target_rounds=torch.tensor([r for r, _ in conv.seg_targets], dtype=torch.long),
        target_weights=torch.tensor([mask_loss_weight(record["rounds"][r]["targets"][j])
                                     for r, j in conv.seg_targets], dtype=torch.float32),
        seg_ref_masks=torch.from_numpy(np.stack(seg_refs)).float() if seg_refs
        else torch.zeros((0, *size)),
        ref_pixel_values=torch.stack(crops) if crops else torch.zeros((0, 3, crop_size, crop_size)),
        ref_boxes=torch.stack(boxes) if boxes else torch.zeros((0, 4)),
        ref_rounds=torch.tensor([q for q, _, _ in conv.ref_slots], dtype=torch.long),
        frame_pixel_values=frames,
    )


def collate(samples: Sequence[EncodedSample], pad_id: int) -> SegBatch:
    """Right-pad token sequences and stack images."""
    length = max(len(s.conversation.input_ids) for s in samples)

    def pad(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (length - len(values))

    convs = [s.conversation for s in samples]
    return SegBatch(
        sample_ids=[s.sample_id for s in samples],
        input_ids=torch.tensor([pad(c.input_ids, pad_id) for c in convs]),
        attention_mask=torch.tensor([pad([1] * len(c.input_ids), 0) for c in convs]),
        labels=torch.tensor([pad(c.labels, -100) for c in convs]),
        round_ids=torch.tensor([pad(c.round_ids, -1) for c in convs]),
        pixel_values=torch.stack([s.pixel_values for s in samples]),
        decoder_pixel_values=torch.stack([s.decoder_pixel_values for s in samples]),
        decoder_input_sizes=[s.decoder_input_size for s in samples],
        original_sizes=[s.original_size for s in samples],
        target_masks=[s.target_masks for s in samples],
        target_rounds=[s.target_rounds for s in samples],
        target_weights=[s.target_weights for s in samples],
        seg_ref_masks=[s.seg_ref_masks for s in samples],
        ref_pixel_values=torch.cat([s.ref_pixel_values for s in samples]),
        ref_boxes=torch.cat([s.ref_boxes for s in samples]),
        ref_rounds=[s.ref_rounds for s in samples],
        num_rounds=[c.num_rounds for c in convs],
        dropped_rounds=[c.dropped_rounds for c in convs],
        frame_pixel_values=_frames_of(samples),
        frame_counts=[_frame_count(s) for s in samples],
    )


def _frame_count(sample: EncodedSample) -> int:
    return 0 if sample.frame_pixel_values is None else len(sample.frame_pixel_values)


def _frames_of(samples: Sequence[EncodedSample]) -> torch.Tensor | None:
    """Every sample's reference frames in batch order; None when there are none."""
    frames = [s.frame_pixel_values for s in samples if _frame_count(s)]
    return torch.cat(frames) if frames else None


def sequence_length(record: dict, tokenizer, config: SegLLMConfig) -> int:
    """Tokens of a record's sequence as ``encode_sample`` builds it, from its text alone (no
    image is read): what length bucketing sorts by (``segllm.train.data``)."""
    frames = len(record.get("reference_frames") or []) * config.video.tokens_per_frame
    conv = encode_conversation(record_turns(record), tokenizer, config.token_ids,
                               config.vision.num_image_tokens, config.max_length,
                               sample=record.get("id", "?"), num_frame_tokens=frames)
    return len(conv.input_ids)


def padding_fraction(batch: SegBatch) -> float:
    """Share of a batch's token slots that are padding."""
    return 1.0 - float(batch.attention_mask.float().mean())


def build_batch(items: Sequence[tuple[dict, object]], tokenizer, config: SegLLMConfig) -> SegBatch:
    """``[(record, image), ...]`` -> ``SegBatch``."""
    return collate([encode_sample(rec, img, tokenizer, config) for rec, img in items],
                   config.token_ids["pad"])
