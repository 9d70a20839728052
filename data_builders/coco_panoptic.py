"""COCO panoptic segmentation (``panoptic_train2017.json`` + its PNG folder) as unified records.

Input, as released (and read by panopticapi): the JSON's ``annotations`` list one
``{"image_id", "file_name": "<stem>.png", "segments_info": [{"id", "category_id", "iscrowd",
"bbox", "area"}]}`` per image, ``images`` give sizes and file names, ``categories`` carry
``isthing``; each PNG stores segment ids as ``R + 256 G + 256^2 B`` (0: void). Every listed
segment becomes a (category, box, mask) triplet with ``"isthing"``; pixels of no segment are
void (``segllm eval panoptic`` leaves them out, as panopticapi does). Writes unified records
only (``--records unified``); COCO image ids take part in the RefCOCO/+/g exclusion.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from segllm.masks import encode_rle

from .base import Builder, BuildError, BuildStats, UniqueIds
from .coco_format import load_json
from .rounds import clean_name
from .unified import crowd_fields, unified_annotation, unified_record


def segment_ids(png: np.ndarray) -> np.ndarray:
    """``(H, W)`` segment ids of a panoptic PNG's ``(H, W, 3)`` RGB pixels (panopticapi's rgb2id)."""
    png = png.astype(np.int64)
    return png[..., 0] + 256 * png[..., 1] + 256 * 256 * png[..., 2]


class CocoPanopticBuilder(Builder):
    """Unified panoptic records from COCO panoptic annotations.

    Args:
        annotation_file: ``panoptic_<split>2017.json``.
        png_dir: the folder of its PNGs (``panoptic_<split>2017/``).
    """

    name = "coco-panoptic"
    kind = "unified"

    def __init__(self, annotation_file: str, png_dir: str, *, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        data = load_json(annotation_file)
        self.images = {image["id"]: image for image in data["images"]}
        self.annotations = sorted(data["annotations"], key=lambda a: a["image_id"])
        self.categories = {c["id"]: (clean_name(c["name"]), bool(c.get("isthing", 1)))
                           for c in data["categories"]}
        self.png_dir = png_dir
        self.split = split

    def total(self) -> int:
        return len(self.annotations)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        raise BuildError(f"{self.name} writes unified records only: add --records unified")

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        seen = UniqueIds(f"{self.name} annotated images")
        for ann in self.annotations:
            seen.add(ann["image_id"])
            record = self._unified_record(ann, stats)
            if record is not None:
                yield record

    def _segment_map(self, ann: dict, record_id: str, stats: BuildStats) -> np.ndarray | None:
        from PIL import Image, UnidentifiedImageError

        path = os.path.join(self.png_dir, ann["file_name"])
        try:
            png = np.asarray(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            stats.skip(record_id, "unreadable_panoptic_png", str(exc))
            return None
        return segment_ids(png)

    def _unified_record(self, ann: dict, stats: BuildStats) -> dict | None:
        image = self.images.get(ann["image_id"])
        record_id = f"{self.name}-{self.split}-{ann['image_id']}"
        if image is None:
            stats.skip(record_id, "image_not_in_images")
            return None
        if self.split == "train" and self.is_excluded(image["id"], stats):
            return None
        if self.image_missing(image["file_name"]):
            stats.skip(record_id, "missing_image", image["file_name"])
            return None
        ids = self._segment_map(ann, record_id, stats)
        if ids is None:
            return None
        if ids.shape != (int(image["height"]), int(image["width"])):
            stats.skip(record_id, "size_mismatch", f"PNG {ids.shape[1]}x{ids.shape[0]}, image "
                       f"{image['width']}x{image['height']}")
            return None
        annotations = [a for segment in ann.get("segments_info", [])
                       if (a := self._annotation(segment, ids, f"{record_id}/segment {segment.get('id')}",
                                                 stats)) is not None]
        if not annotations:
            stats.skip(record_id, "no_usable_segment")
            return None
        return unified_record(record_id=record_id, image=self.image_path(image["file_name"]),
                              height=image["height"], width=image["width"], source=self.name,
                              split=self.split, task="panoptic", annotations=annotations)

    def _annotation(self, segment: dict, ids: np.ndarray, where: str, stats: BuildStats) -> dict | None:
        crowd = crowd_fields(segment, self.split)
        if crowd is None:
            stats.skip(where, "crowd_annotation")
            return None
        category = self.categories.get(segment.get("category_id"))
        if category is None:
            stats.skip(where, "unknown_category", str(segment.get("category_id")))
            return None
        mask = ids == segment["id"]
        if not mask.any():
            stats.skip(where, "zero_area_mask")
            return None
        name, isthing = category
        return unified_annotation(name, rle=encode_rle(mask), isthing=isthing, **crowd)
