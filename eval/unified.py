"""Scoring the unified (c, b, m) tasks against unified records, from a predictions file any model can write.

``segllm eval instance|detection|panoptic|semantic|referring|foreground --data GT.jsonl
--predictions PRED.jsonl --output DIR`` (``eval/unified_cli.py``). The ground truth is a file of
unified records (``segllm build-data SOURCE --records unified``); each must have an ``id``,
``height`` and ``width``. The predictions file is JSON Lines, one record per scored
ground-truth record (the same ``id``; every one once, no unknown ids; records of the file's
other tasks or past ``--limit`` may be there and are passed over)::

    {"id": "coco-val-500", "task": "instance",          # task optional; if given, the one scored
     "annotations": [                                   # what the model found in the image
       {"text": "dog",                                  # the class name or expression it answers
        "score": 0.93,                                  # confidence (finite)
        "rle": {"size": [h, w], "counts": "..."},       # COCO RLE at the image size
        "bbox": [x, y, w, h]}]}                         # box in pixels

What each task reads, and which ground-truth records it scores (others in the file are counted
as ``n_records_other_tasks`` and left out):

============  ===========================  =====================================================
task          ground-truth records         per predicted annotation
============  ===========================  =====================================================
instance      instance; panoptic (things)  ``text``, ``score``, ``rle`` (``bbox`` unused)
detection     detection, instance;         ``text``, ``score``, ``bbox`` (or ``rle``: its box)
              panoptic (things)
panoptic      panoptic                     ``text``, ``rle``; masks must not overlap
semantic      semantic, panoptic           ``text``, ``rle``; a pixel under several masks goes
                                           to the highest ``score`` (default 1; ties: the later)
referring     referring                    one per ground-truth annotation, in its order:
foreground    foreground                   ``rle`` (an empty mask is an answer of nothing);
                                           ``text``, if given, must equal the expression
============  ===========================  =====================================================

Metrics (definitions in ``eval/segmentation_metrics.py`` and ``eval/mask_metrics.py``):
instance and detection: COCO AP, AP50, AP75 through pycocotools, crowd regions as COCO treats
them, and the precision-recall curves; panoptic: PQ, SQ, RQ overall and per category, PQ over
thing and over stuff categories (by the ground truth's ``isthing``; a predicted category absent
from the ground truth counts in PQ only), void = pixels in no ground-truth segment;
semantic: mIoU over the set's vocabulary (every ground-truth and predicted class name; pixels in
no ground-truth annotation are ignored, predicted classes never in the ground truth score 0,
pixels no prediction covers count as wrong) and pixel accuracy; referring and foreground: cIoU,
gIoU and mIoU over every expression, and per source. A box-only ground-truth annotation
(``rle: null``) counts in detection only.

A model scores the same way once it writes this file: :func:`predictions_from_model` asks a
:class:`UnifiedPredictor` for each image's annotations; ``segllm eval TASK --model DIR`` does
it with a decoder-only QueryMeld model (``eval/unified_inference.py``), writes the file and
scores it.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from segllm import masks as rle_ops
from segllm.records import RecordError, iter_jsonl, validate_unified

from .errors import EvalInputError

TASK_GROUND_TRUTH = {
    "instance": ("instance", "panoptic"),
    "detection": ("detection", "instance", "panoptic"),
    "panoptic": ("panoptic",),
    "semantic": ("semantic", "panoptic"),
    "referring": ("referring",),
    "foreground": ("foreground",),
}
"""Eval task -> the unified record tasks it scores."""

UNIFIED_EVAL_TASKS = tuple(TASK_GROUND_TRUTH)
PAIRED_TASKS = ("referring", "foreground")  # one prediction per ground-truth annotation


@dataclass
class GroundTruth:
    """One ground-truth image: its annotations with RLEs in pycocotools form (or None)."""

    id: str
    size: tuple[int, int]
    task: str
    source: str
    annotations: list[dict] = field(default_factory=list)


class GroundTruthSet(NamedTuple):
    """What :func:`load_ground_truth` read: the scored images, the records of other tasks it
    left out (by task), and the ids it does not score (other tasks, past ``limit``), whose
    predictions are passed over."""

    images: list[GroundTruth]
    other_tasks: Counter
    unscored_ids: frozenset


def load_ground_truth(path: str | os.PathLike, task: str, limit: int | None = None) -> GroundTruthSet:
    """The records of ``path`` that ``task`` scores (the first ``limit`` of them). Raises
    ``EvalInputError`` naming file, line and record for a bad record, and when no record fits."""
    wanted = TASK_GROUND_TRUTH[task]
    images, others, seen, unscored = [], Counter(), set(), set()
    try:
        for line, record in iter_jsonl(path):
            where = f"{path}:{line}"
            try:
                validate_unified(record)
            except RecordError as exc:
                raise EvalInputError(str(exc.located(path=path, line=line))) from None
            rid = record.get("id")
            if not isinstance(rid, str) or not rid or "height" not in record:
                raise EvalInputError(f"{where}: a scored unified record needs a string 'id', "
                                     "'height' and 'width'")
            if rid in seen:
                raise EvalInputError(f"{where}: id appears twice", record_id=rid)
            seen.add(rid)
            if record["task"] not in wanted:
                others[record["task"]] += 1
                unscored.add(rid)
                continue
            if limit is not None and len(images) >= limit:
                unscored.add(rid)
                continue
            images.append(_ground_truth(record, task))
    except RecordError as exc:  # a line that is not JSON
        raise EvalInputError(str(exc)) from None
    if not images:
        raise EvalInputError(f"{path}: no {' or '.join(wanted)} records to score for '{task}' "
                             f"(found: {dict(others) or 'none'})")
    return GroundTruthSet(images, others, frozenset(unscored))


def _ground_truth(record: dict, task: str) -> GroundTruth:
    annotations = []
    for ann in record["annotations"]:
        if record["task"] == "panoptic" and task in ("instance", "detection") and not ann.get("isthing", True):
            continue  # stuff is not scored by AP
        annotations.append({"text": ann["text"], "bbox": [float(v) for v in ann["bbox"]],
                            "rle": None if ann.get("rle") is None else rle_ops.to_pycoco(ann["rle"]),
                            "iscrowd": bool(ann.get("iscrowd", False)),
                            "isthing": ann.get("isthing")})
    return GroundTruth(id=record["id"], size=(record["height"], record["width"]), task=record["task"],
                       source=str(record.get("source", "unknown")), annotations=annotations)


# ---------------------------------------------------------------- predictions


def load_predictions(path: str | os.PathLike, task: str, ground_truth: Sequence[GroundTruth],
                     unscored_ids: Iterable[str] = ()) -> dict[str, list[dict]]:
    """Checked predicted annotations by record id (module docstring): every ground-truth id
    once and no other (records of ``unscored_ids`` are passed over); masks decodable at the
    image size; scores finite."""
    unscored = frozenset(unscored_ids)
    by_id = {gt.id: gt for gt in ground_truth}
    out: dict[str, list[dict]] = {}
    extra = []
    try:
        lines = list(iter_jsonl(path))
    except RecordError as exc:
        raise EvalInputError(str(exc)) from None
    for line, record in lines:
        rid = record.get("id")
        if not isinstance(rid, str) or not rid:
            raise EvalInputError(f"{path}:{line}: a prediction record needs a string 'id'")
        if rid in out:
            raise EvalInputError(f"{path}:{line}: id appears twice", record_id=rid)
        if rid in unscored:
            continue
        if rid not in by_id:
            extra.append(rid)
            continue
        if record.get("task", task) != task:
            raise EvalInputError(f"{path}:{line}: predictions for task {record['task']!r}, "
                                 f"scored as {task!r}", record_id=rid)
        out[rid] = _checked_annotations(record.get("annotations"), task, by_id[rid])
    missing = [rid for rid in by_id if rid not in out]
    if missing or extra:
        parts = [f"{len(missing)} ground-truth ids have no prediction (first: {missing[:3]})"] if missing else []
        parts += [f"{len(extra)} predicted ids are not among the scored records (first: {extra[:3]})"] if extra else []
        raise EvalInputError(f"{path}: prediction ids do not match the ground truth: " + "; ".join(parts))
    return out


def _checked_annotations(annotations, task: str, gt: GroundTruth) -> list[dict]:
    if not isinstance(annotations, list):
        raise EvalInputError("'annotations' must be a list", record_id=gt.id)
    if task in PAIRED_TASKS and len(annotations) != len(gt.annotations):
        raise EvalInputError(f"{len(annotations)} predicted annotations for {len(gt.annotations)} "
                             "expressions (one each, in order)", record_id=gt.id)
    checked = []
    for k, ann in enumerate(annotations):
        what = f"annotations[{k}]"
        if not isinstance(ann, dict):
            raise EvalInputError(f"{what} must be an object", record_id=gt.id)
        checked.append(_checked_annotation(ann, what, task, gt, k))
    if task == "panoptic":
        _check_no_overlap(checked, gt)
    return checked


def _checked_annotation(ann: dict, what: str, task: str, gt: GroundTruth, k: int) -> dict:
    text = ann.get("text")
    if task in PAIRED_TASKS:
        if text is not None and text != gt.annotations[k]["text"]:
            raise EvalInputError(f"{what}.text {text!r} is not expression {k}, "
                                 f"{gt.annotations[k]['text']!r}", record_id=gt.id)
        text = gt.annotations[k]["text"]
    elif not isinstance(text, str) or not text:
        raise EvalInputError(f"{what}.text must be a non-empty string", record_id=gt.id)
    score = ann.get("score")
    if score is None and task not in ("instance", "detection"):
        score = 1.0
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise EvalInputError(f"{what}.score must be a finite number, got {score!r}", record_id=gt.id)
    out = {"text": text, "score": float(score), "rle": None, "bbox": None}
    if ann.get("rle") is not None:
        out["rle"] = _checked_rle(ann["rle"], f"{what}.rle", gt)
    elif task != "detection":
        raise EvalInputError(f"{what}.rle is missing (a COCO RLE at the image size)", record_id=gt.id)
    if ann.get("bbox") is not None:
        out["bbox"] = _checked_box(ann["bbox"], f"{what}.bbox", gt.id)
    elif task == "detection":
        if out["rle"] is None:
            raise EvalInputError(f"{what} needs a 'bbox' (or an 'rle')", record_id=gt.id)
        out["bbox"] = rle_ops.boxes_xywh([out["rle"]])[0].tolist()
    return out


def _checked_rle(obj, what: str, gt: GroundTruth) -> dict:
    try:
        rle = rle_ops.to_pycoco(obj)
    except (ValueError, TypeError) as exc:
        raise EvalInputError(f"{what}: {exc}", record_id=gt.id) from None
    got = rle_ops.rle_size(rle)
    if got != gt.size:
        raise EvalInputError(f"{what} is {got[0]}x{got[1]} (h x w), the image is "
                             f"{gt.size[0]}x{gt.size[1]}", record_id=gt.id)
    return rle


def _checked_box(box, what: str, rid: str) -> list[float]:
    if not (isinstance(box, list) and len(box) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise EvalInputError(f"{what} must be [x, y, w, h] of finite numbers, got {box!r}", record_id=rid)
    return [float(v) for v in box]


def _check_no_overlap(annotations: list[dict], gt: GroundTruth) -> None:
    """Panoptic segments cover each pixel at most once (a panoptic PNG cannot say otherwise)."""
    owner = np.full(gt.size, -1, dtype=np.int64)
    for k, ann in enumerate(annotations):
        mask = rle_ops.decode(ann["rle"])
        clash = owner[mask]
        if (clash >= 0).any():
            raise EvalInputError(f"panoptic annotations[{int(clash[clash >= 0][0])}] and annotations[{k}] "
                                 "overlap; panoptic segments must not", record_id=gt.id)
        owner[mask] = k


# ---------------------------------------------------------------- scoring


def score(task: str, ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """The task's metrics (module docstring) as a JSON-ready dict (NaN for 'nothing to score')."""
    scorers = {"instance": score_instance, "detection": score_detection, "panoptic": score_panoptic,
               "semantic": score_semantic, "referring": score_paired, "foreground": score_paired}
    return scorers[task](ground_truth, predictions)


def score_instance(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """Mask AP through pycocotools (``segmentation_metrics.coco_ap``, ``segm``)."""
    from .segmentation_metrics import coco_ap

    images = [{"id": gt.id, "size": list(gt.size),
               "segments": [{"category": a["text"], "rle": a["rle"], "iscrowd": int(a["iscrowd"])}
                            for a in gt.annotations if a["rle"] is not None]} for gt in ground_truth]
    preds = {rid: [{"category": p["text"], "rle": p["rle"], "score": p["score"]} for p in anns]
             for rid, anns in predictions.items()}
    box_only = sum(a["rle"] is None for gt in ground_truth for a in gt.annotations)
    return coco_ap(images, preds, iou_type="segm") | _counts(ground_truth, predictions) | {
        "n_box_only_left_out": box_only}


def score_detection(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """Box AP through pycocotools (``segmentation_metrics.coco_ap``, ``bbox``)."""
    from .segmentation_metrics import coco_ap

    images = [{"id": gt.id, "size": list(gt.size),
               "segments": [{"category": a["text"], "rle": a["rle"], "bbox": a["bbox"],
                             "iscrowd": int(a["iscrowd"])} for a in gt.annotations]}
              for gt in ground_truth]
    preds = {rid: [{"category": p["text"], "bbox": p["bbox"], "rle": p["rle"], "score": p["score"]}
                   for p in anns] for rid, anns in predictions.items()}
    return coco_ap(images, preds, iou_type="bbox") | _counts(ground_truth, predictions)


def score_panoptic(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """PQ, SQ, RQ (``segmentation_metrics.panoptic_quality``); void: pixels in no segment."""
    from .segmentation_metrics import panoptic_quality

    images, isthing = [], {}
    for gt in ground_truth:
        segments = [{"category": a["text"], "rle": a["rle"], "iscrowd": int(a["iscrowd"])}
                    for a in gt.annotations if a["rle"] is not None]
        for a in gt.annotations:
            if a["isthing"] is not None:
                isthing[a["text"]] = bool(a["isthing"])
        covered = rle_ops.union_of([s["rle"] for s in segments], *gt.size)
        void = rle_ops.encode_mask(~rle_ops.decode(covered))
        images.append({"id": gt.id, "size": list(gt.size), "segments": segments, "void": void})
    preds = {rid: [{"category": p["text"], "rle": p["rle"]} for p in anns]
             for rid, anns in predictions.items()}
    result = panoptic_quality(images, preds)
    per = result["per_category"]
    for kind, flag in (("things", True), ("stuff", False)):
        names = [n for n in per if isthing.get(n) is flag]
        result[f"pq_{kind}"] = float(np.mean([per[n]["pq"] for n in names])) if names else float("nan")
        result[f"n_categories_{kind}"] = len(names)
    return result | _counts(ground_truth, predictions)


def score_semantic(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """mIoU and pixel accuracy over the set's vocabulary (``segmentation_metrics.semantic_miou``)."""
    from .segmentation_metrics import label_map_from_segments, semantic_miou

    names = sorted({a["text"] for gt in ground_truth for a in gt.annotations if a["rle"] is not None}
                   | {p["text"] for anns in predictions.values() for p in anns})
    index = {name: i for i, name in enumerate(names)}
    unpredicted = len(names)  # an extra class: pixels no prediction covers count as wrong

    def pairs() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for gt in ground_truth:
            target = label_map_from_segments(gt.size, [{"category": a["text"], "rle": a["rle"]}
                                                       for a in gt.annotations if a["rle"] is not None],
                                             index, background=255)
            ranked = sorted(enumerate(predictions[gt.id]), key=lambda kp: (kp[1]["score"], kp[0]))
            pred = label_map_from_segments(gt.size, [{"category": p["text"], "rle": p["rle"]}
                                                     for _, p in ranked], index, background=unpredicted)
            yield pred, target

    result = semantic_miou(pairs(), num_classes=len(names) + 1)
    per_class = result["per_class_iou"][:-1]
    scored = [v for v in per_class if math.isfinite(v)]
    return {"miou": float(np.mean(scored)) if scored else float("nan"),
            "pixel_accuracy": result["pixel_accuracy"],
            "per_class_iou": dict(zip(names, per_class, strict=True))} | _counts(ground_truth, predictions)


def score_paired(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    """cIoU, gIoU, mIoU of each expression's mask against its target (``mask_metrics``)."""
    from .mask_metrics import ciou, giou, intersection_union_rle, miou, per_target_iou

    preds, targets, sources = [], [], []
    for gt in ground_truth:
        for ann, pred in zip(gt.annotations, predictions[gt.id], strict=True):
            if ann["rle"] is None:
                continue
            preds.append(pred["rle"])
            targets.append(ann["rle"])
            sources.append(gt.source)
    inter, union = intersection_union_rle(preds, targets)

    def summary(keep: np.ndarray) -> dict:
        i, u = inter[keep], union[keep]
        return {"ciou": ciou(i, u), "giou": giou(i, u), "miou": miou(i, u), "n_expressions": int(keep.sum())}

    sources = np.asarray(sources)
    result = summary(np.ones(len(preds), dtype=bool))
    result["per_source"] = {s: summary(sources == s) for s in sorted(set(sources.tolist()))}
    result["per_expression_iou"] = per_target_iou(inter, union).tolist()
    return result | _counts(ground_truth, predictions)


def _counts(ground_truth: Sequence[GroundTruth], predictions: dict[str, list[dict]]) -> dict:
    return {"n_images": len(ground_truth),
            "n_annotations": sum(len(gt.annotations) for gt in ground_truth),
            "n_predictions": sum(len(v) for v in predictions.values())}


# ---------------------------------------------------------------- models


class UnifiedPredictor(Protocol):
    """What :func:`predictions_from_model` needs of a model: the annotations it finds in an
    ``(H, W, 3)`` uint8 image for a list of texts (the class vocabulary of a closed-set task,
    or one record's expressions for ``referring`` / ``foreground``, to answer in order), in
    the predictions file's annotation format. ``stuff``: the texts the ground truth marks as
    stuff (``"isthing": false``), whose panoptic segments are one per text.
    ``segllm.eval.unified_inference.QueryMeldPredictor`` is one."""

    def predict(self, image: np.ndarray, texts: list[str], task: str, *,
                stuff: frozenset[str] = frozenset()) -> list[dict]: ...


def stuff_texts(ground_truth: Sequence[GroundTruth]) -> frozenset[str]:
    """The texts some ground-truth annotation marks as stuff (``"isthing": false``)."""
    return frozenset(a["text"] for gt in ground_truth for a in gt.annotations
                     if a["isthing"] is False)


def predictions_from_model(predictor: UnifiedPredictor, task: str, ground_truth: Sequence[GroundTruth],
                           records: dict[str, dict], images_root: str | os.PathLike,
                           progress: bool = False) -> list[dict]:
    """Prediction records (module docstring) for every ground-truth image, from ``predictor``.

    ``records``: the ground-truth records by id (their ``image`` paths, under ``images_root``).
    """
    from tqdm import tqdm

    from segllm.images import load_image

    vocabulary = sorted({a["text"] for gt in ground_truth for a in gt.annotations})
    stuff = stuff_texts(ground_truth)
    out = []
    for gt in tqdm(ground_truth, desc=f"predict {task}", unit="img", disable=not progress,
                   dynamic_ncols=True):
        image = np.asarray(load_image(os.path.join(images_root, records[gt.id]["image"]), orientation="stored"))
        texts = [a["text"] for a in gt.annotations] if task in PAIRED_TASKS else vocabulary
        out.append({"id": gt.id, "task": task,
                    "annotations": predictor.predict(image, texts, task, stuff=stuff)})
    return out
