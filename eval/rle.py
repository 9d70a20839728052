"""COCO run-length encoding helpers for evaluation, on pycocotools alone.

A mask is stored as COCO RLE ``{"size": [h, w], "counts": str}`` (DESIGN.md section 3). Masks
are ``(H, W)`` bool arrays when dense. These helpers are deliberately independent of
``segllm.masks`` so that the metrics depend on nothing but pycocotools and numpy.

pycocotools 2.0.11 with numpy 2 fails on ``mask.area`` / ``mask.toBbox`` for lists longer than
255 (it builds a uint8 array holding the list length), so every batched call here goes in
chunks of at most 255.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
from pycocotools import mask as mask_utils

# pycocotools' batched calls overflow past this many objects (see module docstring).
_PYCOCO_CHUNK = 255

Rle = dict


def encode_mask(mask: np.ndarray) -> dict:
    """Encode one ``(H, W)`` mask (bool or 0/1) as JSON-ready COCO RLE with ``str`` counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def encode_masks(masks: np.ndarray | Sequence[np.ndarray]) -> list[dict]:
    """Encode ``(N, H, W)`` masks as a list of JSON-ready COCO RLEs."""
    return [encode_mask(m) for m in masks]


def to_pycoco(rle: Mapping) -> dict:
    """A COCO RLE in any JSON spelling (str, bytes or uncompressed list counts) as pycocotools wants it.

    Raises ``ValueError`` for a malformed object; callers add the record id and round.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise ValueError("a mask must be a COCO RLE object with 'size' and 'counts'")
    size = rle["size"]
    try:
        h, w = size
    except (TypeError, ValueError):
        h = w = None
    if not (type(h) is int and type(w) is int and h >= 0 and w >= 0):  # noqa: E721 (bool is no size)
        raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h * w}")
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
    return {"size": [h, w], "counts": counts}


def rle_size(rle: Mapping) -> tuple[int, int]:
    """``(height, width)`` of an RLE."""
    return int(rle["size"][0]), int(rle["size"][1])


@lru_cache(maxsize=64)
def _empty_counts(h: int, w: int) -> bytes:
    return mask_utils.frPyObjects({"size": [h, w], "counts": [h * w]}, h, w)["counts"]


def empty_rle(h: int, w: int) -> dict:
    """The all-background RLE of an ``h`` x ``w`` image (pycocotools form, bytes counts)."""
    return {"size": [h, w], "counts": _empty_counts(h, w)}


def decode(rle: Mapping) -> np.ndarray:
    """Decode one RLE to an ``(H, W)`` bool array."""
    return mask_utils.decode(to_pycoco(rle)).astype(bool)


def _chunked(fn, rles: Sequence[dict]) -> list:
    out: list = []
    for start in range(0, len(rles), _PYCOCO_CHUNK):
        out.extend(fn(list(rles[start : start + _PYCOCO_CHUNK])))
    return out


def areas(rles: Sequence[dict]) -> np.ndarray:
    """Foreground pixel counts, ``(N,)`` int64, of pycocotools-form RLEs."""
    if len(rles) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(_chunked(mask_utils.area, rles), dtype=np.int64)


def boxes_xywh(rles: Sequence[dict]) -> np.ndarray:
    """Tight ``[x, y, w, h]`` boxes, ``(N, 4)`` float64 (all zeros for an empty mask)."""
    if len(rles) == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return np.asarray(_chunked(mask_utils.toBbox, rles), dtype=np.float64).reshape(-1, 4)


def intersections(a: Sequence[dict], b: Sequence[dict]) -> list[dict]:
    """Element-wise intersection RLEs of two equally long lists (pycocotools form)."""
    if len(a) != len(b):
        raise ValueError(f"lists differ in length: {len(a)} vs {len(b)}")
    # One C call per pair: run-length merging, no pixels are touched.
    return [mask_utils.merge([x, y], intersect=True) for x, y in zip(a, b, strict=True)]


def union_of(rles: Iterable[dict], h: int, w: int) -> dict:
    """Union of any number of RLEs of one size (the empty RLE when there are none)."""
    rles = list(rles)
    if not rles:
        return empty_rle(h, w)
    if len(rles) == 1:
        return rles[0]
    return mask_utils.merge(rles, intersect=False)


def iou_matrix(a: Sequence[dict], b: Sequence[dict]) -> np.ndarray:
    """Pairwise mask IoU, ``(len(a), len(b))`` float64; two empty masks have IoU 0 (pycocotools)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    out = mask_utils.iou(list(a), list(b), [0] * len(b))
    return np.asarray(out, dtype=np.float64).reshape(len(a), len(b))
