"""Visual Genome relationships as interactional rounds.

Input: ``relationships.json`` (a list of ``{"image_id", "relationships": [{"relationship_id",
"predicate", "subject": {"object_id", "x", "y", "w", "h", "name" | "names"}, "object": {...}}]}``)
and ``image_data.json`` (``{"image_id", "width", "height", "url", "coco_id"}``). Visual Genome
has boxes, not masks: each target's mask is its filled box, flagged ``"box_derived": true``:
training gives such a target no mask loss and evaluation does not score it as a mask (its
box still counts for REC Acc@0.5), unless a tool replaces the rectangle by a real mask
(SAM prompted by the box, QueryMeldNet's "syn-m") and drops the flag.
Images that are also COCO images (``coco_id``) are subject to the RefCOCO/+/g exclusion.

Unified detection records (``--records unified``) take every object of an image once: from
``objects.json`` (``{"image_id", "objects": [{"object_id", "x", "y", "w", "h", "names"}]}``,
all annotated objects) when that is the first input, else from the relationships' subjects and
objects.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from segllm.masks import box_in_bounds, box_to_rle, rle_area, rle_bbox

from .base import Builder, BuildStats
from .coco_format import load_json
from .compose import Planner
from .geometry import Obj
from .rounds import CATEGORY_QUESTIONS, clean_name, ref
from .unified import unified_annotation, unified_record

INTERACTION_QUESTIONS = ("Segment the {subject} that is {predicate} {ref}.",
                         "Which {subject} is {predicate} {ref}? Segment it.")


def object_name(obj: dict) -> str:
    names = obj.get("names") or [obj.get("name", "object")]
    return clean_name(str(names[0]).lower())


class VisualGenomeBuilder(Builder):
    """"the man holding <ref:0>" conversations from Visual Genome relationships."""

    name = "visual-genome"

    def __init__(self, relationships_file: str, image_data_file: str, *, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        self.relationships = load_json(relationships_file)
        self.image_data = {int(i["image_id"]): i for i in load_json(image_data_file)}
        self.split = split

    def total(self) -> int:
        return len(self.relationships)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        for entry in sorted(self.relationships, key=lambda e: e["image_id"]):
            record = self._conversation(entry, stats)
            if record is not None:
                yield record

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        """Detection records: every object of an image's relationships once, its box as
        annotated and no mask (``"rle": null``: no mask loss; ``syn_masks.py`` adds masks)."""
        for entry in sorted(self.relationships, key=lambda e: e["image_id"]):
            record = self._detection_record(entry, stats)
            if record is not None:
                yield record

    def _usable_image(self, entry: dict, stats: BuildStats) -> tuple[str, dict] | None:
        """(record id, image info) of an entry that may be used, else None (counted)."""
        image_id = int(entry["image_id"])
        record_id = f"{self.name}-{self.split}-{image_id}"
        info = self.image_data.get(image_id)
        if info is None:
            stats.skip(record_id, "image_not_in_image_data")
            return None
        if self.split == "train" and self.is_excluded(info.get("coco_id"), stats):
            return None
        if self.image_missing(self.file_name(info)):
            stats.skip(record_id, "missing_image", self.file_name(info))
            return None
        return record_id, info

    def _detection_record(self, entry: dict, stats: BuildStats) -> dict | None:
        usable = self._usable_image(entry, stats)
        if usable is None:
            return None
        record_id, info = usable
        objects: dict = {}
        for raw in entry.get("objects", []):  # objects.json
            self._obj(raw, info, objects, stats, record_id)
        for rel in entry.get("relationships", []):
            where = f"{record_id}/rel {rel.get('relationship_id')}"
            for raw in (rel["subject"], rel["object"]):
                self._obj(raw, info, objects, stats, where)
        annotations = [unified_annotation(obj.name, bbox=obj.extra["ann"]["bbox"])
                       for _, obj in sorted(objects.items(), key=lambda item: str(item[0]))]
        if not annotations:
            stats.skip(record_id, "no_usable_object")
            return None
        return unified_record(record_id=record_id, image=self.image_path(self.file_name(info)),
                              height=info["height"], width=info["width"], source=self.name,
                              split=self.split, task="detection", annotations=annotations)

    @staticmethod
    def file_name(info: dict) -> str:
        """``.../VG_100K_2/1.jpg`` -> ``VG_100K_2/1.jpg``, as the images are unpacked."""
        return "/".join(info["url"].rstrip("/").split("/")[-2:])

    def _obj(self, raw: dict, info: dict, objects: dict, stats: BuildStats, where: str) -> Obj | None:
        key = raw.get("object_id")
        if key in objects:
            return objects[key]
        height, width = int(info["height"]), int(info["width"])
        bbox = [raw.get("x", 0), raw.get("y", 0), raw.get("w", 0), raw.get("h", 0)]
        if bbox[2] <= 0 or bbox[3] <= 0:
            stats.skip(f"{where}/object {key}", "zero_area_mask", f"box {bbox}")
            return None
        if not box_in_bounds(bbox, height, width):
            stats.skip(f"{where}/object {key}", "out_of_bounds_box", f"box {bbox} in {width}x{height}")
            return None
        rle = box_to_rle(bbox, height, width)
        obj = Obj(key=key, name=object_name(raw), bbox=rle_bbox(rle), area=float(rle_area(rle)),
                  extra={"rle": rle, "box_derived": True, "ann": {"bbox": bbox}})
        objects[key] = obj
        return obj

    def _conversation(self, entry: dict, stats: BuildStats) -> dict | None:
        usable = self._usable_image(entry, stats)
        if usable is None:
            return None
        record_id, info = usable
        image_id = int(entry["image_id"])
        file_name = self.file_name(info)
        objects: dict = {}
        groups: dict[tuple, list[Obj]] = defaultdict(list)
        for rel in entry.get("relationships", []):
            where = f"{record_id}/rel {rel.get('relationship_id')}"
            subject = self._obj(rel["subject"], info, objects, stats, where)
            obj = self._obj(rel["object"], info, objects, stats, where)
            predicate = str(rel.get("predicate", "")).strip().lower()
            if subject is None or obj is None:
                continue
            if not predicate or subject.key == obj.key:
                stats.skip(where, "unusable_relationship")
                continue
            group = groups[(obj.key, predicate, subject.name)]
            if all(s.key != subject.key for s in group):
                group.append(subject)
        rng = self.rng(image_id)
        keys = sorted(groups, key=str)
        rng.shuffle(keys)
        planner = Planner(rng, self.rounds)
        for obj_key, predicate, subject_name in keys:
            if planner.full:
                break
            anchor = objects[obj_key]
            known = [k for k, t in enumerate(planner.targets) if len(t) == 1 and t[0] is anchor]
            if known:
                k = known[0]
            elif len(planner.rounds) + 2 <= planner.max_rounds:
                k = planner.add(rng.choice(CATEGORY_QUESTIONS).format(name=anchor.name), [anchor], "referring")
            else:
                continue
            subjects = sorted(groups[(obj_key, predicate, subject_name)], key=lambda o: (o.center, str(o.key)))
            question = rng.choice(INTERACTION_QUESTIONS).format(subject=subject_name, predicate=predicate, ref=ref(k))
            planner.add(question, subjects, "interactional", refs=[k])
        if not planner.rounds:
            stats.skip(record_id, "no_usable_relationship")
            return None
        return {"id": record_id, "image": self.image_path(file_name), "height": int(info["height"]),
                "width": int(info["width"]), "source": self.name, "split": self.split, "rounds": planner.rounds}
