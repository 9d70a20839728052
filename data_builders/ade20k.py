"""ADE20K (SceneParsing, ``ADEChallengeData2016``) label maps as semantic rounds.

Input: the data set folder with ``annotations/<training|validation>/ADE_*.png`` (pixel value
k = class k of ``objectInfo150``, 0 = other/unlabelled) and the class table
``objectInfo150.csv`` (``Idx,Ratio,Train,Val,Name`` with names like ``building;edifice``;
the tab-separated ``objectInfo150.txt`` reads the same). Images: ``images/<split>/ADE_*.jpg``.
"""

from __future__ import annotations

import csv
import glob
import os

from .coco_format import SourceError
from .rounds import clean_name
from .semantic import SemanticMapBuilder


def load_object_info(path: str) -> dict[int, str]:
    """``Idx -> first name`` from ``objectInfo150.csv`` or ``.txt``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise SourceError(f"{path}: {exc}") from None
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    if not rows or "Idx" not in rows[0] or "Name" not in rows[0]:
        raise SourceError(f"{path}: expected columns Idx and Name")
    return {int(row["Idx"]): clean_name(row["Name"]) for row in rows}


class Ade20kBuilder(SemanticMapBuilder):
    """Semantic conversations from ADE20K."""

    name = "ade20k"

    def __init__(self, root: str, *, ade_split: str = "training", **kwargs):
        super().__init__(**kwargs)
        self.root = root
        self.ade_split = ade_split
        info = next((p for p in (os.path.join(root, "objectInfo150.csv"), os.path.join(root, "objectInfo150.txt"))
                     if os.path.exists(p)), os.path.join(root, "objectInfo150.csv"))
        self.names = load_object_info(info)
        pattern = os.path.join(glob.escape(root), "annotations", ade_split, "*.png")
        self._items = [(p, f"{ade_split}/{os.path.basename(p)[:-4]}.jpg") for p in sorted(glob.glob(pattern))]

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def class_name(self, value: int) -> str | None:
        return self.names.get(value)  # 0 ("other") is not in the table

    def class_names(self) -> list[str]:
        return [self.names[k] for k in sorted(self.names)]
