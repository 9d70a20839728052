"""Grounded conversation generation (GCG) metrics as GLaMM computes them, plus a Hungarian variant.

GLaMM (``eval/gcg/evaluate.py``), reproduced here:

- **Mask recall** ("greedy", GLaMM's ``find_best_matches``): build the IoU matrix (ground truth
  x prediction) and the text-similarity matrix of ground-truth phrases x predicted phrases.
  Repeatedly take the pair of highest IoU (first in row-major order on ties); if its IoU is below
  the IoU threshold *or* its text similarity below the text threshold, stop; otherwise count a
  true positive and zero that pair's row and column. Note the thresholds admit equality
  (``>= 0.5``; the paper says "exceed") and the loop stops at the first inadmissible pair even
  if a lower-IoU pair would pass. Recall = true positives / ground-truth phrases, summed over
  the whole set.
- **mIoU** ("greedy", GLaMM's ``compute_miou``): per image, repeatedly take the highest IoU of
  the prediction x ground-truth matrix while it is above 0, pair it and remove its row and
  column; the image scores the mean of its paired IoUs (0 when nothing pairs); mIoU is the mean
  over images. Unpaired masks do not lower it.
- **AP50**: COCOeval ``segm`` on one category, GLaMM giving every predicted mask score 1.0
  (``use_scores=False``); ``use_scores=True`` ranks by the predicted scores instead.

The **Hungarian** variant pairs masks one-to-one by maximum total IoU
(``scipy.optimize.linear_sum_assignment``); recall counts the assigned pairs that pass both
thresholds; mIoU averages the assigned pairs with IoU above 0. Results name the matching used.

Differences from GLaMM's code, all in its error paths: two empty masks have IoU 0 here
(GLaMM's numpy division gives NaN); a predicted mask with no phrase (fewer phrases than masks)
has text similarity 0 with every phrase, so it never counts (GLaMM raises IndexError when the
greedy loop reaches it, prints it and counts no true positive for the whole image); extra
phrases without a mask are ignored (as in GLaMM, whose IoU matrix never reaches them).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Sequence

import numpy as np

from segllm import masks as rle_ops

from .text_similarity import TextSimilarity

MATCHINGS = ("greedy", "hungarian")
_TAG = re.compile(r"<.*?>")
_PHRASE = re.compile(r"<p>(.*?)</p>")


def parse_grounded_answer(text: str) -> tuple[str, list[str]]:
    """``(caption, phrases)`` from a generated answer such as ``"<p>A man</p> [SEG] holds <p>a bag</p> [SEG]."``.

    As GLaMM's inference: phrases are the stripped ``<p>...</p>`` contents; the caption is the
    text with every ``<...>`` tag and ``[SEG]`` removed, whitespace collapsed, quotes stripped.
    """
    text = text.replace("\n", "").replace("  ", " ")
    phrases = [p.strip() for p in _PHRASE.findall(text)]
    caption = _TAG.sub("", text).replace("[SEG]", "")
    caption = " ".join(caption.split()).strip("'").strip()
    return caption, phrases


def greedy_match_glamm(iou: np.ndarray, text_sim: np.ndarray, iou_threshold: float = 0.5, text_threshold: float = 0.5) -> list[tuple[int, int]]:
    """GLaMM's greedy matching for mask recall.

    Args:
        iou: ``(G, P)`` IoU of ground-truth mask g with predicted mask p.
        text_sim: ``(G, P)`` similarity of ground-truth phrase g with predicted phrase p.

    Returns:
        The accepted ``(g, p)`` pairs, in the order taken.
    """
    iou = np.array(iou, dtype=np.float64, copy=True)
    sim = np.array(text_sim, dtype=np.float64, copy=True)
    matches: list[tuple[int, int]] = []
    while iou.size > 0:
        g, p = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[g, p] < iou_threshold or sim[g, p] < text_threshold:
            break
        matches.append((int(g), int(p)))
        iou[g, :] = 0
        iou[:, p] = 0
        sim[g, :] = 0
        sim[:, p] = 0
    return matches


def hungarian_match(iou: np.ndarray, text_sim: np.ndarray, iou_threshold: float = 0.5, text_threshold: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one assignment maximising total IoU, keeping pairs that pass both thresholds (``>=``).

    Shapes as ``greedy_match_glamm``.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [(int(g), int(p)) for g, p in zip(rows, cols, strict=True)
            if iou[g, p] >= iou_threshold and text_sim[g, p] >= text_threshold]


def greedy_paired_ious(iou: np.ndarray) -> list[float]:
    """GLaMM's ``compute_miou`` pairing: IoUs taken greedily while the best left is above 0.

    Args:
        iou: ``(P, G)`` IoU of predicted mask p with ground-truth mask g (GLaMM's orientation,
            which fixes how ties break).
    """
    iou = np.array(iou, dtype=np.float64, copy=True)
    paired = []
    while iou.size > 0 and np.max(iou) > 0:
        r, c = np.unravel_index(np.argmax(iou), iou.shape)
        paired.append(float(iou[r, c]))
        iou = np.delete(np.delete(iou, r, axis=0), c, axis=1)
    return paired


def hungarian_paired_ious(iou: np.ndarray) -> list[float]:
    """IoUs of the maximum-total-IoU assignment, pairs with IoU 0 left out. ``iou`` is ``(P, G)``."""
    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(iou, maximize=True)
    return [float(iou[r, c]) for r, c in zip(rows, cols, strict=True) if iou[r, c] > 0]


def phrase_similarity_matrix(gt_phrases: Sequence[str], pred_phrases: Sequence[str], n_pred_masks: int, similarity: TextSimilarity) -> np.ndarray:
    """``(G, n_pred_masks)`` text similarity; a mask with no phrase (fewer phrases than masks) gets 0."""
    out = np.zeros((len(gt_phrases), n_pred_masks), dtype=np.float64)
    n = min(len(pred_phrases), n_pred_masks)
    if len(gt_phrases) and n:
        out[:, :n] = similarity.matrix(list(gt_phrases), list(pred_phrases[:n]))
    return out


def image_scores(gt: dict, pred: dict, similarity: TextSimilarity, iou_threshold: float = 0.5, text_threshold: float = 0.5) -> dict:
    """Per-image recall counts and mIoU under both matchings.

    Args:
        gt: ``{"phrases": [str], "masks": [rle]}`` (parsed GCG ground truth).
        pred: ``{"phrases": [str], "masks": [rle]}`` (parsed GCG prediction).

    Returns:
        ``{"n_gt", "n_pred", "phrase_mask_mismatch", "greedy": {"tp", "miou"}, "hungarian": {...}}``.
    """
    iou = rle_ops.iou_matrix(gt["masks"], pred["masks"])  # (G, P)
    sim = phrase_similarity_matrix(gt["phrases"], pred["phrases"], len(pred["masks"]), similarity)
    out = {"n_gt": len(gt["masks"]), "n_pred": len(pred["masks"]),
           "phrase_mask_mismatch": len(pred["phrases"]) != len(pred["masks"])}
    for name, match, paired in (("greedy", greedy_match_glamm, greedy_paired_ious),
                                ("hungarian", hungarian_match, hungarian_paired_ious)):
        ious = paired(iou.T)
        out[name] = {"tp": len(match(iou, sim, iou_threshold, text_threshold)),
                     "miou": float(np.mean(ious)) if ious else 0.0}
    return out


def summarize_images(per_image: Sequence[dict]) -> dict:
    """Data-set mask recall and mIoU per matching from ``image_scores`` results."""
    n_gt = sum(s["n_gt"] for s in per_image)
    out = {}
    for name in MATCHINGS:
        tp = sum(s[name]["tp"] for s in per_image)
        out[name] = {
            "mask_recall": tp / n_gt if n_gt else 0.0,
            "miou": float(np.mean([s[name]["miou"] for s in per_image])) if per_image else 0.0,
            "true_positives": tp,
        }
    out["n_gt_phrases"] = n_gt
    out["n_images_phrase_mask_mismatch"] = sum(bool(s["phrase_mask_mismatch"]) for s in per_image)
    return out


def _coco_gt(images: Sequence[tuple[str, tuple[int, int], Sequence[dict]]]):
    """An in-memory pycocotools ``COCO`` with one category from ``(id, (h, w), masks)`` triples."""
    from pycocotools.coco import COCO

    dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    ann_id = 1
    for img_num, (_, (h, w), masks) in enumerate(images, start=1):
        dataset["images"].append({"id": img_num, "height": h, "width": w})
        mask_areas = rle_ops.areas(list(masks))
        boxes = rle_ops.boxes_xywh(list(masks))
        for m, area, box in zip(masks, mask_areas, boxes, strict=True):
            dataset["annotations"].append({"id": ann_id, "image_id": img_num, "category_id": 1, "iscrowd": 0,
                                           "segmentation": m, "area": float(area), "bbox": box.tolist()})
            ann_id += 1
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def mask_ap50(gt_records: Sequence[dict], predictions: dict[str, dict], use_scores: bool = False) -> float:
    """AP at IoU 0.5 over all images (COCOeval ``segm``, one category, 100 detections per image).

    Args:
        gt_records: parsed GCG ground truth (``id``, ``size``, ``masks``).
        predictions: by id, parsed GCG predictions (``masks``, ``scores``).
        use_scores: rank by predicted scores; False gives every mask 1.0, as GLaMM.

    Returns:
        AP50 in [0, 1]; 0 when there are no predictions, NaN when there is no ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _coco_gt([(g["id"], g["size"], g["masks"]) for g in gt_records])
    if not coco_gt.dataset["annotations"]:
        return float("nan")
    results = []
    for img_num, g in enumerate(gt_records, start=1):
        pred = predictions[g["id"]]
        for m, s in zip(pred["masks"], pred["scores"], strict=True):
            results.append({"image_id": img_num, "category_id": 1, "segmentation": m,
                            "score": float(s) if use_scores else 1.0})
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "segm")
        evaluator.params.catIds = [1]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return max(float(evaluator.stats[1]), 0.0)
