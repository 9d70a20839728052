"""COCO and LVIS instance annotations: category rounds and positional rounds.

Input: a COCO-format ``instances_train2017.json`` or LVIS ``lvis_v1_train.json``. LVIS images
carry ``coco_url`` instead of ``file_name`` (the file is ``train2017/<id>.jpg``) and list
``neg_category_ids``: categories verified absent, which give exact "no such object" rounds.
For COCO (exhaustively labelled for its 80 classes) an absent class serves the same purpose.
Crowd regions are never targets (counted as ``crowd_annotation``).
"""

from __future__ import annotations

from collections import defaultdict

from .base import BuildStats, PerImageBuilder
from .coco_format import annotation_to_obj, index_annotations, load_json
from .compose import Planner
from .geometry import Obj
from .rounds import ALL_OF_CATEGORY_QUESTIONS, CATEGORY_QUESTIONS, clean_name, plural
from .unified import crowd_fields, unified_annotation, unified_record


class CocoInstancesBuilder(PerImageBuilder):
    """Conversations over one image's instances: "Segment the dog.", "Segment all the cups.",
    positional rounds relative to earlier targets, and absent-category rounds.

    Args:
        annotation_file: the COCO-format JSON.
        max_targets: categories with more instances than this are not asked for as "all".
    """

    name = "coco"

    def __init__(self, annotation_file: str, *, max_targets: int = 8, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        data = load_json(annotation_file)
        self.images = sorted(data["images"], key=lambda img: img["id"])
        self.anns_by_image = index_annotations(data["annotations"])
        self.categories = {c["id"]: clean_name(c["name"]) for c in data["categories"]}
        self.max_targets = max_targets
        self.split = split

    def total(self) -> int:
        return len(self.images)

    def file_name(self, image: dict) -> str:
        return image["file_name"]

    def absent_categories(self, image: dict, present: set[int]) -> list[int]:
        """Categories known to be absent from the image."""
        return sorted(set(self.categories) - present)

    def _objects(self, image: dict, stats: BuildStats, record_id: str) -> tuple[list[Obj], set[int]]:
        objects, present = [], set()
        for ann in self.anns_by_image.get(image["id"], []):
            present.add(ann["category_id"])
            if ann.get("iscrowd"):
                stats.skip(f"{record_id}/ann {ann.get('id')}", "crowd_annotation")
                continue
            obj = annotation_to_obj(ann, image, self.categories.get(ann["category_id"], "object"), stats, record_id)
            if obj is not None:
                objects.append(obj)
        return objects, present

    def _conversation(self, image: dict, stats: BuildStats) -> dict | None:
        record_id = f"{self.name}-{self.split}-{image['id']}"
        file_name = self.file_name(image)
        if self.image_missing(file_name):
            stats.skip(record_id, "missing_image", file_name)
            return None
        objects, present = self._objects(image, stats, record_id)
        if not objects:
            stats.skip(record_id, "no_usable_instance")
            return None
        rng = self.rng(image["id"])
        by_name: dict[str, list[Obj]] = defaultdict(list)
        for obj in objects:
            by_name[obj.name].append(obj)
        names = sorted(by_name)
        rng.shuffle(names)
        absent = [self.categories[c] for c in self.absent_categories(image, present) if c in self.categories]
        planner = Planner(rng, self.rounds)
        for name in names:
            if planner.full:
                break
            group = sorted(by_name[name], key=lambda o: (o.center, str(o.key)))
            if len(group) == 1:
                planner.add(rng.choice(CATEGORY_QUESTIONS).format(name=name), group, "semantic")
            elif len(group) <= self.max_targets:
                question = rng.choice(ALL_OF_CATEGORY_QUESTIONS).format(name=name, names=plural(name))
                planner.add(question, group, "semantic")
            if not planner.full and planner.rounds and rng.random() < 0.5:
                planner.add_positional(objects)
            if not planner.full and absent and rng.random() < 0.2:
                missing = absent.pop(rng.randrange(len(absent)))
                planner.add(rng.choice(CATEGORY_QUESTIONS).format(name=missing), [], "semantic", missing=missing)
        if not planner.rounds:
            stats.skip(record_id, "no_round", "every category has too many instances")
            return None
        return {"id": record_id, "image": self.image_path(file_name), "height": int(image["height"]),
                "width": int(image["width"]), "source": self.name, "split": self.split, "rounds": planner.rounds}

    def _unified_record(self, image: dict, stats: BuildStats) -> dict | None:
        """Every usable instance of the image as a (category, box, mask) triplet."""
        record_id = f"{self.name}-{self.split}-{image['id']}"
        file_name = self.file_name(image)
        if self.image_missing(file_name):
            stats.skip(record_id, "missing_image", file_name)
            return None
        annotations = []
        for ann in self.anns_by_image.get(image["id"], []):
            crowd = crowd_fields(ann, self.split)
            if crowd is None:
                stats.skip(f"{record_id}/ann {ann.get('id')}", "crowd_annotation")
                continue
            name = self.categories.get(ann["category_id"], "object")
            obj = annotation_to_obj(ann, image, name, stats, record_id)
            if obj is not None:
                annotations.append(unified_annotation(name, rle=obj.extra["rle"], **crowd))
        if not annotations:
            stats.skip(record_id, "no_usable_instance")
            return None
        return unified_record(record_id=record_id, image=self.image_path(file_name),
                              height=image["height"], width=image["width"], source=self.name,
                              split=self.split, task="instance", annotations=annotations)


class LvisBuilder(CocoInstancesBuilder):
    """LVIS v1: like COCO, with ``neg_category_ids`` as the verified-absent categories."""

    name = "lvis"

    def file_name(self, image: dict) -> str:
        if "file_name" in image:
            return image["file_name"]
        # LVIS v1 points at COCO 2017: ".../train2017/000000391895.jpg"
        url = image["coco_url"]
        return "/".join(url.rstrip("/").split("/")[-2:])

    def absent_categories(self, image: dict, present: set[int]) -> list[int]:
        return sorted(set(image.get("neg_category_ids", [])) - present)

