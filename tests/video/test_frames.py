"""Video input: a folder of frames, a video file through PyAV, stride, fps, the frame cache."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
from PIL import Image

from segllm.video.frames import VideoInputError, open_video


def _folder(tmp_path, count=6, size=(12, 16)):
    for i in range(count):
        pixels = np.full((*size, 3), i * 20, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i:05d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    return tmp_path


def test_folder_frames_in_name_order_with_stride(tmp_path):
    frames = open_video(_folder(tmp_path), stride=2)
    assert frames.names == ["00000", "00002", "00004"]
    assert frames.size == (12, 16)
    assert np.asarray(frames.frame(1))[0, 0, 0] == 40


def test_cache_holds_at_most_cache_frames(tmp_path):
    frames = open_video(_folder(tmp_path), cache_frames=2)
    for image in frames:
        assert image.size == (16, 12)
        assert frames.cached <= 2
    assert frames.cached == 2


def test_limits_and_bad_options_are_refused(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(VideoInputError, match="more than max_frames"):
        open_video(folder, max_frames=5)
    with pytest.raises(VideoInputError, match="no frame rate"):
        open_video(folder, fps=2)
    with pytest.raises(VideoInputError, match="stride must be"):
        open_video(folder, stride=0)
    with pytest.raises(VideoInputError, match="no such folder"):
        open_video(tmp_path / "missing")
    with pytest.raises(IndexError):
        open_video(folder).frame(6)


def _write_video(path, count=12, rate=6, size=(32, 48)):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height = size[1], size[0]
        stream.pix_fmt = "yuv420p"
        for i in range(count):
            pixels = np.full((*size, 3), 10 + i * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_file_with_stride_fps_and_random_access(tmp_path):
    path = _write_video(tmp_path / "clip.mp4")
    frames = open_video(path)
    assert len(frames) == 12 and frames.size == (32, 48)
    by_fps = open_video(path, fps=2, cache_frames=1)      # 6 fps source: every 3rd frame
    assert by_fps.names == ["00000", "00003", "00006", "00009"]
    late, early = np.asarray(by_fps.frame(3)), np.asarray(by_fps.frame(0))  # backwards: re-decode
    assert abs(int(late.mean()) - (10 + 9 * 20)) < 8
    assert abs(int(early.mean()) - 10) < 8
    assert open_video(path, stride=5).names == ["00000", "00005", "00010"]


def test_video_file_without_pyav_says_what_to_install(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("no av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    with pytest.raises(VideoInputError, match="pip install av"):
        open_video(tmp_path / "clip.mp4")


def test_unreadable_video_file_is_named(tmp_path):
    pytest.importorskip("av")
    (tmp_path / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoInputError, match="clip.mp4: not a readable video"):
        open_video(tmp_path / "clip.mp4")
