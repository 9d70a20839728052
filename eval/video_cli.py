"""``segllm eval revos|mevis``: score a predictions file, or run a model and score it.

    segllm eval revos --data ReVOS/meta_expressions_valid_.json --predictions pred.jsonl --output out/
    segllm eval mevis --data valid_u/meta_expressions.json --model ckpt/ --output out/ --overlays 5

``--data`` is the split's ``meta_expressions`` file; ``mask_dict.json`` (and ReVOS's
``mask_dict_foreground.json``) are read beside it unless ``--mask-dict`` / ``--foreground``
say otherwise, frames from ``JPEGImages/`` there unless ``--images`` says otherwise
(``segllm.data_builders.video`` has the layout). With ``--model`` every expression is
segmented (``segllm.video.pipeline``; asked as ``segllm build-data revos-frames`` phrases
it for training) and the predictions are written to
``OUTPUT/predictions.jsonl`` first (``segllm.eval.video`` documents the format), with an overlay
GIF for each of the first ``--overlays`` expressions. Then ``metrics.json`` (per expression
and per type) and ``metrics.md``.

Like ``eval/cli.py``, this module imports only argparse at import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VIDEO_TASKS = ("revos", "mevis")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``segllm eval`` takes for the video tasks only."""
    group = parser.add_argument_group("video tasks (revos, mevis)")
    group.add_argument("--mask-dict", help="mask_dict.json (default: beside --data)")
    group.add_argument("--foreground", help="revos: mask_dict_foreground.json (default: beside "
                       "--data when there; else R uses the union of the video's objects)")
    group.add_argument("--candidates", type=int, default=8,
                       help="with --model: frames the query is asked on to choose the target")
    group.add_argument("--global-frames", type=int, default=8,
                       help="with --model: VISA's global reference frames (over the video)")
    group.add_argument("--local-frames", type=int, default=4,
                       help="with --model: VISA's local reference frames (around the target)")
    group.add_argument("--propagation", choices=("reprompt", "sam2"), default="reprompt",
                       help="with --model: reprompt (weight-free) or sam2 (needs sam2)")
    group.add_argument("--sam2-config", help="with --propagation sam2: SAM2 model config")
    group.add_argument("--sam2-checkpoint", help="with --propagation sam2: SAM2 weights")
    group.add_argument("--overlays", type=int, default=0,
                       help="with --model: write an overlay GIF for the first N expressions")


def run_video(args: argparse.Namespace) -> int:
    """Score (and with ``--model`` first predict) a ReVOS / MeViS split; 2 on bad input."""
    from segllm.data_builders.video import VideoDataError, load_video_set
    from segllm.images import InputError

    from .errors import EvalInputError

    if args.predictions and len(args.predictions) != 1:
        print("error: video tasks take one --predictions file", file=sys.stderr)
        return 2
    try:
        data = load_video_set(args.task, args.data, mask_dict_path=args.mask_dict,
                              foreground_path=args.foreground, frames_root=args.images)
        if args.limit is not None:
            data.expressions = data.expressions[:args.limit]
        output = Path(args.output)
        prediction_file = Path(args.predictions[0]) if args.predictions else \
            output / "predictions.jsonl"
        if not args.predictions:
            predict(args, data, prediction_file)
        summary = score(args, data, prediction_file, output)
    except (VideoDataError, EvalInputError, InputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def predict(args, data, prediction_file: Path) -> None:
    """Segment every expression with the model and write the predictions file."""
    from segllm.commands.video import make_segmenter
    from segllm.data_builders.video_frames import question_for
    from segllm.pipeline import GenerationConfig, SegLLMPipeline
    from segllm.records import AtomicWriter
    from segllm.shipped import resolve_model_dir
    from segllm.video.outputs import prediction_record, write_overlay_gif

    generation = GenerationConfig(max_new_tokens=args.max_new_tokens or 64)
    pipeline = SegLLMPipeline.from_pretrained(resolve_model_dir(args.model), device=args.device,
                                              generation=generation)
    segmenter = make_segmenter(args, pipeline)
    frames_by_video: dict = {}
    with AtomicWriter(prediction_file) as out:
        for n, e in enumerate(_progress(data.expressions, not args.no_progress)):
            if e.video not in frames_by_video:  # one video's frames cached at a time
                frames_by_video = {e.video: _video_frames(data, e.video)}
            frames = frames_by_video[e.video]
            result = segmenter.segment(frames, question_for(e.text))  # phrased as in training
            out.write(json.dumps(prediction_record(video=e.video, expression=e.expression_id,
                                                   result=result)) + "\n")
            if n < args.overlays:
                name = f"{e.video}_{e.expression_id}".replace("/", "_")
                write_overlay_gif(prediction_file.parent / "overlays" / f"{name}.gif", frames,
                                  result.masks, label=e.text[:24])


def _video_frames(data, video: str):
    """The data set's frames of ``video``, in its order (every file must exist)."""
    from segllm.video.frames import ListedFrames

    from .errors import EvalInputError

    paths = data.frame_paths(video)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EvalInputError(f"video {video!r}: frame {missing[0]} not found "
                             f"({len(missing)} missing); --images sets the frames folder")
    return ListedFrames(paths)


def score(args, data, prediction_file: Path, output: Path) -> str:
    """Score the predictions; write metrics.json and metrics.md; return the markdown."""
    from segllm.files import write_text_atomic

    from .video import markdown_table, read_predictions, score_video_set, summarize

    scores = score_video_set(data, read_predictions(prediction_file))
    summary = summarize(scores)
    metrics = {"task": args.task, "data": str(args.data), "predictions": str(prediction_file),
               "foreground": data.foreground_source, "summary": summary,
               "expressions": [{"video": s.video, "expression": s.expression, "type": s.type,
                                "J": 100 * s.j, "F": 100 * s.f, "J&F": 100 * s.jf,
                                "R": None if s.r is None else 100 * s.r} for s in scores]}
    write_text_atomic(output / "metrics.json", json.dumps(_no_nan(metrics), indent=2) + "\n")
    table = markdown_table(summary, f"{args.task}: {prediction_file.name}")
    write_text_atomic(output / "metrics.md", table)
    return table


def _no_nan(obj):
    """NaN (a figure with nothing to average) as null: JSON has no NaN."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_no_nan(v) for v in obj]
    return obj


def _progress(items, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="expressions", unit="expr")
