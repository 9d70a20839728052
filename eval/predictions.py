"""The predictions file: JSON Lines, one record per conversation id, from which every metric is recomputed.

Round-based tasks (``mrseg``, ``refer``, ``reasonseg``): one record per ground-truth record::

    {"id": "refcoco-val-000001",          # the ground-truth record's id
     "task": "mrseg",                      # mrseg | refer | reasonseg
     "mode": "own",                        # own: the model's own earlier masks were fed back
                                           # gt:  ground-truth masks of earlier rounds were fed
     "rounds": [                           # one entry per ground-truth round, in order
       {"index": 0,
        "text": "Sure, [SEG].",            # the generated answer
        "masks": [{"size": [h, w], "counts": "..."}],   # COCO RLE, one per [SEG], image size
        "scores": [0.93],                  # one finite float per mask (optional: default 1.0)
        "boxes": [[x, y, w, h]]}]}         # optional decoder boxes, one per mask, or null

GCG (``gcg``)::

    {"id": "...", "task": "gcg",
     "text": "<p>A man</p> [SEG] holds <p>a bag</p> [SEG].",   # raw generated answer
     "caption": "A man holds a bag.",      # the answer without tags and [SEG] (as GLaMM cleans it)
     "phrases": ["A man", "a bag"],        # the i-th phrase belongs to the i-th mask
     "masks": [{...}, {...}], "scores": [1.0, 1.0]}

The mode is a property of a whole file (one run): every record of a file carries the same
``mode``. A run in both modes writes two files (``predictions-own.jsonl``,
``predictions-gt.jsonl``). ``gcg`` records have no mode.

Ground-truth formats are those of docs/architecture.md, "Record formats". Two optional extensions are read here:
a target may carry ``"ignore_rle"`` (pixels labelled 255, left out of I and U), and a round may
carry ``"type"`` (round type, for the per-type breakdown; ``"unknown"`` when absent).

Every problem is raised as ``EvalInputError`` (a ``ValueError``) naming the record id and round.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence

from segllm import masks as rle_ops
from segllm.files import atomic_write
from segllm.records import RecordError, iter_jsonl

from .errors import EvalInputError

ROUND_TASKS = ("mrseg", "refer", "reasonseg")
TASKS = (*ROUND_TASKS, "gcg")
MODE_OWN = "own"
MODE_GT = "gt"
MODES = (MODE_OWN, MODE_GT)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON Lines file; blank lines are skipped, a bad line is an error naming its number."""
    try:
        return [record for _, record in iter_jsonl(path)]
    except RecordError as exc:
        raise EvalInputError(str(exc)) from None


def _record_id(record: dict, where: str) -> str:
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise EvalInputError(f"{where}: a record has no string 'id' (got {rid!r})")
    return rid


def _checked_rle(obj, size: tuple[int, int], what: str, rid: str, round_index: int | None) -> dict:
    """An RLE in pycocotools form after checking that it parses and has the image size."""
    try:
        rle = rle_ops.to_pycoco(obj)
    except ValueError as exc:
        raise EvalInputError(f"{what}: {exc}", record_id=rid, round_index=round_index) from None
    got = rle_ops.rle_size(rle)
    if got != size:
        raise EvalInputError(
            f"{what} is {got[0]}x{got[1]} (h x w), the image is {size[0]}x{size[1]}",
            record_id=rid, round_index=round_index,
        )
    return rle


def _image_size(record: dict, rid: str) -> tuple[int, int]:
    h, w = record.get("height"), record.get("width")
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise EvalInputError(f"'height' and 'width' must be positive integers, got {h!r}, {w!r}", record_id=rid)
    return h, w


def _checked_box(box, what: str, rid: str, round_index: int | None) -> list[float]:
    if not (isinstance(box, Sequence) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise EvalInputError(f"{what} must be [x, y, w, h], got {box!r}", record_id=rid, round_index=round_index)
    if not all(math.isfinite(v) for v in box):
        raise EvalInputError(f"{what} is not finite: {box!r}", record_id=rid, round_index=round_index)
    return [float(v) for v in box]


def _checked_scores(scores, n_masks: int, rid: str, round_index: int | None) -> list[float]:
    if scores is None:
        return [1.0] * n_masks
    if not isinstance(scores, list) or len(scores) != n_masks:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise EvalInputError(f"'scores' must be a list of {n_masks} numbers (one per mask), got {got}",
                             record_id=rid, round_index=round_index)
    out = []
    for k, s in enumerate(scores):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise EvalInputError(f"score {k} is not a finite number: {s!r}", record_id=rid, round_index=round_index)
        out.append(float(s))
    return out


def _index_by_id(records: Iterable[dict], where: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for record in records:
        rid = _record_id(record, where)
        if rid in out:
            raise EvalInputError(f"{where}: id appears twice", record_id=rid)
        out[rid] = record
    return out


def _same_ids(gt: dict[str, dict], pred: dict[str, dict]) -> None:
    missing = [rid for rid in gt if rid not in pred]
    extra = [rid for rid in pred if rid not in gt]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} ground-truth ids have no prediction (first: {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} predicted ids are not in the ground truth (first: {extra[:3]})")
        raise EvalInputError("prediction ids do not match the ground truth: " + "; ".join(parts),
                             record_id=(missing or extra)[0])


# ---------------------------------------------------------------- ground truth


def parse_round_ground_truth(records: Sequence[dict]) -> list[dict]:
    """Validate MRSeg records and return them normalised for evaluation.

    Each returned record: ``{"id", "image", "size": (h, w), "rounds": [{"index", "type",
    "question", "refs", "targets": [{"rle", "bbox", "ignore", "box_derived"}]}]}``, RLEs in
    pycocotools form, ``bbox`` ``[x, y, w, h]`` (the annotation's ``ann_bbox`` when the record
    has one, else its ``bbox``, else the mask's tight box), ``ignore`` an RLE or ``None``,
    ``box_derived`` whether the mask is a filled box (not scored as a mask).
    """
    out = []
    boxless: list[dict] = []  # targets without a bbox: filled below in one batched call
    for rid, record in _index_by_id(records, "ground truth").items():
        size = _image_size(record, rid)
        rounds = record.get("rounds")
        if not isinstance(rounds, list) or not rounds:
            raise EvalInputError("'rounds' must be a non-empty list", record_id=rid)
        parsed_rounds = []
        for k, rnd in enumerate(rounds):
            targets = rnd.get("targets", [])
            if not isinstance(targets, list):
                raise EvalInputError("'targets' must be a list", record_id=rid, round_index=k)
            parsed_targets = []
            for t_i, target in enumerate(targets):
                if not isinstance(target, dict):
                    raise EvalInputError(f"target {t_i} is not an object", record_id=rid, round_index=k)
                rle = _checked_rle(target.get("rle"), size, f"target {t_i} mask", rid, k)
                ignore = target.get("ignore_rle")
                ignore = None if ignore is None else _checked_rle(ignore, size, f"target {t_i} ignore mask", rid, k)
                # REC Acc@0.5 scores against the annotation's own box when the record has it
                box_field = "ann_bbox" if target.get("ann_bbox") is not None else "bbox"
                bbox = target.get(box_field)
                bbox = None if bbox is None else _checked_box(bbox, f"target {t_i} {box_field}", rid, k)
                parsed_targets.append({"rle": rle, "bbox": bbox, "ignore": ignore,
                                       "box_derived": bool(target.get("box_derived", False))})
                if bbox is None:
                    boxless.append(parsed_targets[-1])
            refs = rnd.get("refs", [])
            if not isinstance(refs, list) or not all(isinstance(r, int) and 0 <= r < k for r in refs):
                raise EvalInputError(f"'refs' must list earlier round indices (0..{k - 1}), got {refs!r}",
                                     record_id=rid, round_index=k)
            parsed_rounds.append({
                "index": k,
                "type": str(rnd.get("type") or "unknown"),
                "question": str(rnd.get("question", "")),
                "refs": refs,
                "targets": parsed_targets,
            })
        out.append({"id": rid, "image": record.get("image"), "size": size, "rounds": parsed_rounds})
    for target, box in zip(boxless, rle_ops.boxes_xywh([t["rle"] for t in boxless]).tolist(), strict=True):
        target["bbox"] = box
    return out


def parse_gcg_ground_truth(records: Sequence[dict]) -> list[dict]:
    """Validate GCG records: ``{"id", "image", "size", "caption", "phrases": [str], "masks": [rle]}``."""
    out = []
    for rid, record in _index_by_id(records, "ground truth").items():
        size = _image_size(record, rid)
        caption = record.get("caption")
        if not isinstance(caption, str):
            raise EvalInputError("'caption' must be a string", record_id=rid)
        phrases = record.get("phrases")
        if not isinstance(phrases, list):
            raise EvalInputError("'phrases' must be a list", record_id=rid)
        texts, masks = [], []
        for p_i, phrase in enumerate(phrases):
            if not isinstance(phrase, dict) or not isinstance(phrase.get("text"), str):
                raise EvalInputError(f"phrase {p_i} needs a 'text' string", record_id=rid)
            texts.append(phrase["text"])
            masks.append(_checked_rle(phrase.get("rle"), size, f"phrase {p_i} mask", rid, None))
        out.append({"id": rid, "image": record.get("image"), "size": size, "caption": caption,
                    "phrases": texts, "masks": masks})
    return out


# ---------------------------------------------------------------- predictions


def parse_round_predictions(gt_records: Sequence[dict], pred_records: Sequence[dict], task: str) -> tuple[str, dict[str, dict]]:
    """Check a round-task prediction file against parsed ground truth.

    Returns ``(mode, predictions_by_id)``; each prediction ``{"id", "mode", "rounds": [{"index",
    "text", "masks": [rle], "scores": [float], "boxes": [[x, y, w, h]] | None}]}``.
    """
    gt_by_id = {g["id"]: g for g in gt_records}
    pred_by_id = _index_by_id(pred_records, "predictions")
    _same_ids(gt_by_id, pred_by_id)
    modes = set()
    parsed: dict[str, dict] = {}
    for rid, gt in gt_by_id.items():
        pred = pred_by_id[rid]
        if pred.get("task", task) != task:
            raise EvalInputError(f"prediction is for task {pred.get('task')!r}, evaluating {task!r}", record_id=rid)
        mode = pred.get("mode", MODE_OWN)
        if mode not in MODES:
            raise EvalInputError(f"'mode' must be one of {MODES}, got {mode!r}", record_id=rid)
        modes.add(mode)
        rounds = pred.get("rounds")
        if not isinstance(rounds, list) or len(rounds) != len(gt["rounds"]):
            got = len(rounds) if isinstance(rounds, list) else rounds
            raise EvalInputError(f"prediction has {got} rounds, the ground truth {len(gt['rounds'])}", record_id=rid)
        parsed_rounds = []
        for k, rnd in enumerate(rounds):
            if not isinstance(rnd, dict):
                raise EvalInputError("round is not an object", record_id=rid, round_index=k)
            masks_in = rnd.get("masks", [])
            if not isinstance(masks_in, list):
                raise EvalInputError("'masks' must be a list", record_id=rid, round_index=k)
            masks = [_checked_rle(m, gt["size"], f"predicted mask {i}", rid, k) for i, m in enumerate(masks_in)]
            scores = _checked_scores(rnd.get("scores"), len(masks), rid, k)
            boxes = rnd.get("boxes")
            if boxes is not None:
                if not isinstance(boxes, list) or len(boxes) != len(masks):
                    raise EvalInputError(f"'boxes' must be null or a list of {len(masks)} boxes",
                                         record_id=rid, round_index=k)
                boxes = [_checked_box(b, f"box {i}", rid, k) for i, b in enumerate(boxes)]
            parsed_rounds.append({"index": k, "text": str(rnd.get("text", "")), "masks": masks,
                                  "scores": scores, "boxes": boxes})
        parsed[rid] = {"id": rid, "mode": mode, "rounds": parsed_rounds}
    if len(modes) > 1:
        raise EvalInputError(f"a prediction file must hold one mode, this one mixes {sorted(modes)}")
    return (modes.pop() if modes else MODE_OWN), parsed


def parse_gcg_predictions(gt_records: Sequence[dict], pred_records: Sequence[dict]) -> dict[str, dict]:
    """Check a GCG prediction file against parsed ground truth.

    Returns predictions by id: ``{"id", "caption", "phrases": [str], "masks": [rle], "scores": [float]}``.
    """
    gt_by_id = {g["id"]: g for g in gt_records}
    pred_by_id = _index_by_id(pred_records, "predictions")
    _same_ids(gt_by_id, pred_by_id)
    parsed = {}
    for rid, gt in gt_by_id.items():
        pred = pred_by_id[rid]
        if pred.get("task", "gcg") != "gcg":
            raise EvalInputError(f"prediction is for task {pred.get('task')!r}, evaluating 'gcg'", record_id=rid)
        masks_in = pred.get("masks", [])
        if not isinstance(masks_in, list):
            raise EvalInputError("'masks' must be a list", record_id=rid)
        masks = [_checked_rle(m, gt["size"], f"predicted mask {i}", rid, None) for i, m in enumerate(masks_in)]
        phrases = pred.get("phrases", [])
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise EvalInputError("'phrases' must be a list of strings", record_id=rid)
        caption = pred.get("caption")
        if caption is None:
            # The caption can always be rebuilt from the text.
            from .gcg import parse_grounded_answer

            caption = parse_grounded_answer(str(pred.get("text", "")))[0]
        parsed[rid] = {"id": rid, "caption": str(caption), "phrases": list(phrases), "masks": masks,
                       "scores": _checked_scores(pred.get("scores"), len(masks), rid, None)}
    return parsed


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON Lines through a temporary file and ``os.replace``."""
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
