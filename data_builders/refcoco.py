"""RefCOCO, RefCOCO+ and RefCOCOg from the refer toolkit's files.

Input: a folder as refer lays it out (``data/refcoco/``): ``refs(unc).p`` (or ``refs(umd).p``,
``refs(google).p``), a pickled list of refs ``{"ref_id", "ann_id", "image_id", "category_id",
"split", "sentences": [{"sent", "raw", "tokens", "sent_id"}], "file_name"}``, and
``instances.json`` in COCO format (images, annotations with polygons, categories).

Each image's expressions become multi-round conversations: one referring round per
expression (pass p of an image asks each referred object with its p-th sentence) and, between them, positional rounds relative to an
earlier target ("the chair closest to the left of <ref:0>"), computed from the boxes of all
the image's COCO annotations. Images of the val/test splits (of this file and of any other
refs file given for exclusion) never appear in a training conversation, nor do COCO-2017 val
images when their ids are given (``data_builders/leakage.py``).

Two protocols:

- ``"mrseg"`` (the default): the multi-round conversations above, what training uses and what
  MRSeg-style evaluation of positional rounds reads;
- ``"standard"``: the published RefCOCO/+/g protocol that ``segllm eval refer`` and the papers'
  tables use: one record per expression, one round, every expression of the split, no
  synthetic rounds; record ids ``<dataset>-<split>-<ref_id>-<sent_id>``.

Every target keeps the annotation's own box as ``ann_bbox``: REC Acc@0.5 scores against it.
"""

from __future__ import annotations

import glob
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator

from .base import Builder, BuildStats
from .coco_format import SourceError, annotation_to_obj, index_annotations, load_json
from .compose import Planner
from .leakage import heldout_image_ids, load_refs
from .rounds import clean_name, referring_question
from .unified import unified_annotation, unified_record

DATASETS = ("refcoco", "refcoco+", "refcocog")
PROTOCOLS = ("mrseg", "standard")


def find_refs_file(input_dir: str, split_by: str | None = None) -> str:
    """The ``refs(<split_by>).p`` in ``input_dir`` (the only one, when ``split_by`` is None)."""
    if split_by is not None:
        path = os.path.join(input_dir, f"refs({split_by}).p")
        if not os.path.exists(path):
            raise SourceError(f"{path}: file not found")
        return path
    found = sorted(glob.glob(os.path.join(glob.escape(input_dir), "refs(*).p")))
    if len(found) != 1:
        raise SourceError(f"{input_dir}: expected one refs(...).p, found {len(found)}; pass --split-by")
    return found[0]


class RefCocoBuilder(Builder):
    """Multi-round referring conversations from a refer data folder.

    Args:
        input_dir: folder with ``refs(...).p`` and ``instances.json``.
        dataset: ``refcoco``, ``refcoco+`` or ``refcocog`` (names the records' source).
        split: which refer split to build (``train``; ``val``/``testA``... for evaluation sets).
        split_by: ``unc``, ``umd`` or ``google``; found from the folder when ``None``.
        positional_rate: chance of a positional round after each referring round.
        protocol: ``"mrseg"`` or ``"standard"`` (see the module doc).
        coco_val2017_ids: COCO-2017 val image ids; training images among them are left out.
    """

    name = "refcoco"

    def __init__(self, input_dir: str, *, dataset: str | None = None, split: str = "train",
                 split_by: str | None = None, positional_rate: float = 0.5, protocol: str = "mrseg",
                 coco_val2017_ids: Iterable[int] = (), **kwargs):
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise SourceError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.coco_val2017_ids = frozenset(int(i) for i in coco_val2017_ids)
        self.input_dir = input_dir
        self.dataset = dataset or os.path.basename(os.path.normpath(input_dir))
        if self.dataset not in DATASETS:
            raise SourceError(f"unknown refer data set {self.dataset!r}; one of {', '.join(DATASETS)}")
        self.name = self.dataset
        self.split = split
        self.positional_rate = positional_rate
        self.refs = load_refs(find_refs_file(input_dir, split_by))
        instances = load_json(os.path.join(input_dir, "instances.json"))
        self.images = {img["id"]: img for img in instances["images"]}
        self.anns_by_image = index_annotations(instances["annotations"])
        self.categories = {c["id"]: clean_name(c["name"]) for c in instances["categories"]}
        # its own held-out images too: RefCOCOg's google split shares images across splits
        if split == "train":
            self.excluded_image_ids = self.excluded_image_ids | heldout_image_ids(self.refs)

    def _refs_by_image(self) -> dict[int, list[dict]]:
        by_image: dict[int, list[dict]] = defaultdict(list)
        for r in self.refs:
            if self._in_split(r["split"]):
                by_image[int(r["image_id"])].append(r)
        return by_image

    def _in_split(self, ref_split: str) -> bool:
        if self.split in ("testA", "testB", "testC"):
            return self.split[-1] in ref_split and ref_split.startswith("test")
        if self.split == "test":
            return ref_split.startswith("test")
        return ref_split == self.split

    def total(self) -> int:
        return len(self._refs_by_image())

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        for image_id, refs in sorted(self._refs_by_image().items()):
            if self.split == "train" and (self.is_excluded(image_id, stats)
                                          or self._in_coco_val2017(image_id, stats)):
                continue
            if self.protocol == "standard":
                yield from self._standard_records(image_id, refs, stats)
            else:
                yield from self._image_conversations(image_id, refs, stats)

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        """One record per image, one (expression, box, mask) triplet per expression of the
        split (the standard protocol's every expression), with the same leakage rules."""
        for image_id, refs in sorted(self._refs_by_image().items()):
            if self.split == "train" and (self.is_excluded(image_id, stats)
                                          or self._in_coco_val2017(image_id, stats)):
                continue
            record = self._unified_record(image_id, refs, stats)
            if record is not None:
                yield record

    def _unified_record(self, image_id: int, refs: list[dict], stats: BuildStats) -> dict | None:
        base_id = f"{self.dataset}-{self.split}-{image_id}"
        image = self._image_or_skip(image_id, refs, base_id, stats)
        if image is None:
            return None
        objects = self._objects(image, base_id, stats)
        annotations = []
        for r in sorted(refs, key=lambda r: r["ref_id"]):
            obj = objects.get(r["ann_id"])
            sentences = [s["sent"].strip() for s in r.get("sentences", []) if s.get("sent", "").strip()]
            if obj is None or not sentences:
                stats.skip(f"{base_id}/ref {r['ref_id']}", "unusable_annotation" if obj is None else "no_sentence")
                continue
            annotations += [unified_annotation(sentence, rle=obj.extra["rle"]) for sentence in sentences]
        if not annotations:
            return None
        return unified_record(record_id=base_id, image=self.image_path(image["file_name"]),
                              height=image["height"], width=image["width"], source=self.dataset,
                              split=self.split, task="referring", annotations=annotations)

    def _in_coco_val2017(self, image_id: int, stats: BuildStats) -> bool:
        """The reverse rule: a training image that is a COCO-2017 val image (counted)."""
        if image_id in self.coco_val2017_ids:
            stats.leakage_excluded_images += 1
            stats.leakage_by_rule["coco_val2017_images"] += 1
            return True
        return False

    def _objects(self, image: dict, base_id: str, stats: BuildStats) -> dict:
        objects = {}
        for ann in self.anns_by_image.get(image["id"], []):
            obj = annotation_to_obj(ann, image, self.categories.get(ann["category_id"], "object"), stats, base_id)
            if obj is not None:
                objects[ann["id"]] = obj
        return objects

    def _image_or_skip(self, image_id: int, refs: list[dict], base_id: str, stats: BuildStats) -> dict | None:
        image = self.images.get(image_id)
        if image is None:
            stats.skip(base_id, "image_not_in_instances", f"{len(refs)} refs")
            return None
        if self.image_missing(image["file_name"]):
            stats.skip(base_id, "missing_image", image["file_name"])
            return None
        return image

    def _standard_records(self, image_id: int, refs: list[dict], stats: BuildStats) -> Iterable[dict]:
        """One single-round record per expression, in ref and sentence order."""
        base_id = f"{self.dataset}-{self.split}-{image_id}"
        image = self._image_or_skip(image_id, refs, base_id, stats)
        if image is None:
            return
        objects = self._objects(image, base_id, stats)
        for r in sorted(refs, key=lambda r: r["ref_id"]):
            obj = objects.get(r["ann_id"])
            sentences = [s for s in r.get("sentences", []) if s.get("sent", "").strip()]
            if obj is None or not sentences:
                stats.skip(f"{base_id}/ref {r['ref_id']}", "unusable_annotation" if obj is None else "no_sentence")
                continue
            for sentence in sentences:
                record_id = f"{self.dataset}-{self.split}-{r['ref_id']}-{sentence.get('sent_id', 0)}"
                rng = self.rng(record_id)
                planner = Planner(rng, 1)
                planner.add(referring_question(sentence["sent"], rng), [obj], "referring")
                yield self._record(record_id, image, planner)

    def _image_conversations(self, image_id: int, refs: list[dict], stats: BuildStats) -> Iterable[dict]:
        base_id = f"{self.dataset}-{self.split}-{image_id}"
        image = self._image_or_skip(image_id, refs, base_id, stats)
        if image is None:
            return
        objects = self._objects(image, base_id, stats)
        rng = self.rng(image_id)
        usable = []
        for r in sorted(refs, key=lambda r: r["ref_id"]):
            obj = objects.get(r["ann_id"])
            sentences = [s["sent"] for s in r.get("sentences", []) if s.get("sent", "").strip()]
            if obj is None or not sentences:
                stats.skip(f"{base_id}/ref {r['ref_id']}", "unusable_annotation" if obj is None else "no_sentence")
                continue
            rng.shuffle(sentences)
            usable.append((obj, sentences))
        # pass p asks each object with its p-th expression, so every expression is used once
        number = 0
        for p in range(max((len(s) for _, s in usable), default=0)):
            in_pass = [(obj, s[p]) for obj, s in usable if p < len(s)]
            rng.shuffle(in_pass)
            planner = Planner(rng, self.rounds)
            for obj, sentence in in_pass:
                if planner.full:
                    yield self._record(f"{base_id}-{number}", image, planner)
                    planner, number = Planner(rng, self.rounds), number + 1
                planner.add(referring_question(sentence, rng), [obj], "referring")
                if not planner.full and rng.random() < self.positional_rate:
                    planner.add_positional(list(objects.values()))
            if planner.rounds:
                yield self._record(f"{base_id}-{number}", image, planner)
                number += 1

    def _record(self, record_id: str, image: dict, planner: Planner) -> dict:
        return {"id": record_id, "image": self.image_path(image["file_name"]),
                "height": int(image["height"]), "width": int(image["width"]),
                "source": self.dataset, "split": self.split, "rounds": planner.rounds}
