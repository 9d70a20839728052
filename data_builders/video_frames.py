"""Training conversations from a video set: each expression asked on sampled target frames.

VISA trains on a target frame plus 8-12 reference frames per expression, both drawn at
random. For every expression of a ReVOS / MeViS split (``segllm.data_builders.video``, the
synthetic video set included), ``frames_per_expression`` target frames drawn with the seed,
each a one-round MRSeg conversation whose image is that frame, whose one target is the union
of the expression's objects there (several objects, one mask, as the video metrics score them),
and whose ``reference_frames`` are ``reference_frames = (low, high)`` frames of the video
(a count drawn in that range; the target among them, as the inference path's global-local
frames hold it; in temporal order), which the LLM sees as pooled tokens beside the target
(``config.video.tokens_per_frame``). ``(0, 0)`` writes image-only records, for a model that
takes no reference frames. A frame where none of them is
visible gives a "no such object" round, as VISA's empty target frames teach. ``segllm train``
takes the JSONL as is; image paths are relative to the split's folder (the training source's
``image_root``).

Questions: an expression that is a question ("which shape is moving up?") is asked as it is,
with "Please output the segmentation mask."; a phrase ("the red circle") as "Segment the red
circle." (VISA's long and short templates do the same). ReVOS's type ``other`` is written as
``referring`` (MRSeg round types have no ``other``).
"""

from __future__ import annotations

import os
import random
from collections import Counter

from segllm.records import write_jsonl

from .coco_format import SourceError
from .rounds import make_round, target
from .video import VideoDataError, VideoSet, load_video_set

ROUND_TYPE = {"referring": "referring", "reasoning": "reasoning", "other": "referring"}


def question_for(expression: str) -> str:
    """The expression as a question to the model."""
    text = expression.strip()
    if text.endswith("?"):
        return f"{text} Please output the segmentation mask."
    return f"Segment {text[0].lower() + text[1:]}." if text else text


def reference_frame_indices(num_frames: int, target: int, count: int,
                            rng: random.Random) -> list[int]:
    """``min(count, num_frames)`` distinct frames drawn at random, the target always among
    them, sorted (none for ``count`` 0)."""
    if count <= 0:
        return []
    others = [i for i in range(num_frames) if i != target]
    return sorted([target, *rng.sample(others, min(count, num_frames) - 1)])


def frame_conversations(data: VideoSet, *, frames_per_expression: int, seed: int,
                        split: str, reference_frames: tuple[int, int] = (8, 12)
                        ) -> tuple[list[dict], Counter]:
    """The records, and counts of rounds with and without a target."""
    rng = random.Random(f"video-frames-{seed}")
    # its own stream, so the target frames and questions do not depend on the range
    reference_rng = random.Random(f"video-reference-frames-{seed}")
    low, high = reference_frames
    folder = data.meta_path.parent
    records, counts = [], Counter()
    for e in data.expressions:
        masks = data.target_masks(e)
        height, width = data.frame_size(e.video)
        picks = sorted(rng.sample(range(len(e.frames)), min(frames_per_expression, len(e.frames))))
        for t in picks:
            present = masks[t] if _area(masks[t]) else None
            targets = [target(present)] if present else []
            counts["with_target" if targets else "without_target"] += 1
            record = {
                "id": f"{data.format}-{e.video}-{e.expression_id}-{e.frames[t]}",
                "image": _relative(data, e.video, e.frames[t], folder), "height": height,
                "width": width, "source": f"{data.format}-frames", "split": split,
                "rounds": [make_round(question_for(e.text), targets, ROUND_TYPE[e.type], rng,
                                      missing="such object")]}
            chosen = reference_frame_indices(len(e.frames), t, reference_rng.randint(low, high),
                                             reference_rng)
            if chosen:
                record["reference_frames"] = [_relative(data, e.video, e.frames[i], folder)
                                              for i in chosen]
            records.append(record)
    return records, counts


def _relative(data: VideoSet, video: str, frame: str, folder) -> str:
    """A frame's path relative to the split's folder, with forward slashes."""
    return os.path.relpath(data.frame_path(video, frame), folder).replace(os.sep, "/")


def write_video_frames(fmt: str, meta_path: str, output: str, *, frames_per_expression: int,
                       seed: int, split: str, reference_frames: tuple[int, int] = (8, 12)) -> dict:
    """Write ``OUTPUT/<fmt>-frames.jsonl``; returns the summary (``SourceError`` on bad input)."""
    if frames_per_expression < 1:
        raise SourceError(f"--frames must be >= 1, got {frames_per_expression}")
    low, high = reference_frames
    if not 0 <= low <= high or (high > 0 and low < 1):
        raise SourceError(f"--reference-frames wants 0 0 or 1 <= MIN <= MAX, got {low} {high}")
    try:
        data = load_video_set(fmt, meta_path)
        records, counts = frame_conversations(data, frames_per_expression=frames_per_expression,
                                              seed=seed, split=split,
                                              reference_frames=(low, high))
    except VideoDataError as exc:
        raise SourceError(str(exc)) from None
    path = os.path.join(output, f"{fmt}-frames.jsonl")
    written = write_jsonl(path, records, kind="conversation")
    return {"source": f"{fmt}-frames", "records_written": written,
            "expressions": len(data.expressions), "rounds_with_target": counts["with_target"],
            "rounds_without_target": counts["without_target"],
            "reference_frames_per_record": [low, high],
            "image_root": str(data.meta_path.parent)}


def _area(rle: dict) -> int:
    from segllm.masks import rle_area

    return rle_area(rle)
