"""GranD-f grounded captions (GLaMM) into GCG records.

Four published layouts, told apart by their content:

- GranD-f HA and OpenPSG-GCG (``GranDf_HA_GCG_train.json``, ``OpenPsgGCG_train.json``): a list
  of ``{"file_name", "caption", "groundings": {phrase: {"token_positives": [start, end],
  "rle_masks": [COCO RLE, ...]}}}``;
- RefCOCOg-GCG (``RefCOCOg_GCG_train.json``): a list of one-key dicts ``{key: {"img_file_name",
  "caption", "refs": [{"sentence", "segmentation": [polygon, ...]}]}}``; phrases are found in
  the lower-cased caption; the image size comes from the image file;
- Flickr30k-GCG (``flickr_mergedGT_GCG_train.json``): COCO format, images with ``caption``
  and annotations with ``tokens_positive`` and a ``sam_mask`` RLE;
- the official GCG evaluation files GLaMM's ``eval/gcg`` scores (``val_gcg_coco_mask_gt.json``
  and ``val_gcg_coco_caption_gt.json``, ``test_`` likewise, side by side in
  ``annotations/val_test``): the mask file is COCO instances (one ``segmentation`` RLE per
  annotation, category 1), the caption file COCO captions whose one annotation per image has the
  ``caption`` and its phrases as ``labels``; the i-th label of an image goes with its i-th mask
  annotation (GLaMM's recall pairs them by index). Either file may be given; the other is found
  next to it. Labels are located in the caption in order; records keep GLaMM's image ids
  (``sa_10010541``), so predictions are keyed as GLaMM's are.

Phrases are sorted by position; one that overlaps an earlier phrase is dropped and counted.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator

from segllm.masks import (
    MaskError,
    merge_rles,
    normalize_rle,
    rle_area,
    rle_bbox,
    segmentation_to_rle,
)

from .base import Builder, BuildStats
from .coco_format import SourceError, load_json
from .leakage import coco_id_from_file_name

FORMATS = ("ha", "psg", "refcocog", "flickr", "gcg-eval")
EVAL_SUFFIXES = ("_gcg_coco_mask_gt.json", "_gcg_coco_caption_gt.json")


def detect_format(data) -> str:
    """Which layout a loaded GranD-f file has (``ha`` covers OpenPSG too)."""
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        first = data["annotations"][0] if data["annotations"] else {}
        return "flickr" if "tokens_positive" in first else "gcg-eval"
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first = data[0]
        if "groundings" in first:
            return "ha"
        if len(first) == 1 and isinstance(next(iter(first.values())), dict):
            return "refcocog"
    raise SourceError("unrecognised GranD-f layout (expected HA/PSG, RefCOCOg-GCG or Flickr30k-GCG)")


class GrandfBuilder(Builder):
    """GCG records from any GranD-f file.

    Args:
        annotation_file: the JSON file.
        fmt: one of :data:`FORMATS`, detected when ``None``.
        images_dir: where the source's images are (needed for RefCOCOg-GCG, whose file has no
            image sizes); defaults to ``image_root/image_prefix``.
    """

    name = "grandf"
    kind = "gcg"

    def __init__(self, annotation_file: str, *, fmt: str | None = None, images_dir: str | None = None,
                 split: str = "train", **kwargs):
        super().__init__(**kwargs)
        self.annotation_file = annotation_file
        self.data = load_json(annotation_file)
        self.format = fmt or detect_format(self.data)
        if self.format == "psg":
            self.format = "ha"
        if self.format not in FORMATS:
            raise SourceError(f"unknown GranD-f format {fmt!r}; one of {', '.join(FORMATS)}")
        self.name = f"grandf-{self.format}"
        self.split = split
        self.images_dir = images_dir or (os.path.join(self.image_root, self.image_prefix) if self.image_root else None)

    def total(self) -> int:
        return len(self.data["images"]) if isinstance(self.data, dict) else len(self.data)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        items = {"ha": self._ha_items, "refcocog": self._refcocog_items, "flickr": self._flickr_items,
                 "gcg-eval": self._eval_items}[self.format]
        for index, (file_name, caption, phrases, size) in enumerate(items(stats)):
            stem = os.path.basename(file_name).rsplit(".", 1)[0]
            # the benchmark's own image ids, so predictions are keyed as GLaMM's are
            record_id = stem if self.format == "gcg-eval" else f"{self.name}-{self.split}-{index}-{stem}"
            if self.split == "train" and self.is_excluded(coco_id_from_file_name(file_name), stats):
                continue
            if self.image_missing(file_name):
                stats.skip(record_id, "missing_image", file_name)
                continue
            record = self._record(record_id, file_name, caption, phrases, size, stats)
            if record is not None:
                yield record

    # ---- the three layouts, each as (file name, caption, [(span, [rle...] or polygons)], size)

    def _ha_items(self, stats):
        for item in self.data:
            phrases = []
            for grounding in item.get("groundings", {}).values():
                phrases.append((grounding["token_positives"], [normalize_rle(r) for r in grounding["rle_masks"]]))
            size = phrases[0][1][0]["size"] if phrases and phrases[0][1] else None
            yield item["file_name"], item["caption"].strip('"').strip(), phrases, size

    def _refcocog_items(self, stats):
        from PIL import Image

        for entry in self.data:
            item = next(iter(entry.values()))
            file_name = item["img_file_name"]
            size = None
            if self.images_dir and os.path.exists(os.path.join(self.images_dir, file_name)):
                with Image.open(os.path.join(self.images_dir, file_name)) as img:
                    size = [img.height, img.width]
            caption = item["caption"].strip('"').strip().lower()
            phrases = []
            for detail in item.get("refs", []):
                sentence = detail["sentence"].strip().lower()
                start = caption.find(sentence)
                if start < 0:
                    stats.skip(f"{file_name}/{sentence[:30]}", "phrase_not_in_caption")
                    continue
                phrases.append(([start, start + len(sentence)], detail["segmentation"]))
            yield file_name, caption, phrases, size

    def _flickr_items(self, stats):
        anns = defaultdict(list)
        for ann in self.data["annotations"]:
            anns[ann["image_id"]].append(ann)
        for image in sorted(self.data["images"], key=lambda i: i["id"]):
            by_span: dict[tuple, list] = defaultdict(list)
            for ann in anns.get(image["id"], []):
                span = tuple(ann["tokens_positive"][0])
                by_span[span].append(normalize_rle(ann["sam_mask"]))
            phrases = [(list(span), rles) for span, rles in by_span.items()]
            yield image["file_name"], image["caption"].strip(), phrases, [int(image["height"]), int(image["width"])]

    def _eval_files(self) -> tuple[dict, dict]:
        """(mask file, caption file) of the official evaluation pair, whichever was given."""
        path = str(self.annotation_file)
        for given, other in (EVAL_SUFFIXES, EVAL_SUFFIXES[::-1]):
            if path.endswith(given):
                sibling = path[: -len(given)] + other
                if not os.path.exists(sibling):
                    raise SourceError(f"{sibling}: file not found (the GCG evaluation files come in pairs)")
                pair = (self.data, load_json(sibling))
                return pair if given == EVAL_SUFFIXES[0] else pair[::-1]
        raise SourceError(f"{path}: a GCG evaluation file is named <split>{EVAL_SUFFIXES[0]} or "
                          f"<split>{EVAL_SUFFIXES[1]}")

    def _eval_items(self, stats):
        masks, captions = self._eval_files()
        masks_by_image, caption_by_image = defaultdict(list), {}
        for ann in masks["annotations"]:
            masks_by_image[ann["image_id"]].append(ann)
        for ann in captions["annotations"]:
            caption_by_image.setdefault(ann["image_id"], ann)
        sizes = {image["id"]: image for image in masks["images"]}
        for image in captions["images"]:
            image_id = image["id"]
            file_name = image.get("file_name") or f"{image_id}.jpg"
            entry, anns = caption_by_image.get(image_id), masks_by_image.get(image_id, [])
            if entry is None:
                stats.skip(image_id, "no_caption")
                continue
            labels = [str(label) for label in entry.get("labels", [])]
            if len(labels) != len(anns):
                stats.skip(image_id, "labels_masks_mismatch", f"{len(labels)} labels, {len(anns)} masks")
                continue
            info = sizes.get(image_id, image)
            size = [int(info["height"]), int(info["width"])] if "height" in info else None
            caption = entry["caption"].strip()
            yield file_name, caption, self._locate(image_id, caption, labels, anns, stats), size

    @staticmethod
    def _locate(image_id, caption: str, labels: list[str], anns: list[dict], stats) -> list:
        """Each label's span, searched in order (case-insensitive) after the previous one."""
        lowered, start_at, phrases = caption.lower(), 0, []
        for label, ann in zip(labels, anns, strict=True):
            start = lowered.find(label.lower().strip(), start_at)
            if start < 0:
                stats.skip(f"{image_id}/{label[:30]}", "phrase_not_in_caption")
                continue
            end = start + len(label.strip())
            phrases.append(([start, end], [normalize_rle(ann["segmentation"])]))
            start_at = end
        return phrases

    def _record(self, record_id, file_name, caption, phrases, size, stats) -> dict | None:
        if size is None:
            stats.skip(record_id, "missing_image", f"{file_name} (needed for its size)")
            return None
        height, width = int(size[0]), int(size[1])
        out, previous_end = [], 0
        for span, masks in sorted(phrases, key=lambda p: (p[0][0], p[0][1])):
            start, end = int(span[0]), int(span[1])
            where = f"{record_id}/phrase {start}:{end}"
            if not 0 <= start < end <= len(caption):
                stats.skip(where, "span_outside_caption")
                continue
            if start < previous_end:
                stats.skip(where, "overlapping_phrase")
                continue
            try:
                rles = [segmentation_to_rle(m if isinstance(m, dict) else [m], height, width) for m in masks]
                rle = merge_rles(rles)
            except MaskError as exc:
                reason = "polygon_too_few_points" if "fewer than 3" in str(exc) else "bad_mask"
                stats.skip(where, reason, str(exc))
                continue
            if rle_area(rle) == 0:
                stats.skip(where, "zero_area_mask")
                continue
            out.append({"text": caption[start:end], "span": [start, end], "rle": rle,
                        "bbox": [round(v, 2) for v in rle_bbox(rle)]})
            previous_end = end
        if not out:
            stats.skip(record_id, "no_grounded_phrase")
            return None
        return {"id": record_id, "image": self.image_path(file_name), "height": height, "width": width,
                "caption": caption, "phrases": out}
