"""MRSeg statistics as SegLLM reports them (Table A1 and Fig. A1).

Per source: the images used, the conversations made, the most rounds in one conversation and
the histogram of rounds per conversation. ``segllm build-data`` writes them for every MRSeg
JSONL in its output folder (so a folder that several builds share describes them all):
``mrseg_statistics.json`` and ``mrseg_statistics.png`` (one bar chart of rounds per source).
GCG, unified and video records in the folder are left out.
"""

from __future__ import annotations

import glob
import io
import os
from collections import Counter

from segllm.files import write_bytes_atomic
from segllm.records import RecordError, read_jsonl, record_kind, write_json

STATS_NAME = "mrseg_statistics"


def source_statistics(records) -> dict:
    """``{"images", "conversations", "max_rounds", "rounds_histogram": {"k": n}}`` of one source."""
    images, rounds = set(), Counter()
    for record in records:
        images.add(record["image"])
        rounds[len(record["rounds"])] += 1
    return {"images": len(images), "conversations": sum(rounds.values()),
            "max_rounds": max(rounds, default=0),
            "rounds_histogram": {str(k): rounds[k] for k in sorted(rounds)}}


def folder_statistics(folder: str | os.PathLike) -> dict:
    """Statistics of every MRSeg JSONL in ``folder``, by source name (the file's stem)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), "*.jsonl"))):
        records = [r for r in read_jsonl(path, validate=False) if _is_image_conversation(r)]
        if records:
            out[os.path.splitext(os.path.basename(path))[0]] = source_statistics(records)
    total = list(out.values())
    return {"sources": out,
            "total": {"images": sum(s["images"] for s in total),
                      "conversations": sum(s["conversations"] for s in total),
                      "max_rounds": max((s["max_rounds"] for s in total), default=0)}}


def _is_image_conversation(record) -> bool:
    """An MRSeg record of one image (not GCG, unified, or a video's frames)."""
    try:
        return record_kind(record) == "conversation" and isinstance(record.get("image"), str)
    except RecordError:
        return False


def rounds_plot(stats: dict) -> bytes:
    """PNG bytes: per source, the share of its conversations with each number of rounds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    sources = stats["sources"]
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    longest = max((s["max_rounds"] for s in sources.values()), default=1)
    width = 0.8 / max(len(sources), 1)
    for i, (name, s) in enumerate(sources.items()):
        ks = list(range(1, longest + 1))
        shares = [s["rounds_histogram"].get(str(k), 0) / s["conversations"] for k in ks]
        ax.bar([k - 0.4 + (i + 0.5) * width for k in ks], shares, width=width, label=name)
    ax.set_xlabel("rounds per conversation")
    ax.set_ylabel("share of conversations")
    ax.set_title("MRSeg: distribution of rounds per source")
    ax.set_xticks(range(1, longest + 1))
    if sources:
        ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def write_statistics(folder: str | os.PathLike) -> dict:
    """Write ``mrseg_statistics.json`` and ``.png`` into ``folder`` (atomically); return them."""
    stats = folder_statistics(folder)
    write_json(os.path.join(folder, f"{STATS_NAME}.json"), stats)
    write_bytes_atomic(os.path.join(folder, f"{STATS_NAME}.png"), rounds_plot(stats))
    return stats
