"""What a video run leaves on disk: per-frame masks as COCO RLE (the predictions format of
``segllm.eval.video``) and an overlay GIF.

- ``prediction_record``: one JSON Lines record of ``segllm.eval.video``'s predictions file.
- ``write_overlay_gif``: the frames with the masks drawn in, at most ``max_frames`` of them
  (spread evenly) scaled to at most ``max_side`` pixels (small frames enlarged to 256 so the
  label leaves them visible), so a long video gives a small file; written atomically.
"""

from __future__ import annotations

import io
import os

from ..files import write_bytes_atomic
from ..masks import decode, render_overlay
from .sampling import evenly_spaced


def prediction_record(*, video: str, expression: str, result) -> dict:
    """A ``VideoResult`` as a record of the predictions file (``segllm.eval.video``)."""
    return {"video": video, "expression": expression, "frames": list(result.frame_names),
            "masks": list(result.masks), "target_frame": result.target_frame,
            "text": result.target.reply.text}


def write_overlay_gif(path: str | os.PathLike, frames, masks: list[dict], *,
                      label: str | None = None, max_frames: int = 120, max_side: int = 320,
                      frame_ms: int = 100) -> int:
    """Write the overlay GIF; returns how many frames it holds."""
    from PIL import Image

    if len(masks) != len(frames):
        raise ValueError(f"{len(masks)} masks for {len(frames)} frames")
    pictures = []
    for i in evenly_spaced(len(frames), max_frames):
        # small frames are enlarged first so the label does not hide them
        picture = render_overlay(frames.frame(i), [decode(masks[i])],
                                 labels=[label] if label else None, min_side=min(256, max_side))
        scale = min(1.0, max_side / max(picture.size))
        if scale < 1.0:
            size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            picture = picture.resize(size, Image.Resampling.BILINEAR)
        pictures.append(picture.convert("P", palette=Image.Palette.ADAPTIVE))
    buffer = io.BytesIO()
    pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=frame_ms, loop=0)
    write_bytes_atomic(path, buffer.getvalue())
    return len(pictures)
