"""Query-meld tasks: COCO AP by category, panoptic quality, semantic mIoU."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.eval import segmentation_metrics as sm

from .helpers import rect, reference_cocoeval_stats, rle

H, W = 10, 100
cols = lambda a, b: rect(H, W, 0, H, a, b)  # noqa: E731


def test_coco_ap_perfect_masks_and_boxes():
    gt = [{"id": "i", "size": [H, W], "segments": [{"category": "apple", "rle": rle(cols(0, 30))},
                                                    {"category": "cat", "rle": rle(cols(50, 90))}]}]
    preds = {"i": [{"category": "apple", "rle": rle(cols(0, 30)), "score": 0.9},
                   {"category": "cat", "rle": rle(cols(50, 90)), "score": 0.8}]}
    got = sm.coco_ap(gt, preds)
    assert (got["ap"], got["ap50"], got["ap75"], got["iou_type"]) == (pytest.approx(1.0),) * 3 + ("segm",)
    assert sm.coco_ap(gt, preds, iou_type="bbox")["ap"] == pytest.approx(1.0)
    assert sm.coco_ap(gt, {"i": []})["ap"] == 0.0


def test_coco_ap_equals_cocoeval_with_two_categories():
    rng = np.random.default_rng(1)
    gt, preds = [], {}
    dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "cat"}]}
    results = []
    for i in range(3):
        starts = rng.integers(0, 70, 2)
        gt_segs = [("apple", cols(starts[0], starts[0] + 25)), ("cat", cols(starts[1], starts[1] + 30))]
        pred_segs = [(c, cols(max(0, s + d), min(W, s + d + 25)), float(rng.random()))
                     for (c, _), s, d in zip(gt_segs, starts, rng.integers(-10, 10, 2), strict=True)]
        pred_segs.append(("cat", cols(0, 100), 0.3))
        gt.append({"id": f"i{i}", "size": [H, W], "segments": [{"category": c, "rle": rle(m)} for c, m in gt_segs]})
        preds[f"i{i}"] = [{"category": c, "rle": rle(m), "score": s} for c, m, s in pred_segs]
        dataset["images"].append({"id": i + 1, "height": H, "width": W})
        for c, m in gt_segs:
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": i + 1,
                                           "category_id": 1 if c == "apple" else 2, "iscrowd": 0,
                                           "segmentation": rle(m), "area": float(m.sum()), "bbox": [0, 0, 1, 1]})
        results += [{"image_id": i + 1, "category_id": 1 if c == "apple" else 2, "segmentation": rle(m), "score": s}
                    for c, m, s in pred_segs]
    stats = reference_cocoeval_stats(dataset, results)
    got = sm.coco_ap(gt, preds)
    assert (got["ap"], got["ap50"], got["ap75"]) == pytest.approx(tuple(stats[:3]), abs=1e-12)


def test_panoptic_quality_hand_case():
    gt = [{"id": "i", "size": [H, W], "segments": [{"category": "a", "rle": rle(cols(0, 40))},
                                                    {"category": "b", "rle": rle(cols(40, 100))}]}]
    preds = {"i": [{"category": "a", "rle": rle(cols(0, 30))},     # IoU 0.75: TP
                   {"category": "c", "rle": rle(cols(30, 60))},    # no c in the ground truth: FP
                   {"category": "b", "rle": rle(cols(60, 100))}]}  # IoU 40/60: TP
    pq = sm.panoptic_quality(gt, preds)
    assert pq["per_category"]["a"] == {"pq": 0.75, "sq": 0.75, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0}
    assert pq["per_category"]["b"]["pq"] == pytest.approx(40 / 60)
    assert pq["per_category"]["c"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 0}
    assert pq["pq"] == pytest.approx((0.75 + 40 / 60 + 0) / 3)
    assert pq["rq"] == pytest.approx(2 / 3)


def test_panoptic_quality_void():
    gt = [{"id": "i", "size": [H, W], "void": rle(cols(30, 40)),
           "segments": [{"category": "a", "rle": rle(cols(0, 30))}, {"category": "b", "rle": rle(cols(40, 100))}]}]
    preds = {"i": [{"category": "a", "rle": rle(cols(0, 35))},    # 5 px of it on void: IoU 30/30
                   {"category": "c", "rle": rle(cols(35, 40))}]}  # all on void: not a false positive
    pq = sm.panoptic_quality(gt, preds)
    assert pq["per_category"]["a"]["pq"] == 1.0
    assert pq["per_category"]["b"]["fn"] == 1
    assert "c" not in pq["per_category"]
    assert pq["pq"] == pytest.approx(0.5)


def test_semantic_miou_with_ignore():
    target = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    result = sm.semantic_miou([(pred, target)], num_classes=4)
    # class 0: I1 U3; class 1: I2 U3; class 2: I0 U1 (the 255 pixel is skipped); class 3 absent
    assert result["per_class_iou"][:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert np.isnan(result["per_class_iou"][3])
    assert result["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert result["pixel_accuracy"] == pytest.approx(3 / 5)
    # summing confusion over images equals one big image
    doubled = sm.semantic_miou([(pred, target), (pred, target)], num_classes=4)
    assert doubled["miou"] == pytest.approx(result["miou"])


def test_label_map_from_segments():
    segs = [{"category": "sky", "rle": rle(cols(0, 60))}, {"category": "tree", "rle": rle(cols(50, 70))}]
    labels = sm.label_map_from_segments((H, W), segs, {"sky": 1, "tree": 2})
    assert np.bincount(labels.ravel()).tolist() == [30 * H, 50 * H, 20 * H]
