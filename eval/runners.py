"""Benchmark runners: predictions from a model (or a file), metrics, and the report files.

Outputs in the output folder, each written atomically (temporary file + ``os.replace``):

- ``predictions-own.jsonl`` / ``predictions-gt.jsonl`` (round tasks) or ``predictions.jsonl``
  (gcg), only when a model produced them (format: ``segllm.eval.predictions``);
- ``metrics.md`` (markdown tables) and ``per_round.png`` (round tasks) or ``gcg.png``;
- ``metrics.json``, written last: it exists only when everything before it succeeded.

All input is validated before anything is written; bad input raises ``EvalInputError``
naming the record and round.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segllm import masks as rle_ops
from segllm.grounding import GCG_INSTRUCTION  # GLaMM's, when a record has no question

from . import predictions as pio
from . import report
from .errors import EvalInputError
from .gcg import image_scores, mask_ap50, parse_grounded_answer, summarize_images
from .mrseg import evaluate_rounds


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit="rec", dynamic_ncols=True)


def load_image(images_root: str | os.PathLike, record: dict):
    """The record's image as RGB PIL in its stored orientation (the one the data set annotates,
    whatever EXIF says), checked against the record's size."""
    from segllm.images import ImageError
    from segllm.images import load_image as load_any_image

    rel = record.get("image")
    if not isinstance(rel, str) or not rel:
        raise EvalInputError("record has no 'image' path", record_id=record["id"])
    path = Path(images_root) / rel
    if not path.is_file():
        raise EvalInputError(f"image not found: {path}", record_id=record["id"])
    try:
        image = load_any_image(path, orientation="stored")
    except ImageError as exc:
        raise EvalInputError(f"image {path}: {exc}", record_id=record["id"]) from None
    h, w = record["size"]
    if image.size != (w, h):
        raise EvalInputError(f"image {path} is {image.size[1]}x{image.size[0]} (h x w), the record says {h}x{w}",
                             record_id=record["id"])
    return image


def _reply_to_prediction(reply, size: tuple[int, int], rid: str, round_index: int | None) -> dict:
    """Masks as RLE, scores and boxes of a reply, checked against the image size."""
    masks = list(getattr(reply, "masks", None) or [])
    encoded = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != tuple(size):
            raise EvalInputError(f"predicted mask {i} has shape {mask.shape}, the image is {size[0]}x{size[1]}",
                                 record_id=rid, round_index=round_index)
        encoded.append(rle_ops.encode_mask(mask.astype(bool)))
    scores = [float(s) for s in (getattr(reply, "scores", None) or [1.0] * len(masks))]
    if len(scores) != len(masks) or not all(math.isfinite(s) for s in scores):
        raise EvalInputError(f"reply scores {scores!r} are not one finite number per mask ({len(masks)})",
                             record_id=rid, round_index=round_index)
    boxes = getattr(reply, "boxes", None)
    boxes = None if boxes is None else [[float(v) for v in b] for b in boxes]
    return {"text": str(getattr(reply, "text", "")), "masks": encoded, "scores": scores, "boxes": boxes}


def generate_round_predictions(predictor, gt_records: Sequence[dict], images_root, task: str, mode: str, progress: bool = True) -> list[dict]:
    """Run the predictor over every conversation; in mode ``"gt"`` earlier rounds' targets are fed as ``ref_masks``."""
    out = []
    for rec in _progress(gt_records, len(gt_records), f"{task} ({mode})", progress):
        image = load_image(images_root, rec)
        session = predictor.start(image)
        rounds = []
        for rnd in rec["rounds"]:
            if mode == pio.MODE_GT and rnd["refs"]:
                ref_masks = {k: [rle_ops.decode(t["rle"]) for t in rec["rounds"][k]["targets"]] for k in rnd["refs"]}
                reply = session.ask(rnd["question"], ref_masks=ref_masks)
            else:
                reply = session.ask(rnd["question"])
            pred = _reply_to_prediction(reply, rec["size"], rec["id"], rnd["index"])
            rounds.append({"index": rnd["index"], **pred})
        out.append({"id": rec["id"], "task": task, "mode": mode, "rounds": rounds})
    return out


def generate_gcg_predictions(predictor, gt_records: Sequence[dict], images_root, raw_by_id: dict, progress: bool = True) -> list[dict]:
    """One grounded answer per image; phrases and caption parsed from the text as GLaMM does."""
    out = []
    for rec in _progress(gt_records, len(gt_records), "gcg", progress):
        image = load_image(images_root, rec)
        question = raw_by_id[rec["id"]].get("question") or GCG_INSTRUCTION
        reply = predictor.start(image).ask(question)
        pred = _reply_to_prediction(reply, rec["size"], rec["id"], None)
        caption, phrases = parse_grounded_answer(pred["text"])
        out.append({"id": rec["id"], "task": "gcg", "text": pred["text"], "caption": caption,
                    "phrases": phrases, "masks": pred["masks"], "scores": pred["scores"]})
    return out


def _limit(records: list[dict], limit: int | None) -> list[dict]:
    return records if limit is None else records[:limit]


def run_round_task(
    task: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    predictor=None,
    prediction_files: Sequence[str | os.PathLike] = (),
    images: str | os.PathLike | None = None,
    modes: Sequence[str] = (pio.MODE_OWN, pio.MODE_GT),
    pairing: str = "order",
    limit: int | None = None,
    progress: bool = True,
    source_name: str | None = None,
) -> dict:
    """Evaluate ``mrseg`` / ``refer`` / ``reasonseg``; returns the metrics written to ``metrics.json``.

    Give either ``predictor`` (with ``images``; run once per mode in ``modes``) or
    ``prediction_files`` (one per mode; the mode is read from each file).
    """
    if task not in pio.ROUND_TASKS:
        raise ValueError(f"task must be one of {pio.ROUND_TASKS}, got {task!r}")
    if (predictor is None) == (not prediction_files):
        raise ValueError("give exactly one of a predictor or prediction files")
    output = Path(output)
    gt = pio.parse_round_ground_truth(_limit(pio.read_jsonl(data), limit))
    by_mode: dict[str, dict] = {}
    generated: dict[str, list[dict]] = {}
    if predictor is not None:
        if images is None:
            raise ValueError("running a model needs the image root (--images)")
        for mode in modes:
            if mode not in pio.MODES:
                raise ValueError(f"mode must be one of {pio.MODES}, got {mode!r}")
            generated[mode] = generate_round_predictions(predictor, gt, images, task, mode, progress)
            by_mode[mode] = pio.parse_round_predictions(gt, generated[mode], task)[1]
        source = {"model": source_name or getattr(predictor, "name", type(predictor).__name__)}
    else:
        for path in prediction_files:
            records = pio.read_jsonl(path)
            if limit is not None:
                keep = {g["id"] for g in gt}
                records = [r for r in records if r.get("id") in keep]
            mode, parsed = pio.parse_round_predictions(gt, records, task)
            if mode in by_mode:
                raise EvalInputError(f"two prediction files have mode {mode!r}: {path}")
            by_mode[mode] = parsed
        source = {"predictions": [str(p) for p in prediction_files]}
    metrics = {
        "task": task,
        "data": str(data),
        "n_records": len(gt),
        # refer: "standard" is the published protocol (build-data --protocol standard, one
        # expression per one-round record); multi-round MRSeg-style records are not comparable
        "protocol": "standard" if all(len(g["rounds"]) == 1 for g in gt) else "multi-round",
        "pairing": pairing,
        "source": source,
        "modes": {mode: evaluate_rounds(gt, preds, pairing=pairing) for mode, preds in by_mode.items()},
    }
    markdown = report.round_task_markdown(metrics)
    png = report.round_task_plot(metrics)
    for mode, records in generated.items():
        pio.write_jsonl_atomic(output / f"predictions-{mode}.jsonl", records)
    report.write_text_atomic(output / "metrics.md", markdown)
    report.write_bytes_atomic(output / "per_round.png", png)
    report.write_json_atomic(output / "metrics.json", metrics)
    return metrics


def run_gcg(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    predictor=None,
    prediction_file: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    similarity=None,
    bert_dir: str | os.PathLike | None = None,
    captions: bool = True,
    ap_use_scores: bool = False,
    limit: int | None = None,
    progress: bool = True,
    source_name: str | None = None,
    device: str = "cpu",
) -> dict:
    """Evaluate GCG; returns the metrics written to ``metrics.json``.

    ``similarity`` is a ``TextSimilarity``; when None it is resolved from ``bert_dir`` (a local
    bert-base-uncased) or the packaged MiniLM. ``captions=False`` skips METEOR/CIDEr (they need Java).
    """
    from .caption_metrics import caption_scores
    from .text_similarity import resolve_text_similarity

    if (predictor is None) == (prediction_file is None):
        raise ValueError("give exactly one of a predictor or a prediction file")
    output = Path(output)
    raw = _limit(pio.read_jsonl(data), limit)
    gt = pio.parse_gcg_ground_truth(raw)
    generated = None
    if predictor is not None:
        if images is None:
            raise ValueError("running a model needs the image root (--images)")
        generated = generate_gcg_predictions(predictor, gt, images, {r["id"]: r for r in raw}, progress)
        records = generated
        source = {"model": source_name or getattr(predictor, "name", type(predictor).__name__)}
    else:
        records = pio.read_jsonl(prediction_file)
        if limit is not None:
            keep = {g["id"] for g in gt}
            records = [r for r in records if r.get("id") in keep]
        source = {"predictions": str(prediction_file)}
    preds = pio.parse_gcg_predictions(gt, records)
    if similarity is None:
        similarity = resolve_text_similarity(bert_dir, device=device)
    per_image = [image_scores(g, preds[g["id"]], similarity) for g in _progress(gt, len(gt), "gcg metrics", progress)]
    summary = summarize_images(per_image)
    metrics = {
        "task": "gcg",
        "data": str(data),
        "n_records": len(gt),
        "source": source,
        "text_similarity_model": similarity.name,
        "thresholds": {"iou": 0.5, "text_similarity": 0.5, "comparison": ">= (as GLaMM's code)"},
        "matching": {name: summary[name] for name in ("greedy", "hungarian")},
        "primary_matching": "greedy",
        "n_gt_phrases": summary["n_gt_phrases"],
        "n_images_phrase_mask_mismatch": summary["n_images_phrase_mask_mismatch"],
        "ap50": mask_ap50(gt, preds, use_scores=ap_use_scores),
        "ap50_scores": "predicted scores" if ap_use_scores else "constant 1.0 (as GLaMM)",
    }
    if captions:
        metrics.update(caption_scores({g["id"]: [g["caption"]] for g in gt}, {g["id"]: preds[g["id"]]["caption"] for g in gt}))
    else:
        metrics.update({"meteor": None, "cider": None})
    markdown = report.gcg_markdown(metrics)
    png = report.gcg_plot(metrics)
    if generated is not None:
        pio.write_jsonl_atomic(output / "predictions.jsonl", generated)
    report.write_text_atomic(output / "metrics.md", markdown)
    report.write_bytes_atomic(output / "gcg.png", png)
    report.write_json_atomic(output / "metrics.json", metrics)
    return metrics
