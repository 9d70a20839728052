"""COCO-Stuff (``stuffthingmaps_trainval2017``) label maps as semantic rounds.

Input: the label folder (``train2017/000000000009.png``: pixel value v = class id v + 1 of
``labels.txt``, 255 = unlabelled) and ``labels.txt`` from the COCO-Stuff repository
(``"0: unlabeled"``, ``"1: person"``, ... ``"182: wood"``). Images: ``<split>/<stem>.jpg``.
The file names are COCO ids, so RefCOCO/+/g held-out images are excluded.
"""

from __future__ import annotations

import glob
import os

from .coco_format import SourceError
from .rounds import clean_name
from .semantic import CocoIdMixin, SemanticMapBuilder


def load_labels(path: str) -> dict[int, str]:
    """``id -> name`` from ``labels.txt`` lines ``"<id>: <name>"`` (0, unlabelled, left out)."""
    names = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                key, sep, name = line.partition(":")
                if not sep or not key.strip().isdigit():
                    raise SourceError(f"{path}:{number}: expected '<id>: <name>', got {line.strip()!r}")
                if int(key) > 0:
                    names[int(key)] = clean_name(name.strip())
    except OSError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return names


class CocoStuffBuilder(CocoIdMixin, SemanticMapBuilder):
    """Semantic conversations over COCO-Stuff's 171 thing and stuff classes."""

    name = "coco-stuff"

    def __init__(self, label_dir: str, labels_file: str, *, image_dir: str = "train2017", **kwargs):
        super().__init__(**kwargs)
        self.names = load_labels(labels_file)
        paths = sorted(glob.glob(os.path.join(glob.escape(label_dir), "*.png")))
        self._items = [(p, f"{image_dir}/{os.path.basename(p)[:-4]}.jpg") for p in paths]

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def class_name(self, value: int) -> str | None:
        return None if value == 255 else self.names.get(value + 1)

    def class_names(self) -> list[str]:
        return [self.names[k] for k in sorted(self.names)]
