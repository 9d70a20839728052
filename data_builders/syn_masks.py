"""Synthetic masks from boxes ("syn-m", QueryMeldNet's Objects365-syn-m): SAM prompted by each box.

A box-only unified annotation (``"rle": null``: Visual Genome, any detection set) gets the mask
SAM predicts for its box (one mask per box, ``multimask_output=False`` as SAM advises for box
prompts). The annotation keeps its annotated box and text, gains ``"synthetic": ["mask"]``, and
the record's ``meta.synthetic_by.mask`` names the model. A detection record becomes an
``instance`` record; its ``source`` becomes ``<source>-syn-m``. A box whose predicted mask is
empty stays box-only (counted as ``empty_mask``). Annotations that already have a mask are
left alone.

SAM comes from segllm's own loading: ``segllm.modeling.decoders.sam.build_sam`` with the sizes
of the official checkpoint read from its tensors (``sam_variant``), loaded strictly; images
go through segment_anything's ``SamPredictor`` (its resizing and box transform)::

    segllm build-data syn-m --input data/unified/visual-genome.unified.jsonl \\
        --sam-checkpoint checkpoints/sam_vit_h_4b8939.pth --image-root data/images --output data/unified

writes ``data/unified/visual-genome-syn-m.unified.jsonl`` and its ``.unified.summary.json``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from segllm.masks import encode_rle
from segllm.records import read_jsonl

from .base import Builder, BuildStats

SYN_M_SUFFIX = "-syn-m"


class BoxSegmenter(Protocol):
    """Masks for boxes: ``name`` (recorded as the masks' provenance) and ``masks(image, boxes)``
    with an ``(H, W, 3)`` uint8 image and ``(N, 4)`` ``[x0, y0, x1, y1]`` pixel boxes, returning
    ``(N, H, W)`` bool masks."""

    name: str

    def masks(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray: ...


class SamBoxSegmenter:
    """SAM prompted by boxes, through segment_anything's ``SamPredictor``.

    Args:
        sam: a segment_anything ``Sam`` (e.g. from :meth:`from_checkpoint`).
        name: provenance written into the records.
        batch: boxes decoded at once.
    """

    def __init__(self, sam, *, name: str, batch: int = 64):
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam.eval())
        self.name = name
        self.batch = batch

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, config=None, device: str = "cpu",
                        batch: int = 64) -> SamBoxSegmenter:
        """An official SAM file (ViT-B/L/H, told apart by its tensor shapes), or a file of
        another size given with its ``SAMConfig``; loaded strictly (every key must fit)."""
        from segllm.modeling.decoders.sam import SAM_VARIANTS, SAMConfig, build_sam, sam_variant
        from segllm.modeling.loading import load_state_dict_strict, read_torch_state_dict

        state = read_torch_state_dict(path)
        variant = sam_variant(state)
        if variant is not None:
            config = SAMConfig(**SAM_VARIANTS[variant])
        elif config is None:
            raise ValueError(f"{path}: not an official SAM checkpoint (ViT-B/L/H); give its SAMConfig")
        sam = build_sam(config)
        load_state_dict_strict(sam, state, source=str(path))
        return cls(sam.to(device), name=f"sam:{variant or 'custom'}:{Path(path).name}", batch=batch)

    def masks(self, image: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        import torch

        height, width = image.shape[:2]
        if len(boxes_xyxy) == 0:
            return np.zeros((0, height, width), dtype=bool)
        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
            device = self.predictor.device
            out = []
            for start in range(0, len(boxes_xyxy), self.batch):
                boxes = torch.as_tensor(boxes_xyxy[start:start + self.batch], dtype=torch.float32, device=device)
                boxes = self.predictor.transform.apply_boxes_torch(boxes, (height, width))
                masks, _, _ = self.predictor.predict_torch(point_coords=None, point_labels=None, boxes=boxes,
                                                           multimask_output=False)
                out.append(masks[:, 0].cpu().numpy())
        return np.concatenate(out).astype(bool)


def box_xyxy(bbox: list[float], height: int, width: int) -> list[float]:
    """``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` clipped to the image."""
    x, y, w, h = bbox
    return [max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)]


def add_synthetic_masks(record: dict, image: np.ndarray, segmenter: BoxSegmenter, stats: BuildStats) -> dict:
    """A copy of a unified record whose box-only annotations have SAM's masks (module docstring)."""
    out = copy.deepcopy(record)
    height, width = out["height"], out["width"]
    todo = [k for k, ann in enumerate(out["annotations"]) if ann.get("rle") is None]
    boxes = np.asarray([box_xyxy(out["annotations"][k]["bbox"], height, width) for k in todo],
                       dtype=np.float32).reshape(-1, 4)
    for k, mask in zip(todo, segmenter.masks(image, boxes), strict=True):
        ann = out["annotations"][k]
        if not mask.any():
            stats.skip(f"{out['id']}/annotation {k}", "empty_mask", f"box {ann['bbox']}")
            continue
        ann["rle"] = encode_rle(mask)
        ann["synthetic"] = sorted(set(ann.get("synthetic", [])) | {"mask"})
    if out["task"] == "detection":
        out["task"] = "instance"
    out["source"] = f"{out.get('source', 'unknown')}{SYN_M_SUFFIX}"
    meta = out.setdefault("meta", {})
    meta.setdefault("synthetic_by", {})["mask"] = segmenter.name
    return out


def iter_syn_m(input_path: str | os.PathLike, segmenter: BoxSegmenter, images_root: str | os.PathLike,
               stats: BuildStats) -> Iterator[dict]:
    """Every record of a unified JSONL with SAM masks for its boxes; a record whose image is
    missing or of another size is skipped (counted)."""
    from segllm.images import ImageError, load_image

    for record in read_jsonl(input_path, kind="unified"):
        rid = record.get("id", record["image"])
        if "height" not in record:
            stats.skip(rid, "no_image_size")
            continue
        path = Path(images_root) / record["image"]
        try:
            image = np.asarray(load_image(path, orientation="stored"))
        except (ImageError, OSError) as exc:
            stats.skip(rid, "missing_image", f"{path}: {exc}")
            continue
        if image.shape[:2] != (record["height"], record["width"]):
            stats.skip(rid, "size_mismatch", f"{path} is {image.shape[1]}x{image.shape[0]}")
            continue
        yield add_synthetic_masks(record, image, segmenter, stats)


def derived_name(input_path: str | os.PathLike, suffix: str) -> str:
    """``data/visual-genome.unified.jsonl`` -> ``visual-genome<suffix>``."""
    name = Path(input_path).name
    for ending in (".unified.jsonl", ".jsonl"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    return f"{name}{suffix}"


class SynMaskBuilder(Builder):
    """``segllm build-data syn-m``: a unified JSONL in, the same records with SAM's masks out.

    Args:
        input_path: unified records (their images under ``image_root``).
        segmenter: a :class:`BoxSegmenter` (:class:`SamBoxSegmenter` from a checkpoint).
        image_root: where the records' images are.
    """

    kind = "unified"

    def __init__(self, input_path: str | os.PathLike, segmenter: BoxSegmenter, *, image_root: str, **kwargs):
        super().__init__(image_root=image_root, **kwargs)
        self.input_path = input_path
        self.segmenter = segmenter
        self.name = derived_name(input_path, SYN_M_SUFFIX)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        return iter_syn_m(self.input_path, self.segmenter, self.image_root, stats)
