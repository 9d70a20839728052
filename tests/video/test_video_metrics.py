"""J, F and R on hand-made cases, and F against a direct transcription of DAVIS's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from segllm.eval.video_metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_tolerance,
    frame_scores,
    region_similarity,
    robustness,
)


def davis_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS's f_measure step by step: seg2bmap, dilation by skimage's disk, matched counts."""
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(pred.shape))
    r = int(radius)
    ys, xs = np.mgrid[-r:r + 1, -r:r + 1]
    disk = xs ** 2 + ys ** 2 <= radius ** 2
    fg, gt_b = boundary_map(pred), boundary_map(gt)
    fg_dil = binary_dilation(fg, structure=disk)
    gt_dil = binary_dilation(gt_b, structure=disk)
    n_fg, n_gt = fg.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        p, rc = (fg & gt_dil).sum() / n_fg, (gt_b & fg_dil).sum() / n_gt
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def half_plane(width_px: int, size: int = 100) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[:, :width_px] = True
    return m


def test_identical_masks_score_one():
    m = half_plane(40)
    assert region_similarity(m, m) == 1.0
    assert boundary_f_measure(m, m) == 1.0


def test_empty_against_empty_scores_one():
    empty = np.zeros((30, 40), dtype=bool)
    scores = frame_scores(empty, empty, foreground=empty)
    assert (scores.j, scores.f, scores.r) == (1.0, 1.0, 1.0)


def test_empty_prediction_of_a_present_object_scores_zero():
    gt = half_plane(40)
    empty = np.zeros_like(gt)
    assert region_similarity(empty, gt) == 0.0
    assert boundary_f_measure(empty, gt) == 0.0
    assert boundary_f_measure(gt, empty) == 0.0


def test_tolerance_is_ceil_of_bound_th_times_diagonal():
    assert boundary_tolerance((100, 100)) == 2.0          # ceil(0.008 * 141.42) = ceil(1.13)
    assert boundary_tolerance((480, 854)) == 8.0          # ceil(0.008 * 979.6) = ceil(7.84)
    assert boundary_tolerance((480, 854), bound_th=3) == 3.0


@pytest.mark.parametrize("shift, expected_f", [(1, 1.0), (2, 1.0), (3, 0.0), (10, 0.0)])
def test_boundary_shift_within_and_beyond_the_tolerance(shift, expected_f):
    # the boundary of a half plane is one column; 100x100 gives a 2-pixel tolerance
    gt, pred = half_plane(50), half_plane(50 + shift)
    assert boundary_f_measure(pred, gt) == expected_f
    assert region_similarity(pred, gt) == pytest.approx(50 / (50 + shift))


def test_partly_matched_boundary():
    # a square moved 3 px right: its vertical sides miss (3 > 2), most of the top and bottom match
    gt = np.zeros((100, 100), dtype=bool)
    gt[30:60, 30:60] = True
    pred = np.roll(gt, 3, axis=1)
    f = boundary_f_measure(pred, gt)
    assert 0.5 < f < 1.0
    assert f == pytest.approx(davis_f(pred, gt))


def test_f_matches_davis_on_random_masks():
    rng = np.random.default_rng(0)
    for trial in range(25):
        h, w = rng.integers(8, 90, size=2)
        base = rng.random((h, w)) < 0.5
        pred = binary_dilation(base, iterations=int(rng.integers(0, 3)))
        gt = binary_dilation(rng.random((h, w)) < 0.3, iterations=int(rng.integers(0, 3)))
        th = [0.008, 0.05, 2][trial % 3]
        assert boundary_f_measure(pred, gt, th) == pytest.approx(davis_f(pred, gt, th)), trial


def test_boundary_map_follows_seg2bmap():
    m = np.zeros((5, 6), dtype=bool)
    m[1:3, 1:4] = True
    b = boundary_map(m)
    # the pixel left of / above the object differs from its right / lower neighbour
    assert b[0, 0] and b[1, 0] and b[0, 3]
    # interior pixels whose right, lower and lower-right neighbours are inside are not boundary
    assert not b[1, 1]
    assert b[2, 3] and b[1, 3]
    assert not b[-1, -1]


def test_robustness_counts_false_positives_against_the_foreground():
    gt = np.zeros((10, 10), dtype=bool)
    gt[0, :10] = True                      # 10 pixels
    foreground = np.zeros_like(gt)
    foreground[0:2, :] = True              # 20 pixels
    pred = gt.copy()
    pred[5, :5] = True                     # 5 false positives
    assert robustness(pred, gt, foreground) == pytest.approx(1 - 5 / 20)
    pred[6:, :] = True                     # 45 false positives: clipped at 0
    assert robustness(pred, gt, foreground) == 0.0
    assert robustness(gt, gt, foreground) == pytest.approx(1.0)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differs"):
        region_similarity(np.zeros((3, 4)), np.zeros((4, 3)))
