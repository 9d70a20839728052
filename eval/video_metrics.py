"""Per-frame video segmentation metrics: J (region IoU), F (boundary F-measure), VISA's R.

Definitions (the DAVIS toolkit ``davis2017-evaluation``, ``davis2017/metrics.py``, which
VISA's ``tools/metrics.py`` copies; our code is written from those definitions):

- **J** = ``|P & G| / |P | G|``; a frame where both masks are empty scores 1.
- **F**: each mask becomes a one-pixel boundary map (``boundary_map``: a pixel is on the
  boundary when it differs from its right, lower or lower-right neighbour, with DAVIS's rules
  for the last row and column). The tolerance is ``bound_pix = ceil(bound_th * diagonal)``
  pixels (``bound_th`` 0.008 of the frame diagonal ``hypot(H, W)``; a ``bound_th >= 1`` is a
  pixel count). A boundary pixel of one mask is matched when a boundary pixel of the other lies
  inside the disk of radius ``bound_pix`` around it (skimage's ``disk``: integer offsets with
  ``dx^2 + dy^2 <= r^2``). Precision = matched prediction pixels / prediction boundary pixels,
  recall = matched ground-truth pixels / ground-truth boundary pixels, F = their harmonic
  mean. No prediction boundary: precision 1, recall 0 (F 0) unless the ground truth has none
  either (F 1); a prediction boundary with no ground-truth one: precision 0 (F 0).
- **R** (VISA's robustness, ``get_r2vos_robustness``) = ``max(0, 1 - |P & ~G| / (|FG| + 1e-6))``
  where ``FG`` is the frame's foreground: every annotated object of the video. It penalises
  predicted pixels outside the target relative to how much foreground there is.

DAVIS dilates both boundary maps with the disk over the whole frame (OpenCV) and
intersects. We crop both masks to the box around them (no boundary pixel lies outside it, and
DAVIS's last-row and last-column rules give the same pixels there), then ask a k-d tree
(``scipy.spatial.cKDTree``) for each boundary pixel's nearest boundary pixel of the other mask
and test ``distance <= bound_pix``. That marks the same pixels as the dilation (a disk of
radius r on the integer grid holds exactly the offsets at Euclidean distance <= r) at about a
tenth of the cost (``bench/bench_video.py``); ``tests/video/test_video_metrics.py`` checks the
two against each other on random masks.

An expression's J, F and R are the means over its frames; J&F is ``(J + F) / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOUND_TH = 0.008
ROBUSTNESS_EPS = 1e-6  # VISA's denominator guard


@dataclass(frozen=True)
class FrameScores:
    """One frame's J, F and R (R is None without a foreground mask)."""

    j: float
    f: float
    r: float | None


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two binary masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS's one-pixel boundary of a binary mask (``seg2bmap``), offset half a pixel towards
    the origin: a pixel differing from its right, lower or lower-right neighbour."""
    seg = np.asarray(mask, dtype=bool)
    right = np.zeros_like(seg)
    below = np.zeros_like(seg)
    diagonal = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diagonal[:-1, :-1] = seg[1:, 1:]
    edges = (seg ^ right) | (seg ^ below) | (seg ^ diagonal)
    # the last row and column compare only along themselves (the neighbours beyond are absent)
    edges[-1, :] = seg[-1, :] ^ right[-1, :]
    edges[:, -1] = seg[:, -1] ^ below[:, -1]
    edges[-1, -1] = False
    return edges


def boundary_tolerance(shape: tuple[int, int], bound_th: float = BOUND_TH) -> float:
    """The matching radius in pixels: ``bound_th`` itself when >= 1, else
    ``ceil(bound_th * hypot(H, W))``."""
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(*shape)))


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F: the boundary F-measure of DAVIS (module docstring)."""
    pred, gt = _pair(pred, gt)
    radius = boundary_tolerance(pred.shape, bound_th)  # from the whole frame's diagonal
    box = _box_around(pred | gt)
    if box is None:  # both empty: no boundary on either side
        return 1.0
    pred_edges, gt_edges = np.argwhere(boundary_map(pred[box])), np.argwhere(boundary_map(gt[box]))
    if len(pred_edges) == 0 and len(gt_edges) == 0:
        return 1.0
    if len(pred_edges) == 0 or len(gt_edges) == 0:
        return 0.0
    precision = _matched_fraction(pred_edges, gt_edges, radius)
    recall = _matched_fraction(gt_edges, pred_edges, radius)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def robustness(pred: np.ndarray, gt: np.ndarray, foreground: np.ndarray) -> float:
    """R: VISA's robustness of one frame (module docstring)."""
    pred, gt = _pair(pred, gt)
    foreground = np.asarray(foreground, dtype=bool)
    if foreground.shape != pred.shape:
        raise ValueError(f"foreground shape {foreground.shape} differs from mask shape {pred.shape}")
    false_positive = np.count_nonzero(pred & ~gt)
    return max(0.0, 1.0 - false_positive / (np.count_nonzero(foreground) + ROBUSTNESS_EPS))


def frame_scores(pred: np.ndarray, gt: np.ndarray, foreground: np.ndarray | None = None,
                 bound_th: float = BOUND_TH) -> FrameScores:
    """J, F and (with a foreground mask) R of one frame."""
    r = robustness(pred, gt, foreground) if foreground is not None else None
    return FrameScores(j=region_similarity(pred, gt), f=boundary_f_measure(pred, gt, bound_th),
                       r=r)


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if pred.ndim != 2:
        raise ValueError(f"expected (H, W) masks, got shape {pred.shape}")
    return pred, gt


def _box_around(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The mask's bounding box grown by one pixel (the boundary sits half a pixel towards the
    origin, and one empty row and column past the object keep DAVIS's last-row rules exact)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return (slice(max(0, rows[0] - 1), min(h, rows[-1] + 2)),
            slice(max(0, cols[0] - 1), min(w, cols[-1] + 2)))


def _matched_fraction(points: np.ndarray, others: np.ndarray, radius: float) -> float:
    """Fraction of ``points`` (pixel coordinates) with one of ``others`` within ``radius``."""
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(others).query(points, distance_upper_bound=radius + 0.5)
    return float(np.count_nonzero(distances <= radius)) / len(points)
