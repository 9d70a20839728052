"""``segllm video``: segment what a question describes through a video.

    segllm video --model ckpt/ --video clip.mp4 --fps 2 --query "the dog that jumps last"
    segllm video --video frames/ --stride 2 --script questions.txt      # one query a line

Each query writes ``OUT/query_NN/``: ``masks.jsonl`` (one record of ``segllm.eval.video``'s
predictions format: a COCO RLE per frame), ``overlay.gif`` and ``summary.json`` (the target
frame, the answer, the candidate scores, the reference frames, seconds per stage). Without
``--query`` or ``--script`` queries are read from the terminal, one a line. A video file needs
PyAV (``pip install av``); a folder of frames needs nothing more.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .chat import add_model_arguments

    parser.add_argument("--model", help="directory written by save_pretrained (default: the "
                        "shipped models/segllm-shapes)")
    parser.add_argument("--video", required=True, help="a video file or a folder of frames")
    parser.add_argument("--query", action="append", default=[], help="what to segment; repeatable")
    parser.add_argument("--script", help="file with one query a line (# starts a comment)")
    parser.add_argument("--out", default="video_outputs", help="where each query's files go")
    add_video_input_arguments(parser)
    add_video_model_arguments(parser)
    add_model_arguments(parser)


def add_video_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    parser.add_argument("--fps", type=float, help="video file: keep about this many frames a second")
    parser.add_argument("--max-frames", type=int, default=5000,
                        help="refuse videos with more frames than this after striding")
    parser.add_argument("--cache-frames", type=int, default=32,
                        help="decoded frames held in memory at most")


def add_video_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the video path shared with ``segllm eval revos|mevis``."""
    parser.add_argument("--candidates", type=int, default=8,
                        help="frames the query is asked on to choose the target frame")
    parser.add_argument("--global-frames", type=int, default=8,
                        help="VISA's global reference frames, spread over the video (the LLM "
                             "sees them beside the target when the model takes them)")
    parser.add_argument("--local-frames", type=int, default=4,
                        help="VISA's local reference frames, around the target")
    parser.add_argument("--propagation", choices=("reprompt", "sam2"), default="reprompt",
                        help="reprompt: the decoder on every frame with the same [SEG] "
                             "(weight-free); sam2: SAM2's video predictor (needs sam2)")
    parser.add_argument("--sam2-config", help="SAM2 model config, e.g. configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--sam2-checkpoint", help="SAM2 weights file")


def make_segmenter(args, pipeline):
    """The ``VideoSegmenter`` the options describe (``InputError`` for a bad SAM2 set-up)."""
    from segllm.images import InputError
    from segllm.video.pipeline import VideoSegmenter
    from segllm.video.propagation import Sam2Propagator

    sam2 = None
    if args.propagation == "sam2":
        if not (args.sam2_config and args.sam2_checkpoint):
            raise InputError("--propagation sam2 needs --sam2-config and --sam2-checkpoint")
        sam2 = Sam2Propagator(config=args.sam2_config, checkpoint=args.sam2_checkpoint,
                              device=args.device)
    return VideoSegmenter(pipeline, num_candidates=args.candidates, sam2=sam2,
                          num_global=args.global_frames, num_local=args.local_frames)


def run(args: argparse.Namespace) -> int:
    from segllm.images import InputError
    from segllm.video.frames import open_video

    from .chat import load_pipeline, read_script

    try:
        frames = open_video(args.video, stride=args.stride, fps=args.fps,
                            max_frames=args.max_frames, cache_frames=args.cache_frames)
        queries = list(args.query) + (read_script(Path(args.script)) if args.script else [])
        pipeline = load_pipeline(args)
        segmenter = make_segmenter(args, pipeline)
    except (InputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.video}: {len(frames)} frames of {frames.size[1]}x{frames.size[0]}")
    out = Path(args.out)
    source = queries if queries else _prompts()
    failures = 0
    for number, query in enumerate(source):
        failures += not segment_and_save(segmenter, frames, query, out / f"query_{number:02d}",
                                         video_name=Path(args.video).stem or "video",
                                         expression=str(number))
    return 1 if failures else 0


def segment_and_save(segmenter, frames, query: str, folder: Path, *, video_name: str,
                     expression: str) -> bool:
    """Run one query and write its files; print the reason and return False when refused."""
    from segllm.files import write_text_atomic
    from segllm.images import InputError
    from segllm.masks import decode
    from segllm.video.outputs import prediction_record, write_overlay_gif

    try:
        result = segmenter.segment(frames, query)
    except InputError as err:
        print(f"refused: {err}")
        return False
    record = prediction_record(video=video_name, expression=expression, result=result)
    write_text_atomic(folder / "masks.jsonl", json.dumps(record) + "\n")
    write_overlay_gif(folder / "overlay.gif", frames, result.masks, label=query[:24])
    covered = sum(bool(decode(m).any()) for m in result.masks)
    summary = {"query": query, "answer": result.target.reply.text,
               "target_frame": result.target_frame, "candidates": result.target.candidates,
               "candidate_scores": [s if math.isfinite(s) else None for s in result.target.scores],
               "reference_frames": result.reference_frames,
               "reference_frames_in_llm": result.reference_frames_in_llm,
               "frames_with_mask": covered,
               "seconds": result.timings}
    write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"{query} -> {result.target.reply.text!r}; target frame {result.target_frame}; "
          f"mask on {covered}/{len(result.masks)} frames; {folder}")
    return True


def _prompts():
    while True:
        try:
            line = input("query> ").strip()
        except EOFError:
            print()
            return
        if line in ("/quit", "/exit"):
            return
        if line:
            yield line
