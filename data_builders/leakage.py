"""Keeping evaluation images out of training conversations (QueryMeldNet's two rules).

RefCOCO, RefCOCO+ and RefCOCOg are drawn from COCO train2014, and COCO, LVIS, PACO-LVIS,
COCO-Stuff, Visual Genome and OpenPSG reuse the same pictures under the same COCO image ids.

- Every builder of a training split over COCO pictures drops images whose COCO id is in a
  val/test split of the refer ``refs(...).p`` files given (``--exclude-refs``);
- the RefCOCO/+/g builders also drop training images that are COCO-2017 val images
  (``--coco-val2017 instances_val2017.json``), so COCO-2017 val results stay clean.

``segllm build-data`` applies both by default: a training build of a COCO-picture source
without the files they need is an error unless ``--no-leakage-filter`` says so. The summary
counts what each rule removed (``leakage_excluded_by_rule``).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable

COCO_ID_IN_NAME = re.compile(r"(\d{12})(?:_\d+)?\.(?:jpg|jpeg|png)$", re.IGNORECASE)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, tuples, strings, numbers): every class or
    function a pickle names is refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"it names {module}.{name}; a refs file holds only dicts, lists, strings and numbers, "
            "so segllm refuses every class or function in it")


def load_refs(path: str | os.PathLike) -> list[dict]:
    """Load a refer ``refs(unc|umd|google).p`` pickle (written by Python 2, hence latin-1).

    Only plain data is unpickled (:class:`_DataOnlyUnpickler`); a file naming any class or
    function, or one that is not a list, raises ``SourceError`` without running anything.
    """
    from .coco_format import SourceError  # here: coco_format imports this module's users

    try:
        with open(path, "rb") as handle:
            try:
                refs = _DataOnlyUnpickler(handle).load()
            except UnicodeDecodeError:
                handle.seek(0)
                refs = _DataOnlyUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError) as exc:  # what a corrupt or hostile pickle raises
        raise SourceError(f"{path}: not a refer refs pickle ({exc})") from None
    if not isinstance(refs, list):
        raise SourceError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


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


def load_coco_image_ids(instances_file: str | os.PathLike) -> set[int]:
    """The image ids of a COCO instances file (``instances_val2017.json``)."""
    import json

    try:
        with open(instances_file, encoding="utf-8") as handle:
            images = json.load(handle)["images"]
        return {int(image["id"]) for image in images}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        from .coco_format import SourceError

        raise SourceError(f"{instances_file}: not a COCO instances file ({exc})") from None


COCO_PICTURE_SOURCES = ("refcoco", "refcoco+", "refcocog", "coco", "lvis", "paco-lvis", "coco-stuff",
                        "visual-genome", "coco-panoptic")
"""Sources whose pictures are COCO images (GranD-f's OpenPSG and RefCOCOg-GCG files too, see
:func:`grandf_coco_layout`; the other GranD-f layouts are SA-1B and Flickr30k pictures)."""


def grandf_coco_layout(fmt: str | None, paths: list[str]) -> str | None:
    """``"psg"`` or ``"refcocog"`` when a GranD-f build reads COCO pictures: named by
    ``--format``, or by GLaMM's file names (``OpenPsgGCG_train.json``, ``RefCOCOg_GCG_train.json``)."""
    if fmt in ("psg", "refcocog"):
        return fmt
    names = " ".join(os.path.basename(p).lower() for p in paths)
    if fmt is None and "openpsg" in names:
        return "psg"
    if fmt is None and "refcocog" in names:
        return "refcocog"
    return None
REFER_SOURCES = ("refcoco", "refcoco+", "refcocog")


def leakage_filter_ids(source: str, split: str, *, exclude_refs: list[str], coco_val2017: str | None,
                       opted_out: bool, grandf_format: str | None = None) -> tuple[set[int], set[int]]:
    """The image ids a build must leave out: (RefCOCO/+/g val/test ids, COCO-2017 val ids).

    A training build of a COCO-picture source needs the files of both rules that apply to it
    (``--exclude-refs``; ``--coco-val2017`` for RefCOCO/+/g), unless ``opted_out``
    (``--no-leakage-filter``); a missing file is a :class:`SourceError` that says which.
    """
    from .coco_format import SourceError

    coco_pictures = source in COCO_PICTURE_SOURCES or (source == "grandf" and grandf_format in ("psg", "refcocog"))
    if split == "train" and coco_pictures and not opted_out:
        missing = []
        if not exclude_refs:
            missing.append("--exclude-refs with the refs(...).p files of RefCOCO, RefCOCO+ and RefCOCOg "
                           "(their val/test images stay out of training)")
        if source in REFER_SOURCES and not coco_val2017:
            missing.append("--coco-val2017 instances_val2017.json (training images that are COCO-2017 "
                           "val images stay out)")
        if missing:
            raise SourceError(f"{source} training data would leak evaluation images: pass "
                              + " and ".join(missing) + ", or --no-leakage-filter to build without the filter")
    refs_ids = load_heldout_image_ids(exclude_refs) if exclude_refs else set()
    val_ids = load_coco_image_ids(coco_val2017) if coco_val2017 and source in REFER_SOURCES else set()
    return refs_ids, val_ids
