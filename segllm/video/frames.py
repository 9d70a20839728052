"""Video input: a folder of frames or a video file, read lazily, with a bounded frame cache.

    frames = open_video("clip.mp4", fps=2)          # or a folder of images, stride=3
    len(frames), frames.names[0], frames.frame(10)  # an RGB PIL image, read when asked

- A **folder** holds one image per frame (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``),
  ordered by file name (ReVOS, MeViS and DAVIS name frames ``00000.jpg`` ...). A frame's name is
  its file stem. ``fps`` needs the source's rate, so a folder takes ``stride`` only.
- A **video file** is decoded with PyAV (``av``; ``pip install av``), which is optional: without
  it, a clear error says so. ``fps`` keeps about that many frames per second of the stream's
  average rate; ``stride`` keeps every n-th frame. Names are the kept frames' indices in the
  file (``00000``, ``00003``, ...). Decoding is sequential: asking for an earlier frame than the
  last one decoded starts again from the beginning.
- **Memory**: at most ``cache_frames`` decoded frames are held (least recently used ones are
  dropped), and a video of more than ``max_frames`` kept frames is refused (raise the stride).

Frames are read in their stored orientation (``orientation="stored"``): video frames carry no
EXIF, and data-set masks are on the stored pixels.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ..images import ImageLimits, InputError, load_image

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_CACHE_FRAMES = 32
DEFAULT_MAX_FRAMES = 5000


class VideoInputError(InputError):
    """A video path, option or file that cannot be read as frames."""


class FrameSource:
    """Frames of one video, read on demand and cached (at most ``cache_frames`` at a time)."""

    def __init__(self, names: list[str], *, cache_frames: int, limits: ImageLimits):
        if not names:
            raise VideoInputError("the video has no frames")
        if cache_frames < 1:
            raise VideoInputError(f"cache_frames must be >= 1, got {cache_frames}")
        self.names = names
        self.cache_frames = cache_frames
        self.limits = limits
        self._cache: OrderedDict[int, object] = OrderedDict()

    def __len__(self) -> int:
        return len(self.names)

    def frame(self, index: int):
        """Frame ``index`` (0-based among the kept frames) as an RGB PIL image."""
        if not 0 <= index < len(self.names):
            raise IndexError(f"frame {index} out of range: the video has {len(self.names)} frames")
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image = self._read(index)
        self._cache[index] = image
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return image

    def __iter__(self) -> Iterator:
        for i in range(len(self)):
            yield self.frame(i)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames (of the first one; frames of one video share a size)."""
        first = self.frame(0)
        return first.height, first.width

    @property
    def cached(self) -> int:
        return len(self._cache)

    def _read(self, index: int):
        raise NotImplementedError


class ListedFrames(FrameSource):
    """Frames from a list of image files, in the list's order (a data set's frames)."""

    def __init__(self, files: list[str | os.PathLike], *,
                 cache_frames: int = DEFAULT_CACHE_FRAMES, limits: ImageLimits | None = None):
        self.files = [Path(f) for f in files]
        super().__init__([p.stem for p in self.files], cache_frames=cache_frames,
                         limits=limits or ImageLimits())

    def _read(self, index: int):
        try:
            return load_image(self.files[index], orientation="stored", limits=self.limits)
        except InputError as exc:
            raise VideoInputError(f"{self.files[index]}: {exc}") from None


class FolderFrames(ListedFrames):
    """A folder of frame images, sorted by name, every ``stride``-th kept."""

    def __init__(self, folder: Path, *, stride: int, max_frames: int, cache_frames: int,
                 limits: ImageLimits):
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS)
        if not files:
            raise VideoInputError(f"{folder}: no frame images ({', '.join(FRAME_EXTENSIONS)})")
        _check_count(len(files[::stride]), max_frames, folder)
        super().__init__(files[::stride], cache_frames=cache_frames, limits=limits)


class VideoFileFrames(FrameSource):
    """A video file decoded with PyAV; the kept frames are ``keep`` (indices in the file)."""

    def __init__(self, path: Path, *, stride: int, fps: float | None, max_frames: int,
                 cache_frames: int, limits: ImageLimits):
        self.av = _import_av()
        self.path = path
        rate, total = self._probe()
        step = stride if fps is None else max(1, round(rate / fps)) if rate else stride
        self.keep = list(range(0, total, step))
        _check_count(len(self.keep), max_frames, path)
        self._decoder: Iterator | None = None
        self._position = -1  # index in the file of the last decoded frame
        super().__init__([f"{i:05d}" for i in self.keep], cache_frames=cache_frames, limits=limits)

    def _probe(self) -> tuple[float, int]:
        """(average frame rate, frame count), counting frames by demuxing when not stored."""
        try:
            with self.av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                rate = float(stream.average_rate or 0)
                total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        except (self.av.error.FFmpegError, IndexError) as exc:
            raise VideoInputError(f"{self.path}: not a readable video ({exc})") from None
        if total == 0:
            raise VideoInputError(f"{self.path}: the video has no frames")
        return rate, total

    def _read(self, index: int):
        wanted = self.keep[index]
        if self._decoder is None or wanted <= self._position:
            self._decoder = self._decode_all()
            self._position = -1
        for position, frame in self._decoder:
            self._position = position
            if position == wanted:
                return load_image(frame.to_ndarray(format="rgb24"), orientation="stored",
                                  limits=self.limits)
        raise VideoInputError(f"{self.path}: frame {wanted} could not be decoded")

    def _decode_all(self) -> Iterator:
        container = self.av.open(str(self.path))
        try:
            yield from enumerate(container.decode(video=0))
        finally:
            container.close()


def open_video(path: str | os.PathLike, *, stride: int = 1, fps: float | None = None,
               max_frames: int = DEFAULT_MAX_FRAMES, cache_frames: int = DEFAULT_CACHE_FRAMES,
               limits: ImageLimits | None = None) -> FrameSource:
    """Frames of a folder or a video file (see the module docstring for the options)."""
    path = Path(path)
    if stride < 1:
        raise VideoInputError(f"stride must be >= 1, got {stride}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise VideoInputError(f"fps must be a positive number, got {fps}")
    limits = limits or ImageLimits()
    if path.is_dir():
        if fps is not None:
            raise VideoInputError(f"{path}: a folder of frames has no frame rate; use stride")
        return FolderFrames(path, stride=stride, max_frames=max_frames,
                            cache_frames=cache_frames, limits=limits)
    if path.is_file():
        return VideoFileFrames(path, stride=stride, fps=fps, max_frames=max_frames,
                               cache_frames=cache_frames, limits=limits)
    raise VideoInputError(f"{path}: no such folder of frames or video file")


def _check_count(count: int, max_frames: int, where) -> None:
    if count > max_frames:
        raise VideoInputError(f"{where}: {count} frames after striding, more than max_frames "
                              f"({max_frames}); raise the stride or lower the fps")


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoInputError("reading a video file needs PyAV (pip install av); or pass a "
                              "folder of frames") from None
    return av
