"""The synthetic video set: answers follow the motion that drew the clips; ReVOS's layout."""

from __future__ import annotations

import numpy as np
import pytest

from segllm import masks as rle_ops
from segllm.data_builders.cli import main as build_data
from segllm.data_builders.synthetic_video import generate_videos, write_synthetic_videos
from segllm.data_builders.video import load_video_set


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def test_answers_hold_in_the_drawn_masks():
    checked = 0
    for _, clip, questions in generate_videos(12, seed=3, frames=8, size=64):
        for text, targets, type_id in questions:
            if type_id == 2:
                assert targets == []
                assert text.removeprefix("the ") not in {s.description for s in clip.shapes}
                continue
            (i,) = targets
            if "ends up on the left" in text:
                xs = [s.path[-1][0] for s in clip.shapes]
                assert xs[i] == min(xs)
                checked += 1
            if "moving to the right" in text:
                assert clip.shapes[i].path[-1][0] > clip.shapes[i].path[0][0]
                checked += 1
            if "does not move" in text:
                assert np.allclose(clip.shapes[i].path[0], clip.shapes[i].path[-1])
                checked += 1
    assert checked >= 3


def test_same_seed_same_clips():
    a = [(n, c.frames.tobytes(), q) for n, c, q in generate_videos(2, seed=5, frames=4)]
    b = [(n, c.frames.tobytes(), q) for n, c, q in generate_videos(2, seed=5, frames=4)]
    assert a == b


def test_written_set_loads_as_revos(tmp_path):
    counts = write_synthetic_videos(tmp_path, num=3, seed=0, frames=5, size=48)
    data = load_video_set("revos", tmp_path / "meta_expressions_train_.json")
    assert counts["videos"] == 3 and len(data.expressions) == counts["records_written"]
    assert {e.type for e in data.expressions} == {"referring", "reasoning", "other"}
    e = next(e for e in data.expressions if e.type == "referring")
    masks = [rle_ops.decode(r) for r in data.target_masks(e)]
    assert len(masks) == 5 and masks[0].shape == (48, 48) and any(m.any() for m in masks)
    frame = data.frame_paths(e.video)[0]
    assert frame.is_file()
    # the visible mask of a shape is coloured in the frame (JPEG: roughly)
    from PIL import Image

    pixels = np.asarray(Image.open(frame), dtype=np.int32)
    background = pixels[~rle_ops.decode(data.foreground_masks(e.video)[0])].mean(axis=0)
    assert np.abs(pixels[masks[0]].mean(axis=0) - background).sum() > 30


def test_cli_builds_and_refuses_bad_sizes(tmp_path, capsys):
    assert build_data(["synthetic-video", "--output", str(tmp_path), "--num", "2",
                       "--frames", "3", "--image-size", "32"]) == 0
    assert (tmp_path / "meta_expressions_train_.json").is_file()
    assert build_data(["synthetic-video", "--output", str(tmp_path), "--frames", "1"]) == 2
    assert "--frames >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("frames", [2, 6])
def test_masks_are_visible_parts(frames):
    (_, clip, _), = generate_videos(1, seed=11, frames=frames, size=40)
    for t in range(frames):
        stack = np.stack([m[t] for m in clip.masks])
        assert stack.sum(axis=0).max() <= 1  # a pixel belongs to one shape at most
