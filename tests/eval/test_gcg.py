"""GCG: GLaMM's greedy matching vs Hungarian, mask recall, mIoU, AP50 against COCOeval."""

from __future__ import annotations

import numpy as np
import pytest

from segllm.eval import gcg
from segllm.eval import rle as rle_ops
from segllm.eval.text_similarity import FunctionSimilarity, cosine_matrix

from .helpers import rect, reference_cocoeval_stats, rle

H, W = 10, 100
cols = lambda a, b: rect(H, W, 0, H, a, b)  # noqa: E731
GT1, GT2 = cols(0, 60), cols(0, 40)
PRED_A, PRED_B = cols(0, 54), cols(10, 70)
SAME_TEXT = FunctionSimilarity(lambda a, b: float(a.lower() == b.lower()), "exact match")
ALWAYS = FunctionSimilarity(lambda a, b: 1.0, "always 1")


def image(masks, phrases):
    return {"masks": [rle_ops.to_pycoco(rle(m)) for m in masks], "phrases": phrases}


def test_parse_grounded_answer():
    caption, phrases = gcg.parse_grounded_answer("<p>A man</p> [SEG] holds <p> a bag</p> [SEG].")
    assert phrases == ["A man", "a bag"]
    assert caption == "A man holds a bag ."  # as GLaMM cleans it (the space before '.' stays)


def test_greedy_stops_at_first_inadmissible_pair():
    iou = np.array([[0.9, 0.0], [0.0, 0.8]])
    sim = np.array([[0.1, 0.0], [0.0, 0.9]])
    assert gcg.greedy_match_glamm(iou, sim) == []  # best IoU fails the text test: GLaMM stops
    assert gcg.hungarian_match(iou, sim) == [(1, 1)]
    # thresholds admit equality, as GLaMM's `< threshold -> stop`
    assert gcg.greedy_match_glamm(np.array([[0.5]]), np.array([[0.5]])) == [(0, 0)]


def test_greedy_and_hungarian_differ_on_masks():
    # IoU (gt x pred): GT1-A 54/60=0.9, GT1-B 50/70, GT2-A 40/54, GT2-B 30/70.
    scores = gcg.image_scores(image([GT1, GT2], ["x", "y"]), image([PRED_A, PRED_B], ["x", "y"]), ALWAYS)
    assert scores["greedy"]["tp"] == 1  # takes GT1-A (0.9), then GT2-B (0.43) fails
    assert scores["hungarian"]["tp"] == 2  # GT2-A + GT1-B = 1.455 > 1.329
    assert scores["greedy"]["miou"] == pytest.approx((0.9 + 30 / 70) / 2)
    assert scores["hungarian"]["miou"] == pytest.approx((40 / 54 + 50 / 70) / 2)
    summary = gcg.summarize_images([scores])
    assert summary["greedy"]["mask_recall"] == 0.5
    assert summary["hungarian"]["mask_recall"] == 1.0


def test_text_similarity_gates_recall():
    scores = gcg.image_scores(image([GT1], ["a man"]), image([GT1], ["a bag"]), SAME_TEXT)
    assert scores["greedy"]["tp"] == 0 and scores["greedy"]["miou"] == 1.0


def test_duplicate_and_extra_predictions():
    scores = gcg.image_scores(image([GT1], ["man"]), image([GT1, GT1, PRED_B], ["man", "man", "bag"]), SAME_TEXT)
    assert scores["greedy"]["tp"] == 1 and scores["hungarian"]["tp"] == 1
    assert scores["greedy"]["miou"] == 1.0  # unpaired predictions do not lower GLaMM's mIoU
    assert scores["n_pred"] == 3


def test_fewer_phrases_than_masks():
    # The mask without a phrase has similarity 0: when it holds the best IoU, greedy stops there.
    no_phrase_first = gcg.image_scores(image([GT1], ["man"]), image([PRED_B, GT1], ["man"]), SAME_TEXT)
    assert no_phrase_first["greedy"]["tp"] == 0 and no_phrase_first["phrase_mask_mismatch"]
    phrase_first = gcg.image_scores(image([GT1], ["man"]), image([GT1, PRED_B], ["man"]), SAME_TEXT)
    assert phrase_first["greedy"]["tp"] == 1
    assert gcg.summarize_images([no_phrase_first, phrase_first])["n_images_phrase_mask_mismatch"] == 2


def test_empty_prediction():
    scores = gcg.image_scores(image([GT1, GT2], ["a", "b"]), image([], []), SAME_TEXT)
    assert scores["greedy"] == {"tp": 0, "miou": 0.0} and scores["hungarian"] == {"tp": 0, "miou": 0.0}
    summary = gcg.summarize_images([scores])
    assert summary["greedy"]["mask_recall"] == 0.0 and summary["n_gt_phrases"] == 2


def test_glamm_miou_pairing_is_greedy_on_pred_x_gt():
    iou = np.array([[0.6, 0.5], [0.55, 0.0]])  # (pred, gt)
    assert gcg.greedy_paired_ious(iou) == [0.6]  # then only 0.0 is left
    assert gcg.hungarian_paired_ious(iou) == pytest.approx([0.5, 0.55])


def test_cosine_matrix():
    sims = cosine_matrix(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]]))
    assert sims == pytest.approx(np.array([[1.0, 2 ** -0.5], [0.0, 0.0]]))


# ---------------------------------------------------------------- AP50


def gcg_sets(images):
    """Parsed GT and predictions from ``[(gt masks, [(pred mask, score)])]``."""
    gt, preds = [], {}
    for i, (gt_masks, pred_list) in enumerate(images):
        rid = f"img{i}"
        gt.append({"id": rid, "size": (H, W), "caption": "", "phrases": ["p"] * len(gt_masks),
                   "masks": [rle_ops.to_pycoco(rle(m)) for m in gt_masks]})
        preds[rid] = {"masks": [rle_ops.to_pycoco(rle(m)) for m, _ in pred_list],
                      "scores": [s for _, s in pred_list], "phrases": [], "caption": ""}
    return gt, preds


def cocoeval_ap50(images) -> float:
    """AP50 straight from pycocotools on hand-built COCO dicts."""
    dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    results = []
    for i, (gt_masks, pred_list) in enumerate(images):
        dataset["images"].append({"id": i + 1, "height": H, "width": W})
        for m in gt_masks:
            r = rle(m)
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                                           "iscrowd": 0, "segmentation": r, "area": float(m.sum()),
                                           "bbox": [0, 0, 1, 1]})
        results += [{"image_id": i + 1, "category_id": 1, "segmentation": rle(m), "score": s} for m, s in pred_list]
    return float(reference_cocoeval_stats(dataset, results)[1])


def test_ap50_hand_computed():
    gt, preds = gcg_sets([([GT1, cols(70, 100)], [(GT1, 1.0)])])
    # recall 0.5 at precision 1: 51 of COCO's 101 recall points
    assert gcg.mask_ap50(gt, preds) == pytest.approx(51 / 101)


def test_ap50_scores_glamm_constant_vs_predicted():
    # the wrong mask has the higher score; GLaMM's constant 1.0 keeps file order instead
    gt, preds = gcg_sets([([GT1], [(GT1, 0.2), (cols(80, 100), 0.9)])])
    assert gcg.mask_ap50(gt, preds) == pytest.approx(1.0)
    assert gcg.mask_ap50(gt, preds, use_scores=True) == pytest.approx(0.5)


def test_ap50_equals_cocoeval():
    rng = np.random.default_rng(7)
    images = []
    for _ in range(4):
        starts = rng.integers(0, 80, size=3)
        gt_masks = [cols(s, s + 20) for s in starts]
        pred_list = [(cols(s + d, s + d + 20), float(rng.random())) for s, d in zip(starts, rng.integers(-12, 12, 3), strict=True)]
        pred_list.append((cols(0, 100), 0.5))  # a sprawling false positive
        images.append((gt_masks, pred_list))
    gt, preds = gcg_sets(images)
    expected = cocoeval_ap50(images)
    assert 0.0 < expected < 1.0
    assert gcg.mask_ap50(gt, preds, use_scores=True) == pytest.approx(expected, abs=1e-12)
    constant = [(g, [(m, 1.0) for m, _ in p]) for g, p in images]
    assert gcg.mask_ap50(gt, preds) == pytest.approx(cocoeval_ap50(constant), abs=1e-12)


def test_ap50_without_predictions():
    gt, preds = gcg_sets([([GT1], [])])
    assert gcg.mask_ap50(gt, preds) == 0.0
