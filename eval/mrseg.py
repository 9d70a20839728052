"""Round-task metrics (MRSeg, referring, reasoning segmentation): pairing, then cIoU / gIoU / mIoU / Acc@0.5.

Pairing of a round's predicted masks with its targets:

- ``"order"`` (default, docs/architecture.md "Record formats": the i-th ``[SEG]`` is the i-th target): prediction i goes
  with target i. LISA zips the two lists, silently dropping the longer list's tail; we keep it:
  a target with no prediction is paired with an empty mask (IoU 0), and a prediction with no
  target (a duplicate, or any mask in a "no such object" round) with an empty target (IoU 0,
  and its pixels enter the cIoU union). A round with no targets and no predictions is one
  empty-vs-empty pair: gIoU counts it 1 (LISA's no-object case), mIoU leaves it out.
- ``"hungarian"``: the same, after pairing predictions and targets one-to-one by maximum total
  IoU within the round (for rounds whose targets have no natural order).

REC Acc@0.5 uses the pairs that have a target, against the target's annotated box (a record's
``ann_bbox``; its ``bbox`` otherwise): the prediction's decoder box when the prediction file has
``boxes`` and ``use_decoder_boxes`` is set, otherwise the tight box of the predicted mask; a
missing or empty prediction never counts.

A target whose mask is a filled box (``box_derived``, Visual Genome) is not scored as a mask:
its pair is left out of cIoU / gIoU / mIoU (``n_box_only`` counts them) and still counts for
REC Acc@0.5.

Results are reported overall, per round index and per round type, for one mode (one predictions
file). ``evaluate_rounds`` returns plain dicts ready for JSON.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from segllm import masks as rle_ops

from . import mask_metrics as mm

PAIRINGS = ("order", "hungarian")


@dataclass
class _Pairs:
    """Flat lists over every (prediction, target) pair of a data set."""

    preds: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    ignores: list = field(default_factory=list)
    pred_boxes: list = field(default_factory=list)
    target_boxes: list = field(default_factory=list)
    has_target: list = field(default_factory=list)
    has_pred: list = field(default_factory=list)
    mask_scored: list = field(default_factory=list)
    round_index: list = field(default_factory=list)
    round_type: list = field(default_factory=list)


def _order_pairs(n_pred: int, n_target: int) -> list[tuple[int | None, int | None]]:
    """Index pairs in order; the shorter side is padded with ``None``; one (None, None) if both empty."""
    n = max(n_pred, n_target, 1)
    return [(i if i < n_pred else None, i if i < n_target else None) for i in range(n)]


def _hungarian_pairs(preds: Sequence[dict], targets: Sequence[dict]) -> list[tuple[int | None, int | None]]:
    """One-to-one pairs by maximum total IoU; leftovers paired with ``None``."""
    if not preds or not targets:
        return _order_pairs(len(preds), len(targets))
    from scipy.optimize import linear_sum_assignment

    iou = rle_ops.iou_matrix(preds, targets)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    pairs: list[tuple[int | None, int | None]] = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True)]
    pairs += [(i, None) for i in range(len(preds)) if i not in set(rows.tolist())]
    pairs += [(None, j) for j in range(len(targets)) if j not in set(cols.tolist())]
    return pairs


def _collect_pairs(gt_records: Sequence[dict], predictions: dict[str, dict], pairing: str, use_decoder_boxes: bool) -> _Pairs:
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    out = _Pairs()
    for gt in gt_records:
        h, w = gt["size"]
        empty = rle_ops.empty_rle(h, w)
        pred_rounds = predictions[gt["id"]]["rounds"]
        for gt_round, pred_round in zip(gt["rounds"], pred_rounds, strict=True):
            targets = gt_round["targets"]
            masks = pred_round["masks"]
            if pairing == "order":
                index_pairs = _order_pairs(len(masks), len(targets))
            else:
                index_pairs = _hungarian_pairs(masks, [t["rle"] for t in targets])
            decoder_boxes = pred_round["boxes"] if use_decoder_boxes else None
            for p_i, t_i in index_pairs:
                out.preds.append(empty if p_i is None else masks[p_i])
                target = None if t_i is None else targets[t_i]
                out.targets.append(empty if target is None else target["rle"])
                out.ignores.append(None if target is None else target["ignore"])
                out.target_boxes.append([0.0] * 4 if target is None else target["bbox"])
                out.pred_boxes.append(None if p_i is None or decoder_boxes is None else decoder_boxes[p_i])
                out.has_target.append(target is not None)
                out.has_pred.append(p_i is not None)
                out.mask_scored.append(target is None or not target.get("box_derived", False))
                out.round_index.append(gt_round["index"])
                out.round_type.append(gt_round["type"])
    return out


def _pred_boxes(pairs: _Pairs) -> np.ndarray:
    """``(N, 4)`` predicted boxes: decoder boxes where given, the masks' tight boxes elsewhere."""
    mask_boxes = rle_ops.boxes_xywh(pairs.preds)
    for i, box in enumerate(pairs.pred_boxes):
        if box is not None:
            mask_boxes[i] = box
    return mask_boxes


def _summary(inter: np.ndarray, union: np.ndarray, correct: np.ndarray, has_target: np.ndarray,
             mask_scored: np.ndarray) -> dict:
    return {
        "ciou": mm.ciou(inter[mask_scored], union[mask_scored]),
        "giou": mm.giou(inter[mask_scored], union[mask_scored]),
        "miou": mm.miou(inter[mask_scored], union[mask_scored]),
        "rec_acc50": float(np.mean(correct[has_target])) if np.any(has_target) else float("nan"),
        "n_pairs": int(np.sum(mask_scored)),
        "n_targets": int(np.sum(has_target)),
        "n_box_only": int(np.sum(~mask_scored)),
    }


def evaluate_rounds(
    gt_records: Sequence[dict],
    predictions: dict[str, dict],
    *,
    pairing: str = "order",
    use_decoder_boxes: bool = True,
) -> dict:
    """Metrics of one prediction set (one mode) against parsed ground truth.

    Args:
        gt_records: from ``predictions.parse_round_ground_truth``.
        predictions: by id, from ``predictions.parse_round_predictions``.
        pairing: ``"order"`` or ``"hungarian"`` (see module docstring).
        use_decoder_boxes: use predicted ``boxes`` for Acc@0.5 when the file has them.

    Returns:
        ``{"pairing", "overall": {...}, "per_round": {"0": {...}}, "per_type": {"referring": {...}}}``
        where each ``{...}`` holds ciou, giou, miou, rec_acc50, n_pairs, n_targets.
    """
    pairs = _collect_pairs(gt_records, predictions, pairing, use_decoder_boxes)
    inter, union = mm.intersection_union_rle(pairs.preds, pairs.targets, pairs.ignores)
    has_target = np.asarray(pairs.has_target, dtype=bool)
    has_pred = np.asarray(pairs.has_pred, dtype=bool)
    mask_scored = np.asarray(pairs.mask_scored, dtype=bool)
    correct = np.zeros(len(inter), dtype=bool)
    if len(inter):
        box_iou = mm.box_iou_xywh(_pred_boxes(pairs), np.asarray(pairs.target_boxes, dtype=np.float64))
        correct = has_pred & has_target & (box_iou >= 0.5)

    def group(keys: list) -> dict:
        members: dict = defaultdict(list)
        for i, key in enumerate(keys):
            members[key].append(i)
        return {str(k): _summary(inter[idx], union[idx], correct[idx], has_target[idx], mask_scored[idx])
                for k, idx in sorted(members.items())}

    return {
        "pairing": pairing,
        "overall": _summary(inter, union, correct, has_target, mask_scored),
        "per_round": group(pairs.round_index),
        "per_type": group(pairs.round_type),
        "no_target": no_target_rounds(gt_records, predictions),
    }


def no_target_rounds(gt_records: Sequence[dict], predictions: dict[str, dict]) -> dict:
    """How often a "no such object" round (no target) was answered without any mask.

    Returns ``{"rounds": n, "without_mask": k, "rate": k / n}`` (rate NaN when n is 0).
    """
    rounds = without_mask = 0
    for gt in gt_records:
        for gt_round, pred_round in zip(gt["rounds"], predictions[gt["id"]]["rounds"], strict=True):
            if not gt_round["targets"]:
                rounds += 1
                without_mask += not pred_round["masks"]
    return {"rounds": rounds, "without_mask": without_mask,
            "rate": without_mask / rounds if rounds else float("nan")}
