"""``segllm eval instance|detection|panoptic|semantic|referring|foreground``: score unified tasks.

    segllm eval instance --data data/unified/coco.unified.jsonl --predictions pred.jsonl --output out/
    segllm eval panoptic --data val/synthetic_multitask.jsonl --model runs/querymeld --output out/

``--data`` holds unified records (``segllm build-data SOURCE --split val --records unified``),
``--predictions`` one record per scored image in the format of ``segllm.eval.unified``.
``--model`` is a decoder-only QueryMeld folder (``segllm train`` with a ``kind: decoder``
recipe): it answers every scored image (``segllm.eval.unified_inference``; images under
``--images``, default the folder of ``--data``), and its predictions are written to
``predictions.jsonl`` in ``--output`` and scored like a file. Writes ``metrics.json``,
``metrics.md`` (printed) and ``metrics.png``: the precision-recall curves (instance,
detection), PQ per category (panoptic), IoU per class (semantic) or the histogram of
per-expression IoU (referring, foreground).

Like ``eval/cli.py``, this module imports only argparse at import time.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

UNIFIED_TASKS = ("instance", "detection", "panoptic", "semantic", "referring", "foreground")


def run_unified(args: argparse.Namespace) -> int:
    """Score ``args.predictions``, or what ``args.model`` predicts, against ``args.data``; 0, or
    2 on bad input (one line)."""
    from segllm.files import check_writable_dir

    from .errors import EvalInputError
    from .unified import load_ground_truth, load_predictions, score

    if args.model is None and (not args.predictions or len(args.predictions) != 1):
        print(f"error: segllm eval {args.task} scores one --predictions file (the format is in "
              "segllm.eval.unified), or what --model (a decoder-only QueryMeld folder) "
              "predicts", file=sys.stderr)
        return 2
    try:
        check_writable_dir(args.output)
        ground_truth, others, unscored = load_ground_truth(args.data, args.task, limit=args.limit)
        prediction_file = (predict_with_model(args, ground_truth) if args.model is not None
                           else Path(args.predictions[0]))
        predictions = load_predictions(prediction_file, args.task, ground_truth, unscored)
        metrics = score(args.task, ground_truth, predictions)
    except (EvalInputError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    metrics = {"task": args.task, "data": str(args.data), "predictions": str(prediction_file),
               **({"model": str(args.model)} if args.model is not None else {}),
               "n_records_other_tasks": dict(sorted(others.items()))} | metrics
    markdown = write_outputs(Path(args.output), metrics)
    print(markdown)
    return 0


def predict_with_model(args: argparse.Namespace, ground_truth) -> Path:
    """``--model``'s predictions for the scored records, written to ``OUTPUT/predictions.jsonl``
    (atomically) after every image was checked; returns the file."""
    import json

    from segllm.files import write_text_atomic
    from segllm.image_check import check_record_images
    from segllm.records import iter_jsonl

    from .unified import predictions_from_model
    from .unified_inference import QueryMeldPredictor

    predictor = QueryMeldPredictor.from_dir(args.model, device=args.device)
    scored = {gt.id for gt in ground_truth}
    records = {r["id"]: r for _, r in iter_jsonl(args.data) if r.get("id") in scored}
    images = args.images if args.images is not None else Path(args.data).parent
    progress = not args.no_progress
    check_record_images(args.data, list(records.values()), images, progress=progress)
    rows = predictions_from_model(predictor, args.task, ground_truth, records, images,
                                  progress=progress)
    path = Path(args.output) / "predictions.jsonl"
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_outputs(output: Path, metrics: dict) -> str:
    """``metrics.json``, ``metrics.md`` and ``metrics.png`` in ``output``; returns the markdown."""
    from segllm.files import write_bytes_atomic, write_text_atomic

    from .report import write_json_atomic

    write_json_atomic(output / "metrics.json", metrics)
    markdown = metrics_markdown(metrics)
    write_text_atomic(output / "metrics.md", markdown)
    write_bytes_atomic(output / "metrics.png", metrics_plot(metrics))
    return markdown


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100 * value:.1f}"


HEADLINE = {
    "instance": ("ap", "ap50", "ap75"), "detection": ("ap", "ap50", "ap75"),
    "panoptic": ("pq", "sq", "rq", "pq_things", "pq_stuff"), "semantic": ("miou", "pixel_accuracy"),
    "referring": ("ciou", "giou", "miou"), "foreground": ("ciou", "giou", "miou"),
}


def metrics_markdown(metrics: dict) -> str:
    """The headline figures in percent, and per category / class / source where there are any."""
    task = metrics["task"]
    keys = HEADLINE[task]
    lines = [f"# {task} evaluation", "",
             f"Data: `{metrics['data']}` ({metrics['n_images']} images, {metrics['n_annotations']} "
             f"annotations); predictions: `{metrics['predictions']}` ({metrics['n_predictions']}). "
             "Values in percent.", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
             "| " + " | ".join(_pct(metrics.get(k)) for k in keys) + " |"]
    if metrics.get("n_records_other_tasks"):
        lines += ["", f"Records of other tasks left out: {metrics['n_records_other_tasks']}."]
    if task == "panoptic" and metrics["per_category"]:
        lines += ["", "| category | PQ | SQ | RQ | TP | FP | FN |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {_pct(c['pq'])} | {_pct(c['sq'])} | {_pct(c['rq'])} | {c['tp']} | {c['fp']} | "
                  f"{c['fn']} |" for name, c in metrics["per_category"].items()]
    if task == "semantic":
        lines += ["", "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {_pct(v)} |" for name, v in metrics["per_class_iou"].items()]
    if task in ("referring", "foreground") and len(metrics["per_source"]) > 1:
        lines += ["", "| source | cIoU | gIoU | expressions |", "|---|---|---|---|"]
        lines += [f"| {s} | {_pct(r['ciou'])} | {_pct(r['giou'])} | {r['n_expressions']} |"
                  for s, r in metrics["per_source"].items()]
    return "\n".join(lines) + "\n"


def metrics_plot(metrics: dict) -> bytes:
    """PNG bytes of the task's picture (module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from .report import _figure_png

    task = metrics["task"]
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    if task in ("instance", "detection"):
        curve = metrics.get("pr_curve") or {}
        for key, label in (("iou50", "IoU 0.5"), ("iou75", "IoU 0.75"), ("mean", "mean over 0.5:0.95")):
            if curve.get(key):
                ax.plot(curve["recall"], [math.nan if v is None else v for v in curve[key]], label=label)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        ax.set_title(f"{task}: AP {_pct(metrics['ap'])}")
    elif task in ("panoptic", "semantic"):
        values = ({n: c["pq"] for n, c in metrics["per_category"].items()} if task == "panoptic"
                  else metrics["per_class_iou"])
        names = list(values)
        ax.bar(range(len(names)), [100 * (v if v is not None and math.isfinite(v) else 0) for v in values.values()])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("PQ (%)" if task == "panoptic" else "IoU (%)")
        headline = f"PQ {_pct(metrics['pq'])}" if task == "panoptic" else f"mIoU {_pct(metrics['miou'])}"
        ax.set_title(f"{task}: {headline}")
    else:
        ax.hist([100 * v for v in metrics["per_expression_iou"]], bins=20, range=(0, 100))
        ax.set_xlabel("IoU per expression (%)")
        ax.set_ylabel("expressions")
        ax.set_title(f"{task}: cIoU {_pct(metrics['ciou'])}, gIoU {_pct(metrics['giou'])}")
    return _figure_png(fig)
