"""Reading COCO-format annotation files (COCO, LVIS, PACO-LVIS, refer's instances.json).

Turns one annotation into an :class:`~.geometry.Obj` carrying its RLE, or reports why it
cannot (polygon with fewer than 3 points, zero area, box outside the image...).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from segllm.masks import MaskError, box_in_bounds, rle_area, rle_bbox, segmentation_to_rle

from .base import BuildStats
from .geometry import Obj


class SourceError(ValueError):
    """A source file the build cannot start without is missing or unreadable."""


def load_json(path: str | os.PathLike):
    """Parse a whole JSON file; malformed or missing files raise :class:`SourceError`."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def index_annotations(annotations: list[dict]) -> dict[int, list[dict]]:
    """Annotations grouped by ``image_id``, each group in file order."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        by_image[ann["image_id"]].append(ann)
    return by_image


def annotation_to_obj(ann: dict, image: dict, name: str, stats: BuildStats, record_id: str) -> Obj | None:
    """An :class:`Obj` (with ``extra["rle"]``) for a COCO annotation, or ``None`` after
    counting the reason it is unusable."""
    height, width = int(image["height"]), int(image["width"])
    where = f"{record_id}/ann {ann.get('id')}"
    bbox = ann.get("bbox")
    if bbox is not None and not box_in_bounds(bbox, height, width):
        stats.skip(where, "out_of_bounds_box", f"box {bbox} in a {width}x{height} image")
        return None
    segmentation = ann.get("segmentation")
    if not segmentation:
        stats.skip(where, "missing_segmentation")
        return None
    try:
        rle = segmentation_to_rle(segmentation, height, width)
    except MaskError as exc:
        reason = "polygon_too_few_points" if "fewer than 3" in str(exc) else "bad_segmentation"
        stats.skip(where, reason, str(exc))
        return None
    area = rle_area(rle)
    if area == 0:
        stats.skip(where, "zero_area_mask")
        return None
    return Obj(key=ann.get("id"), name=name, bbox=rle_bbox(rle), area=float(area),
               extra={"rle": rle, "ann": ann})
