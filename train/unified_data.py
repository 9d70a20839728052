"""Unified (c, b, m) records as training examples of a text-prompted query decoder.

Each record (``segllm.records``, "Unified segmentation") is one image with (text, box, mask)
triplets. Each image gets a list of texts, one class each, which the decoder scores its
queries against (QueryMeldNet's open-vocabulary classes):

- closed-set tasks (``instance``, ``semantic``, ``panoptic``, ``foreground``, ``detection``):
  the source's vocabulary, every distinct text of its closed-set records, sorted (so each
  image is told every class it could contain, and learns to say "no" to the absent ones);
- ``referring``: the record's own texts (each expression is its own class).

Masks and boxes go to the decoder's padded input frame (``hipie.to_input_frame`` /
``frame_boxes``). Crowd annotations (``"iscrowd": true``) are left out of training, as
MaskDINO does; an annotation whose mask vanishes at the decoder's size is left out too. An
image whose annotations have no masks (``"rle": null``, detection) is supervised on class and
box only (``has_masks`` False); one that mixes both kinds keeps only its masked annotations.
Sources are mixed by ``train/data.py``'s seeded ``MixtureSampler`` (``data.mixing``: "ratio"
or "size", which is QueryMeldNet's upsampling ratios with ``weight`` = ratio).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from segllm.images import load_image
from segllm.masks import decode_checked
from segllm.modeling.decoders.hipie import frame_boxes, to_input_frame
from segllm.modeling.decoders.query import Target
from segllm.records import read_jsonl

from .args import DataArgs, SourceArgs
from .augment import AugmentArgs
from .data import MixtureSampler, mixture_probabilities

OPEN_TASKS = ("referring",)


@dataclass
class UnifiedSource:
    """The unified records of one JSONL file, their image folder and closed-set vocabulary."""

    name: str
    path: Path
    records: list[dict]
    image_root: Path
    weight: float
    vocabulary: list[str] = field(default_factory=list)

    @classmethod
    def from_args(cls, args: SourceArgs, validate: bool = True) -> UnifiedSource:
        path = Path(args.path)
        if args.augment != AugmentArgs():
            raise ValueError(f"{path}: augmentation is not supported for unified records "
                             "(data.sources.N.augment must stay off)")
        records = list(read_jsonl(path, kind="unified", validate=validate))
        if not records:
            raise ValueError(f"{path}: no records")
        vocabulary = sorted({ann["text"] for r in records if r["task"] not in OPEN_TASKS
                             for ann in r["annotations"]})
        return cls(name=args.name or path.stem, path=path, records=records,
                   image_root=Path(args.image_root) if args.image_root else path.parent,
                   weight=args.weight, vocabulary=vocabulary)

    def texts_of(self, record: dict) -> list[str]:
        """The classes an image of this source is scored against (see the module docstring)."""
        if record["task"] in OPEN_TASKS:
            return list(dict.fromkeys(ann["text"] for ann in record["annotations"]))
        return self.vocabulary


@dataclass
class UnifiedExample:
    """One image ready for the decoder: its pixels, texts and ground truth in the input frame."""

    record_id: str
    pixels: torch.Tensor  # [3, S, S] preprocessed
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    texts: list[str]
    target: Target  # labels index ``texts``
    has_masks: bool
    isthing: list[bool | None]  # per target object: the annotation's "isthing" (None: not given)
    annotations: list[dict]  # the kept annotations, in the target's order


def record_id(record: dict, index: int) -> str:
    return str(record.get("id", f"{record['image']}#{index}"))


def box_frame(bbox: list[float], original_size: tuple[int, int], input_size: tuple[int, int],
              side: int) -> list[float]:
    """[x, y, w, h] pixels of the original image -> (cx, cy, w, h) in [0, 1] of the input."""
    scale = input_size[0] / original_size[0]
    x, y, w, h = (v * scale / side for v in bbox)
    return [x + w / 2, y + h / 2, w, h]


def make_example(source: UnifiedSource, index: int, decoder_cls: type,
                 decoder_config) -> UnifiedExample:
    """Record ``index`` of ``source`` as a decoder example (the stored orientation: the masks
    are on the stored pixels)."""
    record = source.records[index]
    rid = record_id(record, index)
    image = np.asarray(load_image(source.image_root / record["image"], orientation="stored"))
    tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)
    pixels, input_size = decoder_cls.preprocess(tensor, decoder_config)
    original = (image.shape[0], image.shape[1])
    side = decoder_config.image_size
    texts = source.texts_of(record)
    index_of = {text: k for k, text in enumerate(texts)}
    kept = [a for a in record["annotations"] if not a.get("iscrowd")]
    with_masks = [a for a in kept if a.get("rle") is not None]
    has_masks = bool(with_masks)
    kept = with_masks if has_masks else kept
    masks = torch.zeros((len(kept), side, side))
    if has_masks:
        full = np.stack([decode_checked(a["rle"], original, f"{source.path}: record {rid}")
                         for a in kept])
        masks = to_input_frame(torch.from_numpy(full).float(), input_size, side)
        visible = masks.flatten(1).any(1)
        kept = [a for a, v in zip(kept, visible.tolist(), strict=True) if v]
        masks = masks[visible]
        boxes = frame_boxes(masks) if kept else torch.zeros((0, 4))
    else:
        boxes = torch.tensor([box_frame(a["bbox"], original, input_size, side) for a in kept],
                             dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([index_of[a["text"]] for a in kept], dtype=torch.long)
    return UnifiedExample(
        record_id=rid, pixels=pixels, input_size=tuple(input_size), original_size=original,
        texts=list(texts), target=Target(labels=labels, boxes=boxes, masks=masks),
        has_masks=has_masks, isthing=[a.get("isthing") for a in kept], annotations=kept)


class MixedUnified:
    """Examples at positions of a seeded mixture over unified sources (``train/data.py``'s
    sampler: the order is a pure function of the seed)."""

    def __init__(self, args: DataArgs, seed: int, decoder_cls: type, decoder_config):
        self.sources = [UnifiedSource.from_args(s, args.validate_records) for s in args.sources]
        probs = mixture_probabilities([len(s.records) for s in self.sources],
                                      [s.weight for s in self.sources], args.mixing)
        self.sampler = MixtureSampler([len(s.records) for s in self.sources], probs, seed)
        self.decoder_cls, self.decoder_config = decoder_cls, decoder_config

    def example(self, position: int) -> UnifiedExample:
        source, index = self.sampler[position]
        return make_example(self.sources[source], index, self.decoder_cls, self.decoder_config)

    def batch(self, step: int, batch_size: int) -> list[UnifiedExample]:
        return [self.example(step * batch_size + i) for i in range(batch_size)]


def evaluation_examples(path: str, image_root: str | None, max_images: int, decoder_cls: type,
                        decoder_config, *, seed: int = 0) -> list[UnifiedExample]:
    """The closed-set records with masks of a held-out unified file (mask AP and the query-type
    statistic read closed-set classes); ``max_images`` of them drawn with ``seed`` when the
    file has more."""
    source = UnifiedSource.from_args(SourceArgs(path=path, image_root=image_root))
    closed = [i for i, r in enumerate(source.records)
              if r["task"] not in OPEN_TASKS and r["task"] != "detection"]
    if not closed:
        raise ValueError(f"{path}: no closed-set records with masks to evaluate")
    if len(closed) > max_images:
        closed = sorted(random.Random(seed).sample(closed, max_images))
    return [make_example(source, i, decoder_cls, decoder_config) for i in closed]
