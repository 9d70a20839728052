"""Metrics for the query-meld decoder's closed-set tasks: mask (and box) AP, panoptic quality, semantic mIoU.

Inputs are per-image dicts with COCO RLE masks (any JSON spelling of ``segllm.masks.to_pycoco``) and a
``category`` that is a name (the unified record's ``text``) or an integer id:

- ground truth: ``{"id": str, "size": [h, w], "segments": [{"category", "rle", "bbox"?, "iscrowd"?}]}``
  (optional per image: ``"void": rle``, pixels that count for nothing in PQ);
- predictions: ``{image id: [{"category", "rle", "score", "bbox"?}]}``.

Definitions:

- **AP** (``coco_ap``): pycocotools COCOeval, ``iou_type="segm"`` on masks or ``"bbox"`` on boxes;
  returns AP (0.50:0.95), AP50 and AP75 (``stats[0:3]``), 100 detections per image, and the
  precision-recall curves behind them (mean over categories, all areas).
- **PQ** (``panoptic_quality``, Kirillov et al., as panopticapi): per category, a predicted and a
  ground-truth segment match when IoU > 0.5 (unique for non-overlapping segments); the union
  leaves out the predicted pixels on void; an unmatched prediction lying more than half on void
  (or on an ``iscrowd`` region of its category) is not a false positive.
  PQ_c = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ_c = sum(IoU) / TP, RQ_c = TP / (TP + FP/2 + FN/2);
  PQ, SQ, RQ are means over categories that occur (TP + FP + FN > 0).
- **semantic mIoU** (``semantic_miou``): per class, intersection and union summed over all pixels
  of the set (label 255 ignored), IoU = I / U; the mean over classes whose union is not empty.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from segllm import masks as rle_ops


def _category_ids(gt_images: Sequence[dict], predictions: Mapping[str, Sequence[dict]]) -> dict:
    names = []
    for img in gt_images:
        names += [s["category"] for s in img["segments"]]
    for segs in predictions.values():
        names += [s["category"] for s in segs]
    return {name: i for i, name in enumerate(sorted(set(names), key=str), start=1)}


def coco_ap(gt_images: Sequence[dict], predictions: Mapping[str, Sequence[dict]], iou_type: str = "segm") -> dict:
    """COCO AP, AP50, AP75 of ``predictions`` against ``gt_images`` (see module docstring).

    Returns ``{"ap", "ap50", "ap75", "iou_type", "pr_curve"}``; NaN when there is no ground
    truth, 0 when no predictions. ``pr_curve``: COCOeval's 101 recall points and the precision
    at each, at IoU 0.5, at 0.75 and averaged over the ten thresholds (``None`` where no
    category reaches that recall); empty without ground truth or predictions.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    cat_ids = _category_ids(gt_images, predictions)
    dataset = {"images": [], "annotations": [], "categories": [{"id": i, "name": str(n)} for n, i in cat_ids.items()]}
    results = []
    for img_num, img in enumerate(gt_images, start=1):
        h, w = img["size"]
        dataset["images"].append({"id": img_num, "height": h, "width": w})
        for seg in img["segments"]:
            ann = {"id": len(dataset["annotations"]) + 1, "image_id": img_num,
                   "category_id": cat_ids[seg["category"]], "iscrowd": int(seg.get("iscrowd", 0))}
            if seg.get("rle") is not None:
                m = rle_ops.to_pycoco(seg["rle"])
                ann["segmentation"] = m
                ann["area"] = float(rle_ops.areas([m])[0])
                ann["bbox"] = seg.get("bbox") or rle_ops.boxes_xywh([m])[0].tolist()
            else:
                ann["bbox"] = list(seg["bbox"])
                ann["area"] = float(seg["bbox"][2] * seg["bbox"][3])
            dataset["annotations"].append(ann)
        for seg in predictions.get(img["id"], []):
            res = {"image_id": img_num, "category_id": cat_ids[seg["category"]], "score": float(seg["score"])}
            if iou_type == "segm":
                res["segmentation"] = rle_ops.to_pycoco(seg["rle"])
            else:
                res["bbox"] = list(seg["bbox"]) if seg.get("bbox") is not None else \
                    rle_ops.boxes_xywh([rle_ops.to_pycoco(seg["rle"])])[0].tolist()
            results.append(res)
    nan = float("nan")
    if not dataset["annotations"]:
        return {"ap": nan, "ap50": nan, "ap75": nan, "iou_type": iou_type, "pr_curve": {}}
    if not results:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "iou_type": iou_type, "pr_curve": {}}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50, ap75 = (max(float(v), 0.0) for v in evaluator.stats[:3])
    return {"ap": ap, "ap50": ap50, "ap75": ap75, "iou_type": iou_type,
            "pr_curve": _pr_curve(evaluator)}


def _pr_curve(evaluator) -> dict:
    """Precision at COCOeval's recall points, mean over categories (-1: category without
    ground truth, left out), all areas, 100 detections."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU thresholds, recall, category]
    valid = precision > -1
    with np.errstate(invalid="ignore"):
        per_iou = np.where(valid.any(2), np.where(valid, precision, 0).sum(2) / valid.sum(2), np.nan)
    thresholds = list(np.round(evaluator.params.iouThrs, 2))

    def listed(row: np.ndarray) -> list:
        return [None if not np.isfinite(v) else float(v) for v in row]

    return {"recall": [float(r) for r in evaluator.params.recThrs],
            "iou50": listed(per_iou[thresholds.index(0.5)]),
            "iou75": listed(per_iou[thresholds.index(0.75)]),
            "mean": listed(_mean_over_rows(per_iou))}


def _mean_over_rows(values: np.ndarray) -> np.ndarray:
    """Column means of the finite entries; NaN for a column with none."""
    finite = np.isfinite(values)
    counts = finite.sum(0)
    sums = np.where(finite, values, 0.0).sum(0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def panoptic_quality(gt_images: Sequence[dict], predictions: Mapping[str, Sequence[dict]]) -> dict:
    """PQ, SQ, RQ overall and per category (see module docstring).

    Returns ``{"pq", "sq", "rq", "per_category": {name: {"pq", "sq", "rq", "tp", "fp", "fn"}}}``.
    """
    iou_sum: dict = defaultdict(float)
    tp: dict = defaultdict(int)
    fp: dict = defaultdict(int)
    fn: dict = defaultdict(int)
    for img in gt_images:
        h, w = img["size"]
        gts = img["segments"]
        preds = list(predictions.get(img["id"], []))
        gt_rles = [rle_ops.to_pycoco(s["rle"]) for s in gts]
        pred_rles = [rle_ops.to_pycoco(s["rle"]) for s in preds]
        void = rle_ops.to_pycoco(img["void"]) if img.get("void") is not None else rle_ops.empty_rle(h, w)
        pred_area = rle_ops.areas(pred_rles)
        pred_void = rle_ops.areas(rle_ops.intersections(pred_rles, [void] * len(pred_rles)))
        gt_area = rle_ops.areas(gt_rles)
        matched_gt, matched_pred = set(), set()
        for g, gseg in enumerate(gts):
            if gseg.get("iscrowd", 0):
                continue
            for p, pseg in enumerate(preds):
                if p in matched_pred or pseg["category"] != gseg["category"]:
                    continue
                inter = rle_ops.areas(rle_ops.intersections([gt_rles[g]], [pred_rles[p]]))[0]
                union = pred_area[p] + gt_area[g] - inter - pred_void[p]
                iou = inter / union if union > 0 else 0.0
                if iou > 0.5:
                    matched_gt.add(g)
                    matched_pred.add(p)
                    tp[gseg["category"]] += 1
                    iou_sum[gseg["category"]] += iou
                    break
        for g, gseg in enumerate(gts):
            if g not in matched_gt and not gseg.get("iscrowd", 0):
                fn[gseg["category"]] += 1
        crowd_by_cat: dict = defaultdict(list)
        for g, gseg in enumerate(gts):
            if gseg.get("iscrowd", 0):
                crowd_by_cat[gseg["category"]].append(gt_rles[g])
        for p, pseg in enumerate(preds):
            if p in matched_pred or pred_area[p] == 0:
                continue
            ignored = pred_void[p]
            crowd = crowd_by_cat.get(pseg["category"])
            if crowd:
                crowd_union = rle_ops.union_of(crowd, h, w)
                ignored += rle_ops.areas(rle_ops.intersections([pred_rles[p]], [crowd_union]))[0]
            if ignored / pred_area[p] > 0.5:
                continue
            fp[pseg["category"]] += 1
    per_category = {}
    for cat in sorted(set(tp) | set(fp) | set(fn), key=str):
        denom = tp[cat] + 0.5 * fp[cat] + 0.5 * fn[cat]
        if denom == 0:
            continue
        per_category[str(cat)] = {
            "pq": iou_sum[cat] / denom,
            "sq": iou_sum[cat] / tp[cat] if tp[cat] else 0.0,
            "rq": tp[cat] / denom,
            "tp": tp[cat], "fp": fp[cat], "fn": fn[cat],
        }
    if not per_category:
        nan = float("nan")
        return {"pq": nan, "sq": nan, "rq": nan, "per_category": {}}
    return {key: float(np.mean([c[key] for c in per_category.values()])) for key in ("pq", "sq", "rq")} | {
        "per_category": per_category}


def semantic_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """``(C, C)`` int64 confusion counts (rows: target class, columns: predicted class) of one label map pair.

    Args:
        pred, target: ``(H, W)`` integer class maps; target pixels equal to ``ignore_label`` are
            skipped, as are predictions outside ``[0, num_classes)``.
    """
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"prediction and target differ in size: {pred.size} vs {target.size}")
    keep = (target != ignore_label) & (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    codes = target[keep] * num_classes + pred[keep]
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def semantic_miou(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore_label: int = 255) -> dict:
    """Semantic-segmentation mIoU over a set of ``(pred, target)`` ``(H, W)`` label maps.

    Returns ``{"miou", "pixel_accuracy", "per_class_iou": [float | NaN] * C}``; classes whose
    union is empty are NaN and left out of the mean.
    """
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in pairs:
        confusion += semantic_confusion(pred, target, num_classes, ignore_label)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(inter.sum() / total) if total else float("nan"),
        "per_class_iou": [float(v) for v in iou],
    }


def label_map_from_segments(size: tuple[int, int], segments: Sequence[dict], class_index: Mapping, background: int = 0) -> np.ndarray:
    """``(H, W)`` int64 class map painted from RLE segments in order (later ones on top).

    ``class_index`` maps a segment's ``category`` to its class number.
    """
    out = np.full(size, background, dtype=np.int64)
    for seg in segments:
        out[rle_ops.decode(seg["rle"])] = class_index[seg["category"]]
    return out
