"""ReasonSeg: labelme-style JSON polygons as reasoning rounds.

Input: a split folder (``ReasonSeg/train``) of ``<name>.jpg`` + ``<name>.json`` pairs, the JSON
being ``{"text": [question, ...], "is_sentence": bool, "shapes": [{"label": "target" |
"ignore" | "flag", "points": [[x, y], ...], "shape_type": "polygon"}]}``. Polygons are painted
largest first (so a smaller polygon inside a larger one wins): "target" pixels form the mask,
"ignore" pixels are label 255 (stored as the target's ``ignore_rle``), "flag" is an obsolete
label and is left out.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator

import numpy as np

from segllm.masks import MaskError, decode_rle, encode_rle, points_to_polygon, polygons_to_rle

from .base import Builder, BuildStats
from .rounds import make_round, target

IGNORE_LABEL = 255


def paint_label_map(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """0 background, 1 target, 255 ignore; larger polygons painted first.

    Raises:
        MaskError: for a polygon with fewer than 3 points.
    """
    painted = []
    for shape in shapes:
        label = str(shape.get("label", "")).lower()
        if label == "flag":
            continue
        mask = decode_rle(polygons_to_rle([points_to_polygon(shape.get("points", []))], height, width))
        painted.append((int(mask.sum()), IGNORE_LABEL if label == "ignore" else 1, mask.astype(bool)))
    labels = np.zeros((height, width), dtype=np.uint8)
    for _, value, mask in sorted(painted, key=lambda p: -p[0]):
        labels[mask] = value
    return labels


def question_for(text: str, is_sentence: bool) -> str:
    """A long query is asked as it is; a short phrase is wrapped in a question."""
    text = text.strip()
    if is_sentence:
        end = "" if text.endswith((".", "?", "!")) else "."
        return f"{text}{end} Please output the segmentation mask."
    return f"What is {text.rstrip('?.')} in this image? Please output the segmentation mask."


class ReasonSegBuilder(Builder):
    """One reasoning round per image: ReasonSeg has one target per image, asked with a random
    one of its questions (``rounds`` has no effect)."""

    name = "reasonseg"

    def __init__(self, split_dir: str, *, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.json_files = sorted(glob.glob(os.path.join(glob.escape(split_dir), "*.json")))
        self.split_dir = split_dir

    def total(self) -> int:
        return len(self.json_files)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        for path in self.json_files:
            record = self._conversation(path, stats)
            if record is not None:
                yield record

    def _conversation(self, path: str, stats: BuildStats) -> dict | None:
        from PIL import Image, UnidentifiedImageError

        stem = os.path.basename(path)[:-5]
        record_id = f"{self.name}-{self.split}-{stem}"
        try:
            with open(path, encoding="utf-8") as handle:
                anno = json.load(handle)
        except UnicodeDecodeError:  # some files were saved as cp1252
            with open(path, encoding="cp1252") as handle:
                anno = json.load(handle)
        except json.JSONDecodeError as exc:
            stats.skip(record_id, "malformed_json", f"{path}: {exc.msg} at line {exc.lineno}")
            return None
        if not isinstance(anno, dict):
            stats.skip(record_id, "malformed_json", f"{path}: expected an object")
            return None
        file_name = stem + ".jpg"
        image_file = os.path.join(self.split_dir, file_name)
        try:
            with Image.open(image_file) as img:
                width, height = img.size
        except (FileNotFoundError, UnidentifiedImageError, OSError):
            stats.skip(record_id, "missing_image", file_name)
            return None
        texts = [t for t in anno.get("text", []) if isinstance(t, str) and t.strip()]
        if not texts:
            stats.skip(record_id, "no_question")
            return None
        try:
            labels = paint_label_map(anno.get("shapes", []), height, width)
        except MaskError as exc:
            reason = "polygon_too_few_points" if "fewer than 3" in str(exc) else "bad_polygon"
            stats.skip(record_id, reason, str(exc))
            return None
        if not (labels == 1).any():
            stats.skip(record_id, "zero_area_mask", "no target pixel")
            return None
        extra = {"ignore_rle": encode_rle(labels == IGNORE_LABEL)} if (labels == IGNORE_LABEL).any() else {}
        tgt = target(encode_rle(labels == 1), **extra)
        rng = self.rng(stem)
        rng.shuffle(texts)
        is_sentence = bool(anno.get("is_sentence", False))
        rounds = [make_round(question_for(texts[0], is_sentence), [tgt], "reasoning", rng)]
        return {"id": record_id, "image": self.image_path(file_name), "height": height, "width": width,
                "source": self.name, "split": self.split, "rounds": rounds}
