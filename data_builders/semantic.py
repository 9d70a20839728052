"""Semantic rounds from label maps (ADE20K, COCO-Stuff): "Segment the sky." -> all sky pixels.

Each class present in a label map (with at least ``min_area`` pixels) can be one round with
one target; a class absent from the map gives a "no such region" round now and then.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from segllm.masks import encode_rle, mask_to_bbox

from .base import Builder, BuildStats
from .compose import Planner
from .geometry import Obj
from .leakage import coco_id_from_file_name
from .rounds import SEMANTIC_QUESTIONS
from .unified import unified_annotation, unified_record


class SemanticMapBuilder(Builder):
    """Base of label-map builders; subclasses list ``(label path, image file name)`` pairs and
    map pixel values to class names (``None`` for unlabelled values)."""

    no_target_rate = 0.2

    def __init__(self, *, split: str = "train", min_area: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.min_area = min_area

    def items(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def class_name(self, value: int) -> str | None:
        raise NotImplementedError

    def class_names(self) -> list[str]:
        raise NotImplementedError

    def coco_image_id(self, file_name: str) -> int | None:
        return None

    def total(self) -> int:
        return len(self.items())

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        for label_path, file_name in self.items():
            record = self._conversation(label_path, file_name, stats)
            if record is not None:
                yield record

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        for label_path, file_name in self.items():
            record = self._unified_record(label_path, file_name, stats)
            if record is not None:
                yield record

    def _record_id(self, file_name: str) -> tuple[str, str]:
        stem = file_name.rsplit(".", 1)[0].replace("/", "_")
        return stem, f"{self.name}-{self.split}-{stem}"

    def _labels(self, label_path: str, file_name: str, record_id: str, stats: BuildStats) -> np.ndarray | None:
        """The label map of an image that may be used (leakage, image present), else None
        after counting why."""
        from PIL import Image, UnidentifiedImageError

        if self.split == "train" and self.is_excluded(self.coco_image_id(file_name), stats):
            return None
        if self.image_missing(file_name):
            stats.skip(record_id, "missing_image", file_name)
            return None
        try:
            labels = np.asarray(Image.open(label_path))
        except (OSError, UnidentifiedImageError) as exc:
            stats.skip(record_id, "unreadable_label_map", str(exc))
            return None
        if labels.ndim != 2:
            stats.skip(record_id, "unreadable_label_map", f"expected one channel, got shape {labels.shape}")
            return None
        return labels

    def _unified_record(self, label_path: str, file_name: str, stats: BuildStats) -> dict | None:
        """One (class, box, mask) triplet per class in the map: all its pixels, however few
        (an evaluation set must hold every labelled pixel)."""
        _, record_id = self._record_id(file_name)
        labels = self._labels(label_path, file_name, record_id, stats)
        if labels is None:
            return None
        annotations = []
        for value in np.unique(labels).tolist():
            name = self.class_name(value)
            if name is not None:
                annotations.append(unified_annotation(name, rle=encode_rle(labels == value)))
        if not annotations:
            stats.skip(record_id, "no_labelled_region")
            return None
        height, width = labels.shape
        return unified_record(record_id=record_id, image=self.image_path(file_name), height=height,
                              width=width, source=self.name, split=self.split, task="semantic",
                              annotations=annotations)

    def _conversation(self, label_path: str, file_name: str, stats: BuildStats) -> dict | None:
        stem, record_id = self._record_id(file_name)
        labels = self._labels(label_path, file_name, record_id, stats)
        if labels is None:
            return None
        regions = []
        values, counts = np.unique(labels, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            name = self.class_name(value)
            if name is None:
                continue
            if count < self.min_area:
                stats.skip(f"{record_id}/{name}", "region_too_small", f"{count} px")
                continue
            mask = labels == value
            regions.append(Obj(key=value, name=name, bbox=mask_to_bbox(mask), area=float(count),
                               extra={"rle": encode_rle(mask)}))
        if not regions:
            stats.skip(record_id, "no_labelled_region")
            return None
        rng = self.rng(stem)
        rng.shuffle(regions)
        present = {r.name for r in regions}
        absent = [n for n in self.class_names() if n not in present]
        planner = Planner(rng, self.rounds)
        for region in regions:
            if planner.full:
                break
            planner.add(rng.choice(SEMANTIC_QUESTIONS).format(name=region.name), [region], "semantic")
            if not planner.full and absent and rng.random() < self.no_target_rate:
                missing = absent.pop(rng.randrange(len(absent)))
                planner.add(rng.choice(SEMANTIC_QUESTIONS).format(name=missing), [], "semantic", missing=missing)
        height, width = labels.shape
        return {"id": record_id, "image": self.image_path(file_name), "height": int(height), "width": int(width),
                "source": self.name, "split": self.split, "rounds": planner.rounds}


class CocoIdMixin:
    """Label maps named by COCO image id take part in the RefCOCO/+/g exclusion."""

    def coco_image_id(self, file_name: str) -> int | None:
        return coco_id_from_file_name(file_name)
