"""cIoU / gIoU / mIoU and box accuracy on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segllm.eval import mask_metrics as mm
from segllm.eval import rle as rle_ops

from .helpers import rect, rle


def lisa_style_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """The anchor's definition, spelled as a 2-bin histogram: the prediction takes label 255 where
    the target has it, and only values 0 and 1 are counted."""
    out = pred.astype(np.int64).ravel().copy()
    tgt = target.astype(np.int64).ravel()
    out[tgt == 255] = 255
    agree = out[out == tgt]
    hist = lambda x: np.histogram(x, bins=2, range=(0, 1))[0]  # noqa: E731  (255 falls outside)
    inter = hist(agree)[1]
    union = hist(out)[1] + hist(tgt)[1] - inter
    return int(inter), int(union)


def test_dense_counts_hand_case():
    # prediction: rows 0-1, cols 0-1 (4 px); target: rows 1-2, cols 0-2 (6 px); overlap row 1, cols 0-1 (2 px)
    pred = rect(4, 4, 0, 2, 0, 2)
    target = rect(4, 4, 1, 3, 0, 3).astype(np.uint8)
    inter, union = mm.intersection_union_dense(pred, target)
    assert inter.tolist() == [2] and union.tolist() == [8]
    assert mm.giou(inter, union) == pytest.approx(0.25)


def test_255_pixels_are_ignored():
    pred = rect(4, 4, 0, 4, 0, 4)  # everything predicted: 16 px
    target = np.zeros((4, 4), np.uint8)
    target[0, :] = 1  # 4 foreground px
    target[3, :] = 255  # 4 ignored px: neither in the prediction's nor the union's count
    inter, union = mm.intersection_union_dense(pred, target)
    assert (inter[0], union[0]) == (4, 12)
    assert (inter[0], union[0]) == lisa_style_counts(pred, target)


def test_empty_prediction_and_empty_ground_truth():
    empty = np.zeros((5, 5), bool)
    full = rect(5, 5, 0, 5, 0, 5)
    # (empty pred, empty gt), (empty pred, gt 25 px), (pred 25 px, empty gt)
    pred = np.stack([empty, empty, full])
    target = np.stack([empty, full, empty]).astype(np.uint8)
    inter, union = mm.intersection_union_dense(pred, target)
    assert inter.tolist() == [0, 0, 0] and union.tolist() == [0, 25, 25]
    assert mm.per_target_iou(inter, union).tolist() == [1.0, 0.0, 0.0]
    assert mm.giou(inter, union) == pytest.approx(1 / 3)  # no-object target counts 1 (LISA)
    assert mm.miou(inter, union) == 0.0  # the empty pair is left out
    assert mm.ciou(inter, union) == 0.0
    # only empty-vs-empty: LISA's cIoU is 0 (sum U + 1e-10), gIoU 1, mIoU undefined
    assert mm.ciou(inter[:1], union[:1]) == 0.0
    assert mm.giou(inter[:1], union[:1]) == 1.0
    assert math.isnan(mm.miou(inter[:1], union[:1]))
    assert math.isnan(mm.giou(inter[:0], union[:0]))


def test_ciou_weights_by_size_giou_by_target():
    inter = np.array([2, 90])
    union = np.array([8, 100])
    assert mm.ciou(inter, union) == pytest.approx(92 / 108)
    assert mm.giou(inter, union) == pytest.approx((0.25 + 0.9) / 2)
    assert mm.miou(inter, union) == pytest.approx((0.25 + 0.9) / 2)


def test_rle_counts_equal_dense_counts_with_ignore():
    rng = np.random.default_rng(3)
    n, h, w = 12, 23, 31
    preds = rng.random((n, h, w)) < 0.4
    fg = rng.random((n, h, w)) < 0.4
    ignore = (rng.random((n, h, w)) < 0.2) & ~fg
    ignore[::3] = False  # some pairs have no ignored pixels at all
    target = fg.astype(np.uint8)
    target[ignore] = 255
    dense_i, dense_u = mm.intersection_union_dense(preds, target)
    rle_i, rle_u = mm.intersection_union_rle(
        [rle_ops.to_pycoco(rle(m)) for m in preds],
        [rle_ops.to_pycoco(rle(m)) for m in fg],
        [rle_ops.to_pycoco(rle(m)) if m.any() else None for m in ignore],
    )
    assert dense_i.tolist() == rle_i.tolist()
    assert dense_u.tolist() == rle_u.tolist()
    for k in range(n):
        assert (dense_i[k], dense_u[k]) == lisa_style_counts(preds[k], target[k])


def test_bool_target_is_the_same_as_labels():
    rng = np.random.default_rng(0)
    p = rng.random((3, 9, 9)) < 0.5
    t = rng.random((3, 9, 9)) < 0.5
    a = mm.intersection_union_dense(p, t)
    b = mm.intersection_union_dense(p, t.astype(np.uint8))
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        mm.intersection_union_dense(np.zeros((4, 4)), np.zeros((4, 5)))


def test_box_iou_and_rec_accuracy():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 10, 10], [1, 0, 10, 10], [0, 0, 10, 10]])
    ious = mm.box_iou_xywh(a, b)
    assert ious == pytest.approx([50 / 150, 90 / 110, 0.0])
    assert mm.rec_accuracy(a, b) == pytest.approx(1 / 3)
    # exactly 0.5 counts: [0,0,10,10] vs [0,0,10,5] has IoU 50/100
    assert mm.rec_accuracy(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 5]])) == 1.0
    assert math.isnan(mm.rec_accuracy(np.zeros((0, 4)), np.zeros((0, 4))))


def test_rle_helpers():
    m = rect(6, 7, 1, 3, 2, 6)
    r = rle_ops.to_pycoco(rle(m))
    assert rle_ops.areas([r]).tolist() == [8]
    assert rle_ops.boxes_xywh([r]).tolist() == [[2.0, 1.0, 4.0, 2.0]]
    assert np.array_equal(rle_ops.decode(rle(m)), m)
    assert rle_ops.areas([rle_ops.empty_rle(6, 7)]).tolist() == [0]
    # uncompressed counts (column-major runs) parse too: 6x7 image, first column all ones
    r2 = rle_ops.to_pycoco({"size": [6, 7], "counts": [0, 6, 36]})
    assert rle_ops.areas([r2]).tolist() == [6]
    # more than 255 objects in one batched call (pycocotools + numpy 2 overflow guard)
    assert rle_ops.areas([r] * 600).sum() == 8 * 600
    with pytest.raises(ValueError, match="size"):
        rle_ops.to_pycoco({"size": [6], "counts": "x"})
    with pytest.raises(ValueError, match="sum"):
        rle_ops.to_pycoco({"size": [2, 2], "counts": [1, 1]})
