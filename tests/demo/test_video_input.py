"""The web demo's video input, through ``SegLLMDemo.segment_video`` (what the page's "Video"
section calls): overlay GIF and per-frame masks, long videos strided, bad input told."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segllm import masks as rle_ops


def write_video(path, count: int, size=(32, 48)):
    """A small MPEG-4 clip of a bright square moving right on a dark background."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width, stream.height = size[1], size[0]
        stream.pix_fmt = "yuv420p"
        for i in range(count):
            pixels = np.full((*size, 3), 20, dtype=np.uint8)
            pixels[8:20, 2 + 2 * i:14 + 2 * i] = 230
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_video_query_gives_an_overlay_gif_and_masks_per_frame(demo, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", count=6)
    key, gif, masks, status = demo.segment_video(str(clip), "the bright square", None)
    assert key in demo._chats and "Target frame" in status and "Mask on" in status
    assert "reference frames" in status  # what the LLM saw beside the target
    with Image.open(gif) as picture:
        assert picture.format == "GIF" and picture.n_frames == 6
    (record,) = [json.loads(line) for line in open(masks, encoding="utf-8")]
    assert record["frames"] == [f"{i:05d}" for i in range(6)] and len(record["masks"]) == 6
    assert all(rle_ops.decode(m).shape == (32, 48) for m in record["masks"])
    # a new query replaces the last one's files
    folder = demo._chats[key].folder
    again, *_ = demo.segment_video(str(clip), "the bright square", key)
    assert again != key and key not in demo._chats and not folder.exists()


def test_a_long_video_is_read_at_a_stride(demo, tmp_path):
    from segllm.demo.app import SegLLMDemo

    capped = SegLLMDemo(demo.pipeline, generation=demo.generation, output_root=tmp_path / "out",
                        video_max_frames=4)
    clip = write_video(tmp_path / "long.mp4", count=12)
    _, gif, masks, status = capped.segment_video(str(clip), "the bright square", None)
    assert "4 frames (every 3rd frame)" in status
    (record,) = [json.loads(line) for line in open(masks, encoding="utf-8")]
    assert record["frames"] == ["00000", "00003", "00006", "00009"]
    capped.close()


@pytest.mark.parametrize(("content", "query", "message"), [
    (None, "the square", "Upload a video first."),
    (b"not a video at all", "the square", "**Refused:** "),
    (b"", "   ", "Type what to segment"),
])
def test_bad_video_input_gets_a_message(demo, tmp_path, content, query, message):
    path = None
    if content is not None:
        path = tmp_path / "clip.mp4"
        path.write_bytes(content)
    key, gif, masks, status = demo.segment_video(str(path) if path else None, query, None)
    assert message in status and gif is None and masks is None
    if content:
        assert "not a readable video" in status

