"""ReVOS and MeViS, read in their released formats: ``meta_expressions.json`` + ``mask_dict.json``.

Layout (ReVOS: one folder for both splits; MeViS: one folder per split, e.g. ``valid_u/``)::

    ROOT/JPEGImages/<video>/<frame>.jpg
    ROOT/mask_dict.json                      {"<anno_id>": [RLE or null, one per frame], ...}
    ROOT/mask_dict_foreground.json           ReVOS only: {"<video>": {"masks_rle": [RLE, ...]}}
    ROOT/meta_expressions_valid_.json        ReVOS (also ..._train_.json)
    ROOT/meta_expressions.json               MeViS

``meta_expressions``::

    {"videos": {"<video>": {"vid_id": 0, "frames": ["00000", "00001", ...],
                            "expressions": {"<exp_id>": {"exp": "the cat that jumps",
                                                          "obj_id": [0, 1], "anno_id": [3, 4],
                                                          "type_id": 0}}}}}

- The i-th entry of an annotation's ``mask_dict`` list belongs to the i-th name of the
  video's ``frames`` (in the order given; nothing is re-sorted). ``null`` means the object is
  not in that frame.
- An expression with several ``anno_id`` (MeViS's "the two dogs") is scored against the
  union of their masks, frame by frame.
- ``type_id`` (ReVOS): 0 referring, 1 reasoning, 2 an expression VISA labels "nan" and leaves
  out of every average (``other`` here). MeViS has no types: every expression is ``referring``.
- R (VISA's robustness) needs every frame's foreground. ReVOS ships it
  (``mask_dict_foreground.json``); without it, the foreground is the union of every object
  annotated in the video (every ``anno_id`` of its expressions), said so in ``foreground_source``.

Every problem raises ``VideoDataError`` naming the file, video, expression and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from segllm import masks as rle_ops

FORMATS = ("revos", "mevis")
REVOS_TYPES = {0: "referring", 1: "reasoning", 2: "other"}
FRAME_EXTENSION = ".jpg"


class VideoDataError(ValueError):
    """A ReVOS / MeViS file that does not follow its format; the message says where."""


@dataclass(frozen=True)
class VideoExpression:
    """One referring expression of one video."""

    video: str
    expression_id: str
    text: str
    type: str
    anno_ids: tuple[str, ...]
    frames: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return self.video, self.expression_id


@dataclass
class VideoSet:
    """A loaded ReVOS / MeViS split: expressions, their masks per frame, the frame files."""

    format: str
    meta_path: Path
    frames_root: Path
    expressions: list[VideoExpression]
    mask_dict: dict[str, list[Any]] = field(repr=False)
    foreground_dict: dict[str, list[Any]] | None = field(default=None, repr=False)

    @property
    def foreground_source(self) -> str:
        return "mask_dict_foreground.json" if self.foreground_dict is not None else \
            "union of the video's annotated objects"

    @cached_property
    def videos(self) -> dict[str, tuple[str, ...]]:
        """Video name -> its frame names, in order."""
        return {e.video: e.frames for e in self.expressions}

    def frame_path(self, video: str, frame: str) -> Path:
        return self.frames_root / video / f"{frame}{FRAME_EXTENSION}"

    def frame_paths(self, video: str) -> list[Path]:
        return [self.frame_path(video, f) for f in self.videos[video]]

    def frame_size(self, video: str) -> tuple[int, int]:
        """(H, W) of a video: from any of its masks, else from its first frame's file."""
        for anno in self._video_annos(video):
            for rle in self.mask_dict[anno]:
                if rle is not None:
                    return rle_ops.rle_size(rle)
        if self.foreground_dict is not None and self.foreground_dict.get(video):
            return rle_ops.rle_size(self.foreground_dict[video][0])
        first = self.frame_path(video, self.videos[video][0])
        if not first.is_file():
            raise VideoDataError(f"video {video!r}: no mask gives its size and its first frame "
                                 f"{first} does not exist")
        from PIL import Image

        with Image.open(first) as image:
            return image.height, image.width

    def target_masks(self, expression: VideoExpression) -> list[dict]:
        """One RLE per frame: the union of the expression's objects (empty where none is)."""
        return self._union_per_frame(expression.video, expression.anno_ids)

    def foreground_masks(self, video: str) -> list[dict]:
        """One RLE per frame: every annotated object of the video (R's denominator)."""
        if self.foreground_dict is not None:
            return [rle_ops.normalize_rle(r) for r in self.foreground_dict[video]]
        return self._union_per_frame(video, tuple(self._video_annos(video)))

    def _video_annos(self, video: str) -> list[str]:
        seen: dict[str, None] = {}
        for e in self.expressions:
            if e.video == video:
                seen.update(dict.fromkeys(e.anno_ids))
        return list(seen)

    def _union_per_frame(self, video: str, anno_ids: tuple[str, ...]) -> list[dict]:
        h, w = self.frame_size(video)
        out = []
        for i in range(len(self.videos[video])):
            present = [rle_ops.to_pycoco(self.mask_dict[a][i]) for a in anno_ids
                       if self.mask_dict[a][i] is not None]
            out.append(rle_ops.normalize_rle(rle_ops.union_of(present, h, w)))
        return out


def load_video_set(fmt: str, meta_path: str | os.PathLike, *,
                   mask_dict_path: str | os.PathLike | None = None,
                   foreground_path: str | os.PathLike | None = None,
                   frames_root: str | os.PathLike | None = None) -> VideoSet:
    """Read a ReVOS or MeViS split. ``mask_dict_path`` defaults to ``mask_dict.json`` beside
    the meta file; ``foreground_path`` (ReVOS) to ``mask_dict_foreground.json`` there when it
    exists; ``frames_root`` to ``JPEGImages`` there."""
    if fmt not in FORMATS:
        raise VideoDataError(f"unknown video data format {fmt!r}; expected one of {FORMATS}")
    meta_path = Path(meta_path)
    folder = meta_path.parent
    mask_path = Path(mask_dict_path) if mask_dict_path else folder / "mask_dict.json"
    if foreground_path is None and fmt == "revos" and (folder / "mask_dict_foreground.json").is_file():
        foreground_path = folder / "mask_dict_foreground.json"
    meta = _read_json(meta_path)
    mask_dict = _read_json(mask_path)
    if not isinstance(mask_dict, dict):
        raise VideoDataError(f"{mask_path}: expected an object anno_id -> list of masks")
    expressions = _parse_meta(meta, meta_path, fmt)
    _check_masks(expressions, mask_dict, mask_path)
    foreground = None
    if foreground_path is not None:
        foreground = _parse_foreground(_read_json(Path(foreground_path)), Path(foreground_path),
                                       expressions)
    return VideoSet(format=fmt, meta_path=meta_path,
                    frames_root=Path(frames_root) if frames_root else folder / "JPEGImages",
                    expressions=expressions, mask_dict=mask_dict, foreground_dict=foreground)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VideoDataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise VideoDataError(f"{path}: not valid JSON ({exc})") from None


def _parse_meta(meta: Any, path: Path, fmt: str) -> list[VideoExpression]:
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise VideoDataError(f"{path}: expected an object with 'videos'")
    out = []
    for video, entry in videos.items():
        where = f"{path}: video {video!r}"
        frames = entry.get("frames") if isinstance(entry, dict) else None
        if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
            raise VideoDataError(f"{where}: 'frames' must be a non-empty list of frame names")
        exps = entry.get("expressions")
        if not isinstance(exps, dict):
            raise VideoDataError(f"{where}: 'expressions' must be an object")
        for exp_id, exp in exps.items():
            out.append(_parse_expression(video, str(exp_id), exp, tuple(frames), where, fmt))
    return out


def _parse_expression(video: str, exp_id: str, exp: Any, frames: tuple[str, ...], where: str,
                      fmt: str) -> VideoExpression:
    where = f"{where}, expression {exp_id!r}"
    if not isinstance(exp, dict) or not isinstance(exp.get("exp"), str):
        raise VideoDataError(f"{where}: needs 'exp' (the expression text)")
    annos = exp.get("anno_id")
    if not isinstance(annos, list) or not all(isinstance(a, (int, str)) for a in annos):
        raise VideoDataError(f"{where}: 'anno_id' must be a list of annotation ids")
    kind = "referring"
    if fmt == "revos":
        type_id = exp.get("type_id")
        if type_id not in REVOS_TYPES:
            raise VideoDataError(f"{where}: 'type_id' must be one of {sorted(REVOS_TYPES)}, "
                                 f"got {type_id!r}")
        kind = REVOS_TYPES[type_id]
    return VideoExpression(video=video, expression_id=exp_id, text=exp["exp"].strip(), type=kind,
                           anno_ids=tuple(str(a) for a in annos), frames=frames)


def _check_masks(expressions: list[VideoExpression], mask_dict: dict, path: Path) -> None:
    """Every anno_id has one entry per frame, each null or an RLE of one size per video."""
    checked: set[str] = set()
    for e in expressions:
        for anno in e.anno_ids:
            if anno in checked:
                continue
            where = f"{path}: anno_id {anno!r} (video {e.video!r}, expression {e.expression_id!r})"
            masks = mask_dict.get(anno)
            if not isinstance(masks, list):
                raise VideoDataError(f"{where}: missing, or not a list of masks")
            if len(masks) != len(e.frames):
                raise VideoDataError(f"{where}: {len(masks)} masks for {len(e.frames)} frames")
            _check_rles(masks, where)
            checked.add(anno)


def _check_rles(masks: list, where: str) -> None:
    sizes = set()
    for i, rle in enumerate(masks):
        if rle is None:
            continue
        try:
            rle_ops.to_pycoco(rle)
        except rle_ops.MaskError as exc:
            raise VideoDataError(f"{where}, frame {i}: {exc}") from None
        sizes.add(rle_ops.rle_size(rle))
    if len(sizes) > 1:
        raise VideoDataError(f"{where}: masks of different sizes {sorted(sizes)}")


def _parse_foreground(data: Any, path: Path, expressions: list[VideoExpression]
                      ) -> dict[str, list[Any]]:
    if not isinstance(data, dict):
        raise VideoDataError(f"{path}: expected an object video -> {{'masks_rle': [...]}}")
    frames = {e.video: e.frames for e in expressions}
    out = {}
    for video, n in ((v, len(f)) for v, f in frames.items()):
        entry = data.get(video)
        masks = entry.get("masks_rle") if isinstance(entry, dict) else None
        where = f"{path}: video {video!r}"
        if not isinstance(masks, list) or len(masks) != n or any(m is None for m in masks):
            raise VideoDataError(f"{where}: 'masks_rle' must hold one mask per frame ({n})")
        _check_rles(masks, where)
        out[video] = masks
    return out
