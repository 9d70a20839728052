"""Synthetic captions for boxes (QueryMeldNet's COCO-syn): referring records from any unified set.

QueryMeldNet trains an OFA-like object captioner and keeps its five most confident captions per
object, one drawn per training step. Here the captioner is pluggable (:class:`Captioner`: an
image, one annotation and its record in, captions best first out); :class:`TemplateCaptioner`
writes captions that are true of the synthetic scenes by construction: the annotation's name,
the colour most of its pixels have (named by the nearest colour of ``synthetic.COLOURS`` and a
few more; things only, not ``"isthing": false`` stuff), its place in the image and, among
several of its name, its size ("the red circle on
the left", "the larger blue square").

:func:`caption_record` turns a unified record into a ``referring`` record: each annotation keeps
its box and mask, its ``text`` becomes the first caption, ``texts`` all of them, and
``"synthetic"`` gains ``"text"``; ``source`` becomes ``<source>-syn`` and ``meta.synthetic_by.text``
names the captioner. A referring expression must name one object, so a caption given to two
annotations of one image is dropped from both; an annotation left without a caption, or a
crowd region, is left out (counted). Only object records are captioned (``instance``,
``detection``, ``panoptic``: a semantic mask may hold several objects, and referring and
foreground texts are already what they are), one record per image (the first of a file
holding several tasks per image)::

    segllm build-data syn-captions --input data/unified/coco.unified.jsonl --image-root data/images \\
        --output data/unified          # -> data/unified/coco-syn.unified.jsonl
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from segllm.masks import box_to_mask, decode
from segllm.records import read_jsonl

from .base import Builder, BuildStats
from .syn_masks import derived_name
from .synthetic import BACKGROUNDS, COLOURS

SYN_CAPTION_SUFFIX = "-syn"
NAMED_COLOURS = {**COLOURS, **BACKGROUNDS, "black": (20, 20, 20), "gray": (128, 128, 128),
                 "brown": (120, 75, 40), "pink": (240, 150, 180)}
COLOUR_WORDS = frozenset(word for name in NAMED_COLOURS for word in name.split()) | {"grey"}
MAX_PIXELS = 4096  # pixels sampled to name a region's colour
CAPTIONED_TASKS = ("instance", "detection", "panoptic")


class Captioner(Protocol):
    """Captions for one annotation: ``name`` (provenance) and ``captions(image, annotation,
    record)`` with an ``(H, W, 3)`` uint8 image, returning distinct captions best first."""

    name: str

    def captions(self, image: np.ndarray, annotation: dict, record: dict) -> list[str]: ...


def region_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """The annotation's mask, or its filled box when it has none."""
    if annotation.get("rle") is not None:
        return decode(annotation["rle"])
    return box_to_mask(annotation["bbox"], height, width)


def colour_name(pixels: np.ndarray) -> str:
    """The named colour most of ``(M, 3)`` pixels are nearest to."""
    if len(pixels) > MAX_PIXELS:
        pixels = pixels[:: len(pixels) // MAX_PIXELS + 1]
    names = list(NAMED_COLOURS)
    palette = np.asarray([NAMED_COLOURS[n] for n in names], dtype=np.float64)
    nearest = ((pixels[:, None, :].astype(np.float64) - palette[None]) ** 2).sum(-1).argmin(1)
    return names[int(np.bincount(nearest, minlength=len(names)).argmax())]


def place_phrase(bbox: list[float], height: int, width: int) -> str:
    """Where the box's centre lies, in thirds of the image: "on the left", "at the top right"..."""
    cx, cy = (bbox[0] + bbox[2] / 2) / width, (bbox[1] + bbox[3] / 2) / height
    column = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if row and column:
        return f"at the {row} {column}"
    if row:
        return f"at the {row}"
    return f"on the {column}" if column else "in the middle"


class TemplateCaptioner:
    """Captions from the annotation's name, colour, place and relative size (module docstring)."""

    name = "template"

    def captions(self, image: np.ndarray, annotation: dict, record: dict) -> list[str]:
        height, width = image.shape[:2]
        noun = annotation["text"].replace("_", " ").replace("-", " ").strip()
        mask = region_mask(annotation, height, width)
        has_colour = bool(COLOUR_WORDS & set(noun.lower().split()))
        # stuff (sky, grass) takes no colour word: the palette names objects' paint, not nature's
        plain = has_colour or annotation.get("isthing") is False or not mask.any()
        colour = "" if plain else colour_name(image[mask]) + " "
        place = place_phrase(annotation["bbox"], height, width)
        size = self._size_word(annotation, record)
        candidates = [f"the {colour}{noun} {place}", f"the {colour}{noun}", f"the {noun} {place}",
                      f"the {size} {colour}{noun}" if size else "", f"a {colour}{noun} {place}"]
        return list(dict.fromkeys(" ".join(c.split()) for c in candidates if c))

    @staticmethod
    def _size_word(annotation: dict, record: dict) -> str:
        """"larger" / "smaller" between two of a name, "largest" / "smallest" among more."""
        same = [a for a in record["annotations"] if a["text"] == annotation["text"]]
        if len(same) < 2:
            return ""
        areas = sorted(a["bbox"][2] * a["bbox"][3] for a in same)
        area = annotation["bbox"][2] * annotation["bbox"][3]
        if area == areas[-1] and areas.count(area) == 1:
            return "larger" if len(same) == 2 else "largest"
        if area == areas[0] and areas.count(area) == 1:
            return "smaller" if len(same) == 2 else "smallest"
        return ""


def caption_record(record: dict, image: np.ndarray, captioner: Captioner, stats: BuildStats) -> dict | None:
    """The referring record of synthetic captions for ``record`` (module docstring), or None
    when no annotation keeps a caption."""
    rid = record.get("id", record["image"])
    kept, captions = [], []
    for k, ann in enumerate(record["annotations"]):
        if ann.get("iscrowd"):
            stats.skip(f"{rid}/annotation {k}", "crowd_annotation")
            continue
        kept.append((k, ann))
        captions.append(captioner.captions(image, ann, record))
    shared = Counter(c for caps in captions for c in set(caps))
    annotations = []
    for (k, ann), caps in zip(kept, captions, strict=True):
        unique = [c for c in caps if shared[c] == 1]
        if not unique:
            stats.skip(f"{rid}/annotation {k}", "ambiguous_caption", f"{ann['text']!r}")
            continue
        out = copy.deepcopy(ann)
        out.pop("isthing", None)
        out.update(text=unique[0], texts=unique,
                   synthetic=sorted(set(ann.get("synthetic", [])) | {"text"}))
        annotations.append(out)
    if not annotations:
        stats.skip(rid, "no_captioned_annotation")
        return None
    out = copy.deepcopy(record)
    out.update(task="referring", annotations=annotations,
               source=f"{record.get('source', 'unknown')}{SYN_CAPTION_SUFFIX}")
    out.setdefault("meta", {}).setdefault("synthetic_by", {})["text"] = captioner.name
    return out


def iter_captioned(input_path: str | os.PathLike, captioner: Captioner, images_root: str | os.PathLike,
                   stats: BuildStats) -> Iterator[dict]:
    """Referring records with synthetic captions for every record of a unified JSONL."""
    from segllm.images import ImageError, load_image

    captioned_images = set()
    for record in read_jsonl(input_path, kind="unified"):
        rid = record.get("id", record["image"])
        if record["task"] not in CAPTIONED_TASKS:
            stats.skip(rid, "not_an_object_record", record["task"])
            continue
        if record["image"] in captioned_images:
            stats.skip(rid, "image_already_captioned", record["image"])
            continue
        captioned_images.add(record["image"])
        path = Path(images_root) / record["image"]
        try:
            image = np.asarray(load_image(path, orientation="stored"))
        except (ImageError, OSError) as exc:
            stats.skip(rid, "missing_image", f"{path}: {exc}")
            continue
        if "height" in record and image.shape[:2] != (record["height"], record["width"]):
            stats.skip(rid, "size_mismatch", f"{path} is {image.shape[1]}x{image.shape[0]}")
            continue
        captioned = caption_record(record, image, captioner, stats)
        if captioned is not None:
            yield captioned


CAPTIONERS = {"template": TemplateCaptioner}
"""Captioners ``segllm build-data syn-captions --captioner NAME`` can build."""


class CaptionBuilder(Builder):
    """``segllm build-data syn-captions``: a unified JSONL in, synthetic referring records out."""

    kind = "unified"

    def __init__(self, input_path: str | os.PathLike, captioner: Captioner, *, image_root: str, **kwargs):
        super().__init__(image_root=image_root, **kwargs)
        self.input_path = input_path
        self.captioner = captioner
        self.name = derived_name(input_path, SYN_CAPTION_SUFFIX)

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        return iter_captioned(self.input_path, self.captioner, self.image_root, stats)
