"""Binary masks: COCO RLE, polygons, boxes and overlays. The one RLE module of the project
(data builders, records, training batches and the evaluation metrics all use it).

Every mask that leaves this module in a record is a COCO RLE dict whose ``counts`` is a
``str`` (pycocotools returns ``bytes``, which JSON cannot hold). Boxes are ``[x, y, w, h]``
in pixels, as COCO writes them. Arrays are ``(H, W)`` ``uint8`` with values 0 and 1, or bool
where a name says so (``decode``, ``decode_checked``).

The batched helpers (``areas``, ``boxes_xywh``, ``intersections``, ``union_of``,
``iou_matrix``) take RLEs already in pycocotools form (``to_pycoco``), so a metric converts
each mask once. pycocotools 2.0.11 with numpy 2 fails on ``mask.area`` / ``mask.toBbox`` for
lists longer than 255 (it builds a uint8 array holding the list length), so every batched
call goes in chunks of at most 255.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]
"""A COCO run-length encoding: ``{"size": [h, w], "counts": str}``."""

# pycocotools' batched calls overflow past this many objects (see module docstring).
_PYCOCO_CHUNK = 255

# Distinct, readable colours for overlays (RGB); cycled when there are more masks.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
)


class MaskError(ValueError):
    """A mask, polygon or box that cannot describe a region of the image."""


# -- encoding and decoding ------------------------------------------------------------------------


def encode_rle(mask: np.ndarray) -> RLE:
    """Encode an ``(H, W)`` mask (bool or 0/1) as a COCO RLE with ``str`` counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    fortran = np.asfortranarray(mask.astype(np.uint8, copy=False) != 0, dtype=np.uint8)
    rle = mask_utils.encode(fortran)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


encode_mask = encode_rle  # the evaluation's name for it


def to_pycoco(rle: Mapping) -> dict:
    """A COCO RLE in any JSON spelling (``str``, ``bytes`` or uncompressed list counts) in the
    form pycocotools' C functions take (compressed, ``bytes`` counts).

    Raises ``MaskError`` (a ``ValueError``) for a malformed object; callers add the file,
    record and round.
    """
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise MaskError("a mask must be a COCO RLE object with 'size' and 'counts'")
    height, width = _rle_hw(rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE, as COCO writes for crowd regions
        check_run_lengths(_uncompressed_runs(counts), height, width)
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        try:
            counts = counts.encode("ascii")
        except UnicodeEncodeError:
            raise MaskError("compressed RLE 'counts' holds a non-ASCII character") from None
    if not isinstance(counts, bytes):
        raise MaskError(f"RLE 'counts' must be a string or a list, got {type(counts).__name__}")
    check_run_lengths(compressed_runs(counts), height, width)
    return {"size": [height, width], "counts": counts}


# -- RLE validation -------------------------------------------------------------------------------
# pycocotools trusts its input: counts that do not cover exactly h*w pixels make its C code
# read uninitialised memory (decode returns different pixels on each call) or loop for ever
# (mask.iou). So every RLE is checked here, in to_pycoco, before pycocotools sees it.

# Each character of COCO's compressed counts is 48 + a 6-bit group ('0' to 'o'); -1 marks
# every other byte.
_GROUP_OF_BYTE = np.full(256, -1, dtype=np.int64)
_GROUP_OF_BYTE[48:112] = np.arange(64)
# A count is below 2**32 (pycocotools keeps uint32): at most 7 groups of 5 bits.
_MAX_GROUPS_PER_COUNT = 7
_GROUP_SHIFTS = 5 * np.arange(_MAX_GROUPS_PER_COUNT + 1, dtype=np.int64)


def compressed_runs(counts: bytes) -> np.ndarray:
    """The run lengths of COCO's compressed ``counts`` string, as int64.

    The format (pycocotools' ``rleToString``): each number is a little-endian sequence of 5-bit
    groups, one character each (``48 + group``; bit 0x20 set on all but the last group, bit
    0x10 of the last one the sign); from the fourth number on, each is stored as the difference
    to the number two places before it. Raises ``MaskError`` on a character outside the
    alphabet, a number left unfinished, or one too long for a pixel count.
    """
    groups = _GROUP_OF_BYTE[np.frombuffer(counts, dtype=np.uint8)]
    if groups.size == 0:
        return groups
    if groups.min() < 0:
        raise MaskError("compressed RLE 'counts' holds a character outside '0'..'o'")
    ends = np.flatnonzero(groups < 0x20)  # the last group of each number
    if ends.size == 0 or ends[-1] != groups.size - 1:
        raise MaskError("compressed RLE 'counts' ends inside a number")
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > _MAX_GROUPS_PER_COUNT:
        raise MaskError("compressed RLE 'counts' holds a number too long for a pixel count")
    position = np.arange(groups.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((groups & 0x1F) << _GROUP_SHIFTS[position], starts)
    values -= ((groups[ends] >> 4) & 1) << _GROUP_SHIFTS[lengths]  # sign extension
    # undo the delta coding: runs[m] = values[m] + runs[m - 2] for m >= 3
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def _uncompressed_runs(counts: list) -> np.ndarray:
    if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
        raise MaskError("uncompressed RLE 'counts' must be a list of integers")
    try:
        return np.asarray(counts, dtype=np.int64) if counts else np.zeros(0, dtype=np.int64)
    except OverflowError:
        raise MaskError("uncompressed RLE 'counts' holds a number too large for a pixel count") from None


def check_run_lengths(runs: np.ndarray, height: int, width: int) -> None:
    """Run lengths are non-negative and cover exactly ``height * width`` pixels."""
    if runs.size and runs.min() < 0:
        raise MaskError(f"RLE counts hold a negative run length ({int(runs.min())})")
    total = int(runs.sum())
    if total != height * width:
        raise MaskError(f"RLE counts sum to {total}, but a {height}x{width} mask has "
                        f"{height * width} pixels")


def _rle_hw(size: Any) -> tuple[int, int]:
    """``[height, width]`` as two Python ints; bools and floats are no size."""
    try:
        h, w = size
    except (TypeError, ValueError):
        h = w = None
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in (h, w))
    if not ok:
        raise MaskError(f"RLE 'size' must be [height, width], got {size!r}")
    return int(h), int(w)


def rle_size(rle: Mapping) -> tuple[int, int]:
    """``(height, width)`` of an RLE."""
    return int(rle["size"][0]), int(rle["size"][1])


def normalize_rle(rle: RLE) -> RLE:
    """Any COCO RLE (compressed or not, ``bytes`` or ``str`` counts) as a compressed ``str`` one."""
    compressed = to_pycoco(rle)
    counts = compressed["counts"]
    return {"size": [int(v) for v in compressed["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode a COCO RLE (either counts form) into an ``(H, W)`` ``uint8`` mask."""
    return np.ascontiguousarray(mask_utils.decode(to_pycoco(rle)), dtype=np.uint8)


def decode(rle: Mapping) -> np.ndarray:
    """Decode one RLE to an ``(H, W)`` bool array."""
    return decode_rle(rle).astype(bool)


def decode_checked(rle: Mapping, size: tuple[int, int], where: str) -> np.ndarray:
    """Decode to an ``(H, W)`` bool mask, refusing one that is not of the image's ``size``;
    ``where`` (file, sample, round, target) starts the message."""
    mask = decode(rle)
    if mask.shape != tuple(size):
        raise MaskError(f"{where}: mask of size {mask.shape} but the image is {tuple(size)}")
    return mask


@lru_cache(maxsize=64)
def _empty_counts(h: int, w: int) -> bytes:
    return mask_utils.frPyObjects({"size": [h, w], "counts": [h * w]}, h, w)["counts"]


def empty_rle(h: int, w: int) -> dict:
    """The all-background RLE of an ``h`` x ``w`` image (pycocotools form, bytes counts)."""
    return {"size": [h, w], "counts": _empty_counts(h, w)}


# -- measures on RLEs -----------------------------------------------------------------------------


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels, computed on the RLE without decoding it."""
    return int(mask_utils.area(to_pycoco(rle)))


def rle_bbox(rle: RLE) -> list[float]:
    """Tight ``[x, y, w, h]`` box of the RLE's foreground (zeros when empty)."""
    return [float(v) for v in mask_utils.toBbox(to_pycoco(rle))]


def merge_rles(rles: Sequence[RLE]) -> RLE:
    """Union of several RLEs of the same size."""
    if not rles:
        raise MaskError("cannot merge an empty list of masks")
    merged = mask_utils.merge([to_pycoco(r) for r in rles], intersect=False)
    return normalize_rle(merged)


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


# -- polygons and boxes ---------------------------------------------------------------------------


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterise COCO polygons (``[[x1, y1, x2, y2, ...], ...]``) into one RLE.

    Raises:
        MaskError: when there is no polygon, a polygon has fewer than 3 points or an odd
            number of coordinates.
    """
    if not polygons:
        raise MaskError("segmentation has no polygon")
    for i, poly in enumerate(polygons):
        if len(poly) % 2:
            raise MaskError(f"polygon {i} has an odd number of coordinates ({len(poly)})")
        if len(poly) < 6:
            raise MaskError(f"polygon {i} has fewer than 3 points ({len(poly) // 2})")
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return normalize_rle(mask_utils.merge(rles, intersect=False))


def points_to_polygon(points: Sequence[Sequence[float]]) -> list[float]:
    """``[[x, y], ...]`` (labelme, ReasonSeg) as a flat COCO polygon ``[x1, y1, ...]``."""
    return [float(c) for point in points for c in point[:2]]


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """A COCO ``segmentation`` field (polygons, uncompressed or compressed RLE) as one RLE."""
    if isinstance(segmentation, dict):
        rle = normalize_rle(segmentation)
        if rle["size"] != [height, width]:
            raise MaskError(f"RLE size {rle['size']} does not match the image ({height}, {width})")
        return rle
    if isinstance(segmentation, list):
        return polygons_to_rle(segmentation, height, width)
    raise MaskError(f"unknown segmentation type {type(segmentation).__name__}")


def box_to_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """Fill an ``[x, y, w, h]`` box (clipped to the image, pixel-rounded) as a binary mask."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    x1, y1 = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    mask = np.zeros((height, width), dtype=np.uint8)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = 1
    return mask


def box_to_rle(bbox: Sequence[float], height: int, width: int) -> RLE:
    """RLE of the filled box; used where a source has boxes but no masks (Visual Genome)."""
    return encode_rle(box_to_mask(bbox, height, width))


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """Tight ``[x, y, w, h]`` box of a binary mask; all zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def mask_area(mask: np.ndarray) -> int:
    """Number of foreground pixels."""
    return int(np.count_nonzero(mask))


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    """``[x, y, w, h]`` to ``[x0, y0, x1, y1]``."""
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def box_in_bounds(bbox: Sequence[float], height: int, width: int, tol: float = 1.0) -> bool:
    """Whether a box lies inside the image (``tol`` pixels of slack for annotation rounding)."""
    x, y, w, h = bbox
    return x >= -tol and y >= -tol and x + w <= width + tol and y + h <= height + tol and w >= 0 and h >= 0


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _overlay_scale(height: int, width: int, min_side: int) -> int:
    """Whole enlargement factor that brings the shorter side to ``min_side`` (capped at 4096)."""
    if min_side <= 0 or min(height, width) >= min_side:
        return 1
    scale = -(-min_side // min(height, width))
    return max(1, min(scale, 4096 // max(height, width)))


def render_overlay(
    image: Any,
    masks: Sequence[np.ndarray | RLE],
    labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    colors: Sequence[tuple[int, int, int]] | None = None,
    min_side: int = 0,
) -> Any:
    """Draw coloured translucent masks with a label each (e.g. the round index) on an image.

    Args:
        image: a PIL image or an ``(H, W, 3)`` ``uint8`` array.
        masks: ``(H, W)`` binary arrays or RLEs, same size as the image.
        labels: one text per mask, drawn at the mask's box corner; ``None`` draws none.
        alpha: opacity of the mask colour.
        colors: RGB per mask; the default cycles :data:`PALETTE`.
        min_side: enlarge (nearest neighbour, whole factors) an image whose shorter side is
            below this before drawing labels, so a label does not cover a small image's masks;
            never past 4096 px on the longer side. 0 keeps the input size.

    Returns:
        A new RGB ``PIL.Image.Image``; the input is not modified.
    """
    from PIL import Image, ImageDraw  # local: the rest of the module needs no PIL

    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    canvas = np.asarray(base.convert("RGB"), dtype=np.float32).copy()
    height, width = canvas.shape[:2]
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"{len(labels)} labels for {len(masks)} masks")
    palette = list(colors) if colors else list(PALETTE)
    binaries = []
    for i, m in enumerate(masks):
        binary = decode_rle(m) if isinstance(m, dict) else np.asarray(m)
        if binary.shape != (height, width):
            raise MaskError(f"mask {i} has shape {binary.shape}, image is {(height, width)}")
        binary = binary.astype(bool)
        color = np.array(palette[i % len(palette)], dtype=np.float32)
        canvas[binary] = (1.0 - alpha) * canvas[binary] + alpha * color
        binaries.append(binary)
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    scale = _overlay_scale(height, width, min_side)
    if scale > 1:
        out = out.resize((width * scale, height * scale), Image.NEAREST)
    if labels:
        draw = ImageDraw.Draw(out)
        for i, (binary, text) in enumerate(zip(binaries, labels, strict=True)):
            if not binary.any():
                continue
            x, y = (scale * int(v) for v in mask_to_bbox(binary)[:2])
            left, top, right, bottom = draw.textbbox((x, y), str(text))
            draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=palette[i % len(palette)])
            draw.text((x, y), str(text), fill=(255, 255, 255))
    return out
