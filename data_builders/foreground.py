"""Foreground (salient object) segmentation sets as unified records.

Input: an image folder and a mask folder whose files share stems, the layout of the seven sets
QueryMeldNet trains on (DUTS ``DUTS-TR-Image/`` + ``DUTS-TR-Mask/``, DIS5K ``im/`` + ``gt/``,
HRSOD, UHRSD, ThinObject5K, THUS, COIFT). Masks are 8-bit grey PNGs, 0 to 255 (anti-aliased
edges): a pixel is foreground when above 127. One record per image with one annotation, the
text ``"foreground"``. Writes unified records only (``--records unified``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import numpy as np

from segllm.masks import encode_rle

from .base import Builder, BuildError, BuildStats
from .coco_format import SourceError
from .unified import FOREGROUND_TEXT, unified_annotation, unified_record

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
THRESHOLD = 127


class ForegroundBuilder(Builder):
    """Unified foreground records from (image, mask) pairs matched by file stem.

    Args:
        image_dir: the images; record paths are their names under ``image_prefix``.
        mask_dir: the ground-truth masks (``<stem>.png``).
    """

    name = "foreground"
    kind = "unified"

    def __init__(self, image_dir: str, mask_dir: str, *, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        for folder in (image_dir, mask_dir):
            if not os.path.isdir(folder):
                raise SourceError(f"{folder}: folder not found")
        self.image_dir = image_dir
        self.masks = sorted(glob.glob(os.path.join(glob.escape(mask_dir), "*.png")))
        self.images_by_stem = {os.path.splitext(name)[0]: name for name in sorted(os.listdir(image_dir))
                               if name.lower().endswith(IMAGE_EXTENSIONS)}
        self.split = split

    def total(self) -> int:
        return len(self.masks)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        raise BuildError(f"{self.name} writes unified records only: add --records unified")

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        for mask_path in self.masks:
            record = self._unified_record(mask_path, stats)
            if record is not None:
                yield record

    def _unified_record(self, mask_path: str, stats: BuildStats) -> dict | None:
        from PIL import Image, UnidentifiedImageError

        stem = os.path.splitext(os.path.basename(mask_path))[0]
        record_id = f"{self.name}-{self.split}-{stem}"
        file_name = self.images_by_stem.get(stem)
        if file_name is None:
            stats.skip(record_id, "missing_image", f"no image named {stem}.* in {self.image_dir}")
            return None
        try:
            mask = np.asarray(Image.open(mask_path).convert("L")) > THRESHOLD
            with Image.open(os.path.join(self.image_dir, file_name)) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError) as exc:
            stats.skip(record_id, "unreadable_file", str(exc))
            return None
        if mask.shape != (height, width):
            stats.skip(record_id, "size_mismatch", f"mask {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}")
            return None
        if not mask.any():
            stats.skip(record_id, "empty_mask")
            return None
        return unified_record(record_id=record_id, image=self.image_path(file_name), height=height,
                              width=width, source=self.name, split=self.split, task="foreground",
                              annotations=[unified_annotation(FOREGROUND_TEXT, rle=encode_rle(mask))])
