"""Unified (c, b, m) records: QueryMeldNet's one training format for every task and source.

Each record is one image with its annotations, each a (text, box, mask) triplet
(``segllm.records`` has the schema)::

    {"id": "coco-train-500", "image": "coco/train2017/000000000500.jpg", "height": 48,
     "width": 64, "source": "coco", "split": "train", "task": "instance",
     "annotations": [{"text": "dog", "bbox": [24, 28, 14, 14], "rle": {...}}]}

``segllm build-data SOURCE --records unified`` writes ``DIR/<source>.unified.jsonl`` for the
sources below (:data:`UNIFIED_TASKS`), through each builder's ``iter_unified_records``; the
leakage rules and skip counting are those of the builder's conversations. What each source's
annotations hold:

- ``coco``, ``lvis`` (``instance``): one annotation per instance, the category name as text;
  crowd regions only in evaluation splits (``"iscrowd": true``), never in ``train``.
- ``coco-panoptic`` (``panoptic``): one per segment of the panoptic PNG, ``"isthing"`` from
  the category table; crowd segments as for instances.
- ``ade20k``, ``coco-stuff`` (``semantic``): one per class present in the label map (all its
  pixels, however few); unlabelled pixels belong to no annotation.
- ``refcoco``, ``refcoco+``, ``refcocog`` (``referring``): one per expression, the expression as
  text (an object with three expressions gives three annotations with the same mask).
- ``visual-genome`` (``detection``): one per object of ``objects.json`` (or of the image's
  relationships), the box as annotated and ``"rle": null`` (no mask loss; ``syn_masks.py``
  makes masks from the boxes).
- ``foreground`` (``foreground``): one per image, the text ``"foreground"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from segllm.masks import rle_bbox

UNIFIED_TASKS = {
    "coco": "instance", "lvis": "instance", "coco-panoptic": "panoptic", "ade20k": "semantic",
    "coco-stuff": "semantic", "refcoco": "referring", "refcoco+": "referring",
    "refcocog": "referring", "visual-genome": "detection", "foreground": "foreground",
}
"""Sources with unified records, and the task of their records."""

FOREGROUND_TEXT = "foreground"


def unified_annotation(text: str, *, rle: dict | None = None, bbox: Sequence[float] | None = None,
                       **extra) -> dict:
    """One (c, b, m) triplet; the box is the mask's tight box unless given (box-only: ``rle``
    None and ``bbox`` given). ``extra``: optional fields such as ``iscrowd``, ``isthing``."""
    if rle is None and bbox is None:
        raise ValueError(f"annotation {text!r} has neither a mask nor a box")
    box = [float(v) for v in (bbox if bbox is not None else rle_bbox(rle))]
    return {"text": text, "bbox": box, "rle": rle, **extra}


def unified_record(*, record_id: str, image: str, height: int, width: int, source: str, split: str,
                   task: str, annotations: list[dict]) -> dict:
    """A unified record in the builders' field order."""
    return {"id": record_id, "image": image, "height": int(height), "width": int(width),
            "source": source, "split": split, "task": task, "annotations": annotations}


def crowd_fields(ann: dict, split: str) -> dict | None:
    """``{}`` for a normal annotation, ``{"iscrowd": True}`` for a crowd region of an
    evaluation split, ``None`` for a crowd region in training (left out, as detectron2 does)."""
    if not ann.get("iscrowd"):
        return {}
    return None if split == "train" else {"iscrowd": True}
