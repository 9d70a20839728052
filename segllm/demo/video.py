"""The web demo's video input: a video file and a query through the video path
(``segllm.video``: the target frame chosen by the query, VISA's reference frames, the mask
carried to every frame), answered with an overlay GIF and the masks to download.

``segment_video`` is what ``SegLLMDemo.segment_video`` (the page's "Video" section) calls; it
needs no browser. What a visitor may cost is bounded as for images: the upload's bytes (the
server's limit), each frame's pixels (``ImageLimits``), and the frames: a video of more than
``max_frames`` is read at a stride that keeps at most that many. A file that is not a
readable video, or a video file without PyAV, gets a message, not a stack trace.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

VIDEO_TYPES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
"""Video files the page offers to upload (PyAV reads more)."""

MAX_VIDEO_FRAMES = 48
"""Default for the frames a video is read at most: a longer one is strided."""

GIF_FRAMES = 48
"""Frames the overlay GIF shows at most (spread over the video)."""


@dataclass
class VideoAnswer:
    """What one query over a video gives the page."""

    status: str  # markdown
    gif: Path | None = None  # the overlay GIF
    masks: Path | None = None  # one JSON Lines record: a COCO RLE per frame


def open_capped(path: str | Path, *, max_frames: int, limits):
    """The frames of a video file, every n-th one when it has more than ``max_frames``;
    returns (frames, stride)."""
    from segllm.video.frames import open_video

    # counting the frames is a demux, without decoding: cheap even for a long video
    every = open_video(path, max_frames=10**7, limits=limits, cache_frames=max_frames)
    stride = max(1, math.ceil(len(every) / max_frames))
    if stride == 1:
        return every, 1
    return open_video(path, stride=stride, max_frames=max_frames, limits=limits,
                      cache_frames=max_frames), stride


def segment_video(segmenter, path: str | None, query: str, folder: Path, *, max_frames: int,
                  limits) -> VideoAnswer:
    """Run ``query`` over the video at ``path`` with a ``VideoSegmenter``; the GIF and masks
    are written into ``folder``."""
    from segllm.files import write_text_atomic
    from segllm.images import InputError
    from segllm.masks import decode
    from segllm.video.outputs import prediction_record, write_overlay_gif

    if not path:
        return VideoAnswer("Upload a video first.")
    if not query or not query.strip():
        return VideoAnswer("Type what to segment in the video first.")
    try:
        frames, stride = open_capped(path, max_frames=max_frames, limits=limits)
        result = segmenter.segment(frames, query.strip())
    except InputError as err:  # VideoInputError and ImageError included
        return VideoAnswer(f"**Refused:** {html.escape(str(err))}")
    record = prediction_record(video=Path(path).stem or "video", expression="0", result=result)
    masks = folder / "masks.jsonl"
    write_text_atomic(masks, json.dumps(record) + "\n")
    gif = folder / "overlay.gif"
    write_overlay_gif(gif, frames, result.masks, max_frames=GIF_FRAMES)
    covered = sum(bool(decode(m).any()) for m in result.masks)
    return VideoAnswer(_status(result, stride=stride, covered=covered), gif=gif, masks=masks)


def _status(result, *, stride: int, covered: int) -> str:
    count = len(result.frame_names)
    kept = f"{count} frames" + (f" (every {_ordinal(stride)} frame)" if stride > 1 else "")
    if result.reference_frames_in_llm:
        names = ", ".join(html.escape(result.frame_names[i]) for i in result.reference_frames)
        seen = f"The LLM also saw reference frames {names}."
    else:
        seen = "This model takes no reference frames: the LLM saw the target frame alone."
    return (f"{kept}. Target frame {html.escape(result.target_frame)}: "
            f"“{html.escape(result.target.reply.text)}”. {seen} "
            f"Mask on {covered} of {count} frames.")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
