"""PACO-LVIS: objects and their parts as hierarchical rounds.

Input: ``paco_lvis_v1_train.json``, COCO format where a category named ``"mug:handle"`` is a
part of ``"mug"`` and each annotation has ``obj_ann_id``: its own id for an object, the id of
the object it belongs to for a part. Images are COCO 2017 (``file_name`` like
``train2017/000000000139.jpg``), so RefCOCO/+/g held-out images are excluded by id.
"""

from __future__ import annotations

from collections import defaultdict

from .base import BuildStats, PerImageBuilder
from .coco_format import annotation_to_obj, index_annotations, load_json
from .compose import Planner
from .geometry import Obj
from .hierarchy import plan_hierarchy
from .rounds import clean_name


def split_category(name: str) -> tuple[str, str | None]:
    """``"mug:handle"`` -> ``("mug", "handle")``; ``"mug"`` -> ``("mug", None)``."""
    whole, _, part = name.partition(":")
    return clean_name(whole), (clean_name(part) if part else None)


class PacoBuilder(PerImageBuilder):
    """Object -> part and part -> object conversations from PACO-LVIS."""

    name = "paco-lvis"

    def __init__(self, annotation_file: str, *, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        data = load_json(annotation_file)
        self.images = sorted(data["images"], key=lambda img: img["id"])
        self.anns_by_image = index_annotations(data["annotations"])
        self.categories = {c["id"]: split_category(c["name"]) for c in data["categories"]}
        self.split = split

    def total(self) -> int:
        return len(self.images)

    def _conversation(self, image: dict, stats: BuildStats) -> dict | None:
        record_id = f"{self.name}-{self.split}-{image['id']}"
        if self.image_missing(image["file_name"]):
            stats.skip(record_id, "missing_image", image["file_name"])
            return None
        wholes: dict[int, Obj] = {}
        parts: dict[int, list[Obj]] = defaultdict(list)
        for ann in self.anns_by_image.get(image["id"], []):
            whole_name, part_name = self.categories.get(ann["category_id"], ("object", None))
            obj = annotation_to_obj(ann, image, part_name or whole_name, stats, record_id)
            if obj is None:
                continue
            if part_name is None:
                wholes[ann["id"]] = obj
            else:
                parts[ann.get("obj_ann_id")].append(obj)
        for owner in sorted(set(parts) - set(wholes), key=str):
            stats.skip(f"{record_id}/ann {owner}", "part_without_object", f"{len(parts[owner])} part(s)")
        pairs = [(wholes[i], parts.get(i, [])) for i in sorted(wholes)]
        if not any(p for _, p in pairs):
            stats.skip(record_id, "no_object_with_parts")
            return None
        planner = Planner(self.rng(image["id"]), self.rounds)
        plan_hierarchy(planner, pairs)
        if not planner.rounds:
            stats.skip(record_id, "no_round")
            return None
        return {"id": record_id, "image": self.image_path(image["file_name"]), "height": int(image["height"]),
                "width": int(image["width"]), "source": self.name, "split": self.split, "rounds": planner.rounds}
