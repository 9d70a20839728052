"""Keeping RefCOCO/+/g evaluation images out of training conversations.

RefCOCO, RefCOCO+ and RefCOCOg are drawn from COCO train2014, and COCO, LVIS, PACO-LVIS,
COCO-Stuff, Visual Genome and OpenPSG reuse the same pictures under the same COCO image ids.
Every builder of a training split therefore drops images whose COCO id is in a val/test
split of any refer ``refs(...).p`` file it is given, and counts them.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable

COCO_ID_IN_NAME = re.compile(r"(\d{12})(?:_\d+)?\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Load a refer ``refs(unc|umd|google).p`` pickle (written by Python 2, hence latin-1).

    The file is a pickle: only load files from the published data set.
    """
    with open(path, "rb") as handle:
        try:
            return pickle.load(handle)
        except UnicodeDecodeError:
            handle.seek(0)
            return pickle.load(handle, encoding="latin1")


def heldout_image_ids(refs: Iterable[dict]) -> set[int]:
    """COCO ids of images with any expression outside the train split (val, test, testA...)."""
    return {int(r["image_id"]) for r in refs if r.get("split") != "train"}


def load_heldout_image_ids(paths: Iterable[str | os.PathLike]) -> set[int]:
    """Union of :func:`heldout_image_ids` over several refs pickles."""
    ids: set[int] = set()
    for path in paths:
        ids |= heldout_image_ids(load_refs(path))
    return ids


def coco_id_from_file_name(file_name: str) -> int | None:
    """The COCO image id in a file name (``COCO_train2014_000000581857.jpg``,
    ``train2017/000000581857.jpg``, ``000000581857.png``), or ``None``."""
    match = COCO_ID_IN_NAME.search(os.path.basename(file_name))
    return int(match.group(1)) if match else None
