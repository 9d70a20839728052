"""Video reasoning segmentation scores (ReVOS, MeViS) from a predictions file any model can write.

The predictions file is JSON Lines, one record per expression::

    {"video": "0a7a4b4e",                 # the video's name in meta_expressions.json
     "expression": "3",                   # the expression's id there
     "frames": ["00000", "00001", ...],   # every frame of the video, in the data set's order
     "masks": [{"size": [h, w], "counts": "..."}, ...]}   # COCO RLE, one per frame, frame size

Optional: ``"target_frame"`` (the frame the model segmented first) and ``"text"`` (its
answer), kept for inspection. An empty mask is a valid prediction ("not in this frame").

Scores (``eval/video_metrics.py`` defines J, F and R per frame): an expression's J, F and R
are means over its frames, J&F their mean; a type's figure is the mean over its expressions.
``overall`` follows VISA's ``tools/eval_revos.py``: the mean of the ``referring`` and
``reasoning`` figures when both are present (ReVOS), otherwise the mean over every scored
expression (MeViS, where every expression is ``referring``). ReVOS's ``type_id`` 2
expressions (``other``) get their own row and stay out of ``overall``, as in VISA.

Every problem raises ``EvalInputError`` naming the file, the line or the (video, expression).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from segllm import masks as rle_ops
from segllm.records import RecordError, iter_jsonl

from .errors import EvalInputError
from .video_metrics import BOUND_TH, frame_scores

OVERALL_TYPES = ("referring", "reasoning")
METRICS = ("J", "F", "J&F", "R")


@dataclass(frozen=True)
class ExpressionScore:
    """One expression's scores (means over its frames; R is None without foreground masks)."""

    video: str
    expression: str
    type: str
    j: float
    f: float
    r: float | None

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def read_predictions(path: str | os.PathLike) -> dict[tuple[str, str], dict]:
    """Predictions by (video, expression), each checked for its fields (not yet its sizes)."""
    out: dict[tuple[str, str], dict] = {}
    try:
        for line, record in iter_jsonl(path):
            where = f"{path}, line {line}"
            key = _prediction_key(record, where)
            if key in out:
                raise EvalInputError(f"{where}: a second prediction for video {key[0]!r}, "
                                     f"expression {key[1]!r}")
            out[key] = record
    except RecordError as exc:
        raise EvalInputError(str(exc)) from None
    return out


def _prediction_key(record: dict, where: str) -> tuple[str, str]:
    for name in ("video", "expression"):
        if not isinstance(record.get(name), str):
            raise EvalInputError(f"{where}: '{name}' must be a string")
    frames, masks = record.get("frames"), record.get("masks")
    if not isinstance(frames, list) or not isinstance(masks, list) or len(frames) != len(masks):
        raise EvalInputError(f"{where}: 'frames' and 'masks' must be lists of the same length")
    return record["video"], record["expression"]


def score_expression(*, video: str, expression: str, type: str, predicted: Sequence[dict],
                     target: Sequence[dict], foreground: Sequence[dict] | None = None,
                     bound_th: float = BOUND_TH) -> ExpressionScore:
    """Scores of one expression from per-frame RLEs (decoded one frame at a time)."""
    if len(predicted) != len(target):
        raise EvalInputError(f"video {video!r}, expression {expression!r}: {len(predicted)} "
                             f"predicted masks for {len(target)} frames")
    js, fs, rs = [], [], []
    for i, (pred_rle, gt_rle) in enumerate(zip(predicted, target, strict=True)):
        gt = rle_ops.decode(gt_rle)
        where = f"video {video!r}, expression {expression!r}, frame {i}"
        try:
            pred = rle_ops.decode_checked(pred_rle, gt.shape, where)
        except rle_ops.MaskError as exc:
            raise EvalInputError(str(exc) if str(exc).startswith("video") else f"{where}: {exc}"
                                 ) from None
        fg = rle_ops.decode(foreground[i]) if foreground is not None else None
        scores = frame_scores(pred, gt, fg, bound_th)
        js.append(scores.j)
        fs.append(scores.f)
        if scores.r is not None:
            rs.append(scores.r)
    return ExpressionScore(video=video, expression=expression, type=type, j=float(np.mean(js)),
                           f=float(np.mean(fs)), r=float(np.mean(rs)) if rs else None)


def score_video_set(video_set, predictions: dict[tuple[str, str], dict], *,
                    bound_th: float = BOUND_TH, progress=None) -> list[ExpressionScore]:
    """Score every expression of a loaded ``VideoSet`` (``segllm.data_builders.video``).

    Every expression needs a prediction and every prediction an expression; its frame names
    must be the video's.
    """
    wanted = {e.key for e in video_set.expressions}
    extra = sorted(set(predictions) - wanted)
    if extra:
        raise EvalInputError(f"prediction for video {extra[0][0]!r}, expression {extra[0][1]!r}, "
                             f"which the data set does not have ({len(extra)} such)")
    scores = []
    foregrounds: dict[str, list[dict]] = {}
    for e in (progress or _identity)(video_set.expressions):
        record = predictions.get(e.key)
        if record is None:
            raise EvalInputError(f"no prediction for video {e.video!r}, expression "
                                 f"{e.expression_id!r}")
        if tuple(record["frames"]) != e.frames:
            raise EvalInputError(f"video {e.video!r}, expression {e.expression_id!r}: the "
                                 "prediction's 'frames' are not the video's frames, in order")
        if e.video not in foregrounds:
            foregrounds = {e.video: video_set.foreground_masks(e.video)}  # one video at a time
        scores.append(score_expression(
            video=e.video, expression=e.expression_id, type=e.type, predicted=record["masks"],
            target=video_set.target_masks(e), foreground=foregrounds[e.video],
            bound_th=bound_th))
    return scores


def summarize(scores: Iterable[ExpressionScore]) -> dict[str, dict[str, float]]:
    """Per type and ``overall``: J, F, J&F and R in percent, and the expression count."""
    scores = list(scores)
    table: dict[str, dict[str, float]] = {}
    for kind in sorted({s.type for s in scores}):
        table[kind] = _means([s for s in scores if s.type == kind])
    present = [t for t in OVERALL_TYPES if t in table]
    if len(present) == len(OVERALL_TYPES):
        overall = {m: (table[present[0]][m] + table[present[1]][m]) / 2 for m in METRICS}
        overall["expressions"] = sum(table[t]["expressions"] for t in present)
        table["overall"] = overall
    else:
        table["overall"] = _means([s for s in scores if s.type != "other"])
    return table


def _means(scores: list[ExpressionScore]) -> dict[str, float]:
    if not scores:
        return {**{m: math.nan for m in METRICS}, "expressions": 0}
    rs = [s.r for s in scores if s.r is not None]
    return {"J": 100 * float(np.mean([s.j for s in scores])),
            "F": 100 * float(np.mean([s.f for s in scores])),
            "J&F": 100 * float(np.mean([s.jf for s in scores])),
            "R": 100 * float(np.mean(rs)) if rs else math.nan,
            "expressions": len(scores)}


def markdown_table(summary: dict[str, dict[str, float]], title: str) -> str:
    """The summary as a markdown table (percent, one row per type, ``overall`` last)."""
    lines = [f"# {title}", "", "| type | J | F | J&F | R | expressions |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for kind, row in summary.items():
        cells = " | ".join("n/a" if math.isnan(row[m]) else f"{row[m]:.2f}" for m in METRICS)
        lines.append(f"| {kind} | {cells} | {int(row['expressions'])} |")
    return "\n".join(lines) + "\n"


def _identity(items):
    return items
