"""Training curves from a run's ``metrics.jsonl``: losses and per-round validation cIoU.

    python -m segllm.train.curves runs/segllm-shapes --output curves.png
    python -m segllm.train.curves STAGE1 STAGE2 --output curves.png   # stages in sequence
    python -m segllm.train.curves RUN --generated RUN/gen-curve --output curves.png

The left panel shows the total, language (CE), mask (weighted BCE + Dice) and, when the run
has it, the image tokens' word loss (``vision_aux``) against optimizer steps, smoothed by a
running mean; the right one the teacher-forced validation cIoU of every round index
(ground-truth references) and of all rounds together. Several runs are drawn one after the
other (each stage's steps shifted by the steps before it), a dashed line at each boundary.
``--generated DIR``: ``segllm eval mrseg`` outputs in ``DIR/STEP/`` (checkpoints exported by
``python -m segllm.train.export_checkpoint``) add the cIoU of the model's own answers and masks
at those steps to the right panel: what a user gets, beside what teacher forcing measures.
"""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import numpy as np

from .tracking import METRICS_NAME, read_metrics

ROUND_KEY = re.compile(r"^val/ciou_round_(\d+)$")


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (shorter at the start)."""
    if len(values) == 0:
        return values
    cumulative = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def chain_stages(stages: list[list[dict]]) -> tuple[list[dict], list[int]]:
    """Metrics of runs trained one after the other, steps made continuous; and the step at
    which each later stage starts."""
    chained, offset, boundaries = [], 0, []
    for i, metrics in enumerate(stages):
        if i:
            boundaries.append(offset)
        chained += [{**m, "step": m["step"] + offset} for m in metrics]
        offset += max((m["step"] for m in metrics), default=0)
    return chained, boundaries


def generated_ciou(folder: Path) -> list[tuple[int, float]]:
    """(step, cIoU over all rounds) from ``folder/STEP/metrics.json`` written by ``segllm eval
    mrseg``, with the model's own earlier masks fed back; sorted by step."""
    points = []
    for sub in folder.iterdir() if folder.is_dir() else ():
        path = sub / "metrics.json"
        if not (sub.name.isdigit() and path.is_file()):
            continue
        modes = json.loads(path.read_text()).get("modes", {})
        if "own" not in modes:
            raise ValueError(f"{path}: no 'own' mode (run segllm eval mrseg with --ref-mode own or both)")
        points.append((int(sub.name), float(modes["own"]["overall"]["ciou"])))
    if not points:
        raise ValueError(f"{folder}: no STEP/metrics.json from segllm eval mrseg")
    return sorted(points)


def curves_png(metrics: list[dict], title: str = "", smooth: int = 20,
               boundaries: list[int] = (), generated: list[tuple[int, float]] = ()) -> bytes:
    """The two-panel figure as PNG bytes; ``boundaries``: steps where a new stage starts;
    ``generated``: (step, cIoU) of the model's own answers and masks (:func:`generated_ciou`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if "loss" in m]
    val = [m for m in metrics if "val/ciou" in m]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in (("loss", "total"), ("ce_loss", "language (CE)"), ("mask_loss", "mask"),
                       ("aux_loss", "image tokens' words (vision_aux)")):
        have = [m for m in train if key in m]
        if have:
            left.plot([m["step"] for m in have],
                      running_mean(np.array([m[key] for m in have], dtype=np.float64), smooth),
                      label=label)
    left.set_yscale("log")
    left.set_xlabel("optimizer step")
    left.set_ylabel(f"loss (running mean of {smooth} logged values)")
    left.legend()
    left.grid(alpha=0.3)
    rounds = sorted({int(g.group(1)) for m in val for k in m if (g := ROUND_KEY.match(k))})
    val_steps = [m["step"] for m in val]
    for r in rounds:
        right.plot(val_steps, [m.get(f"val/ciou_round_{r}", np.nan) for m in val],
                   label=f"round {r}", alpha=0.8)
    if val:
        right.plot(val_steps, [m["val/ciou"] for m in val], "k-", linewidth=2.5, label="all rounds")
    if generated:
        right.plot([p[0] for p in generated], [p[1] for p in generated], "k--o", linewidth=2,
                   label="all rounds, own answers\nand masks (segllm eval)")
    right.set_ylim(0, 1)
    right.set_xlabel("optimizer step")
    right.set_ylabel("cIoU (validation: teacher-forced, ground-truth references)"
                     if generated else "validation cIoU (ground-truth references)")
    right.legend(fontsize=8, ncol=2)
    right.grid(alpha=0.3)
    for step in boundaries:
        for axis in (left, right):
            axis.axvline(step, color="grey", linestyle="--", linewidth=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="run",
                        help="training output folder(s) (holding metrics.jsonl); several are "
                             "stages trained one after the other")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--title", default="")
    parser.add_argument("--smooth", type=int, default=20)
    parser.add_argument("--generated", metavar="DIR",
                        help="folder of STEP/ subfolders written by segllm eval mrseg: the "
                             "model's own-answer cIoU at those steps, on the right panel")
    args = parser.parse_args(argv)
    stages = []
    for run in args.runs:
        stages.append(read_metrics(Path(run) / METRICS_NAME))
        if not stages[-1]:
            parser.error(f"{run}: no {METRICS_NAME} lines")
    metrics, boundaries = chain_stages(stages)
    try:
        generated = generated_ciou(Path(args.generated)) if args.generated else []
    except ValueError as err:
        parser.error(str(err))
    from segllm.eval.report import write_bytes_atomic

    write_bytes_atomic(Path(args.output), curves_png(metrics, args.title, args.smooth,
                                                     boundaries, generated))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
