"""Mask and box metrics with LISA's semantics: per-target intersection/union, cIoU, gIoU, mIoU, REC Acc@0.5.

Definitions (LISA ``utils/utils.py`` intersectionAndUnionGPU and ``train_ds.py`` validate):

- For each (prediction, target) pair, intersection ``I`` and union ``U`` of the foreground,
  counting only pixels whose ground-truth label is not 255 (LISA sets the prediction to 255
  there, and its histogram skips 255).
- cIoU = ``sum(I) / sum(U)`` over all targets of the data set. LISA divides by
  ``sum(U) + 1e-10``, so a set where nothing was annotated or predicted scores 0; we do the same.
- gIoU = mean over targets of ``I / U``, where a target whose union is empty (empty ground truth
  and empty prediction: the correct answer to a "no such object" question) scores 1. LISA
  divides by ``U + 1e-5``; we divide exactly, which differs by under ``1e-5 / U``.
- mIoU (ours, to tell it apart from gIoU) = mean of ``I / U`` over the targets whose union is
  not empty: "no target" pairs are left out instead of scoring 1.

Everything here works on arrays of counts so that 10 000 targets are a few numpy calls; the
counts come either from dense masks (vectorised numpy) or from COCO RLE (pycocotools).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segllm import masks as rle_ops

IGNORE_LABEL = 255


def intersection_union_dense(pred: np.ndarray, target: np.ndarray, ignore_label: int = IGNORE_LABEL) -> tuple[np.ndarray, np.ndarray]:
    """Foreground intersection and union per mask pair, ignoring ``ignore_label`` pixels.

    Args:
        pred: ``(N, H, W)`` or ``(H, W)`` predicted masks, bool or 0/1.
        target: same shape; bool (nothing ignored) or integer labels: 1 foreground,
            0 background, ``ignore_label`` ignored.

    Returns:
        ``(I, U)``, each ``(N,)`` int64 (``(1,)`` for a single ``(H, W)`` pair).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.ndim != 3:
        raise ValueError(f"expected (N, H, W) or (H, W) masks, got shape {pred.shape}")
    n = pred.shape[0]
    pred = pred.astype(bool, copy=False).reshape(n, -1)
    target = target.reshape(n, -1)
    inter = np.zeros(n, dtype=np.int64)
    union = np.zeros(n, dtype=np.int64)
    # One mask at a time: flat count_nonzero is several times faster than an axis reduction
    # over the stack, and the temporaries stay the size of one mask.
    for i in range(n):
        p, t = pred[i], target[i]
        if t.dtype == bool:
            fg = t
        else:
            fg = t == 1
            p = p & (t != ignore_label)
        inter[i] = np.count_nonzero(p & fg)
        union[i] = np.count_nonzero(p) + np.count_nonzero(fg) - inter[i]
    return inter, union


def intersection_union_rle(
    preds: Sequence[dict],
    targets: Sequence[dict],
    ignores: Sequence[dict | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union per pair of COCO RLEs (pycocotools form, see ``segllm.masks.to_pycoco``).

    Args:
        preds: N predicted masks.
        targets: N ground-truth masks of the same sizes.
        ignores: optional N masks of pixels labelled 255 (or ``None`` per pair): excluded from both.

    Returns:
        ``(I, U)``, each ``(N,)`` int64.
    """
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions vs {len(targets)} targets")
    inter = rle_ops.areas(rle_ops.intersections(preds, targets))
    area_pred = rle_ops.areas(preds)
    area_target = rle_ops.areas(targets)
    if ignores is not None and any(ig is not None for ig in ignores):
        idx = [i for i, ig in enumerate(ignores) if ig is not None]
        ign = [ignores[i] for i in idx]
        sel_p = [preds[i] for i in idx]
        sel_t = [targets[i] for i in idx]
        # Remove ignored pixels from each count: |A & ~G| = |A| - |A & G|.
        pred_in_ign = rle_ops.areas(rle_ops.intersections(sel_p, ign))
        target_in_ign = rle_ops.areas(rle_ops.intersections(sel_t, ign))
        both_in = rle_ops.intersections(rle_ops.intersections(sel_p, sel_t), ign)
        inter[idx] -= rle_ops.areas(both_in)
        area_pred[idx] -= pred_in_ign
        area_target[idx] -= target_in_ign
    union = area_pred + area_target - inter
    return inter, union


def per_target_iou(inter: np.ndarray, union: np.ndarray, empty_score: float = 1.0) -> np.ndarray:
    """``I / U`` per target, ``(N,)`` float64; ``empty_score`` where the union is empty."""
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.full(inter.shape, float(empty_score))
    nonempty = union > 0
    out[nonempty] = inter[nonempty] / union[nonempty]
    return out


def ciou(inter: np.ndarray, union: np.ndarray) -> float:
    """Cumulative IoU, ``sum(I) / sum(U)``; 0 when the total union is empty (as LISA)."""
    total_union = float(np.sum(union))
    return float(np.sum(inter)) / total_union if total_union > 0 else 0.0


def giou(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean per-target IoU with empty-vs-empty scoring 1 (LISA); NaN when there are no targets."""
    if len(inter) == 0:
        return float("nan")
    return float(np.mean(per_target_iou(inter, union, empty_score=1.0)))


def miou(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean per-target IoU over targets with a non-empty union; NaN when there are none."""
    union = np.asarray(union)
    keep = union > 0
    if not np.any(keep):
        return float("nan")
    return float(np.mean(np.asarray(inter)[keep] / union[keep]))


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of ``[x, y, w, h]`` boxes, ``(N, 4)`` each -> ``(N,)``; 0 where a box is empty.

    Boxes are continuous (COCO): a mask's tight box from pycocotools covers whole pixels, so a
    single pixel at (3, 4) is ``[3, 4, 1, 1]``.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if a.shape != b.shape:
        raise ValueError(f"box arrays differ in shape: {a.shape} vs {b.shape}")
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    out = np.zeros(len(a))
    ok = union > 0
    out[ok] = inter[ok] / union[ok]
    return out


def rec_accuracy(pred_boxes: np.ndarray, target_boxes: np.ndarray, threshold: float = 0.5) -> float:
    """REC Acc@threshold: share of targets whose predicted box has IoU >= threshold; NaN if none.

    Args:
        pred_boxes: ``(N, 4)`` ``[x, y, w, h]``; an all-zero row (no prediction) never counts.
        target_boxes: ``(N, 4)`` ``[x, y, w, h]``.
    """
    if len(target_boxes) == 0:
        return float("nan")
    return float(np.mean(box_iou_xywh(pred_boxes, target_boxes) >= threshold))
