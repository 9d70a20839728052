"""Writing results: atomic files, JSON without NaN, the markdown tables and the plots.

Every file is written to a temporary file in its destination folder and moved into place with
``os.replace`` (``segllm.files``), so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from segllm.files import atomic_write, write_bytes_atomic, write_text_atomic  # noqa: F401 (re-exported)


def json_ready(value):
    """A copy with NaN and infinities as ``None`` (strict JSON) and numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, obj) -> None:
    with atomic_write(path) as f:
        json.dump(json_ready(obj), f, indent=2, allow_nan=False)
        f.write("\n")


def print_report(report: dict, output: str | Path | None = None) -> None:
    """A diagnosis report as indented JSON on stdout and, when ``output`` is given, in that
    file (written atomically)."""
    text = json.dumps(report, indent=2)
    if output:
        write_text_atomic(Path(output), text + "\n")
    print(text)


def _fmt(value, scale: float = 100.0) -> str:
    """Percent with one decimal, or an en dash for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value * scale:.1f}"


MODE_TITLES = {"own": "own masks fed back", "gt": "ground-truth references"}


def round_task_markdown(metrics: dict) -> str:
    """Markdown tables of a round task's metrics (values in percent)."""
    modes = list(metrics["modes"])
    lines = [f"# {metrics['task']} evaluation", "",
             f"Data: `{metrics['data']}` ({metrics['n_records']} conversations). "
             f"Pairing of masks with targets: {metrics['pairing']}. Values in percent.", "",
             "| mode | cIoU | gIoU | mIoU | Acc@0.5 | targets |", "|---|---|---|---|---|---|"]
    for mode in modes:
        o = metrics["modes"][mode]["overall"]
        lines.append(f"| {MODE_TITLES.get(mode, mode)} | {_fmt(o['ciou'])} | {_fmt(o['giou'])} | "
                     f"{_fmt(o['miou'])} | {_fmt(o['rec_acc50'])} | {o['n_targets']} |")
    for key, title in (("per_round", "round"), ("per_type", "round type")):
        groups = sorted({g for m in modes for g in metrics["modes"][m][key]},
                        key=lambda g: (0, int(g)) if g.isdigit() else (1, g))
        header = "| " + title + " | " + " | ".join(f"cIoU ({m}) | gIoU ({m})" for m in modes) + " | targets |"
        lines += ["", f"## cIoU / gIoU per {title}", "", header,
                  "|" + "---|" * (2 * len(modes) + 2)]
        for g in groups:
            cells, n = [], 0
            for m in modes:
                row = metrics["modes"][m][key].get(g)
                cells += [_fmt(row["ciou"]) if row else "–", _fmt(row["giou"]) if row else "–"]
                n = row["n_targets"] if row else n
            lines.append(f"| {g} | " + " | ".join(cells) + f" | {n} |")
    no_target = {m: metrics["modes"][m].get("no_target") for m in modes}
    if any(v and v["rounds"] for v in no_target.values()):
        lines += ["", "## \"No such object\" rounds", "",
                  "| mode | answered without a mask | rounds | rate |", "|---|---|---|---|"]
        lines += [f"| {MODE_TITLES.get(m, m)} | {v['without_mask']} | {v['rounds']} | "
                  f"{_fmt(v['rate'])} |" for m, v in no_target.items() if v]
    if any(row["n_targets"] == 0 for m in modes for row in metrics["modes"][m]["per_round"].values()):
        lines += ["", "A group with no targets (only \"no such object\" rounds) has cIoU 0 by LISA's "
                  "definition (sum of I over sum of U + 1e-10); its gIoU says whether the model predicted nothing."]
    return "\n".join(lines) + "\n"


def gcg_markdown(metrics: dict) -> str:
    """Markdown table of GCG metrics (recall, mIoU, AP50, METEOR in percent; CIDEr as is)."""
    lines = [
        "# gcg evaluation", "",
        f"Data: `{metrics['data']}` ({metrics['n_records']} images). "
        f"Text similarity: {metrics['text_similarity_model']}. AP50 scores: {metrics['ap50_scores']}.", "",
        "| matching | mask recall | mIoU | AP50 | METEOR | CIDEr |", "|---|---|---|---|---|---|",
    ]
    for name in ("greedy", "hungarian"):
        m = metrics["matching"][name]
        title = "greedy (GLaMM)" if name == "greedy" else "Hungarian"
        cider = metrics.get("cider")
        cider_txt = "–" if cider is None or not math.isfinite(cider) else f"{cider:.3f}"
        lines.append(f"| {title} | {_fmt(m['mask_recall'])} | {_fmt(m['miou'])} | {_fmt(metrics['ap50'])} | "
                     f"{_fmt(metrics.get('meteor'))} | {cider_txt} |")
    if metrics.get("n_images_phrase_mask_mismatch"):
        lines += ["", f"{metrics['n_images_phrase_mask_mismatch']} images had a different number of phrases and masks."]
    return "\n".join(lines) + "\n"


def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def round_task_plot(metrics: dict) -> bytes:
    """PNG bytes: cIoU and gIoU per round index, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for mode, result in metrics["modes"].items():
        rounds = sorted(result["per_round"], key=int)
        xs = [int(r) for r in rounds]
        for key, label, style in (("ciou", "cIoU", "-o"), ("giou", "gIoU", "--s")):
            ys = [100 * (result["per_round"][r][key] if result["per_round"][r][key] is not None else math.nan) for r in rounds]
            ax.plot(xs, ys, style, label=f"{label} ({MODE_TITLES.get(mode, mode)})")
    ax.set_xlabel("round index (0-based, as in refs)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{metrics['task']}: IoU per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def gcg_plot(metrics: dict) -> bytes:
    """PNG bytes: GCG recall, mIoU (both matchings), AP50 and METEOR as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names, values = [], []
    for match in ("greedy", "hungarian"):
        for key in ("mask_recall", "miou"):
            names.append(f"{key}\n({match})")
            values.append(metrics["matching"][match][key])
    for key in ("ap50", "meteor"):
        names.append(key)
        values.append(metrics.get(key))
    values = [100 * v if v is not None and math.isfinite(v) else 0.0 for v in values]
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title("gcg")
    return _figure_png(fig)
