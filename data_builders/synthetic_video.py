"""A seeded synthetic video set: coloured shapes moving in straight lines, with questions about
their appearance, their motion and where they start or end up, written in ReVOS's layout.

Each clip holds 2 to 4 shapes of distinct descriptions ("red circle"), each moving at a
constant velocity (or standing still) over ``frames`` frames; a later shape is drawn over an
earlier one, and each shape's mask is what stays visible. Questions, each answered exactly
from the motion that drew the clip:

- referring (``type_id`` 0): "the red circle";
- reasoning (``type_id`` 1): "which shape is moving to the right?", "the shape that ends up
  on the left", "the shape that starts at the top", "which shape does not move?" — asked only
  when exactly one shape fits, by a margin of ``MARGIN`` of the frame;
- no target (``type_id`` 2, as ReVOS has): a description of a shape that is not in the clip.

Output (``segllm.data_builders.video`` reads it back with format ``revos``)::

    OUT/JPEGImages/<video>/<frame>.jpg, OUT/mask_dict.json, OUT/mask_dict_foreground.json,
    OUT/meta_expressions_<split>_.json

    write_synthetic_videos("out/", num=100, seed=0, frames=16)
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from segllm.files import atomic_write
from segllm.masks import encode_rle

from .coco_format import SourceError
from .synthetic import BACKGROUNDS, COLOURS, KIND_NOUNS, shape_mask

KINDS = ("circle", "triangle", "square", "pentagon", "hexagon")
MARGIN = 0.12  # a fact ("on the left") is asked only when it holds by this fraction of the frame
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


@dataclass
class MovingShape:
    """One shape: its look, its radius, and its centre in every frame."""

    kind: str
    colour: str
    radius: float
    path: np.ndarray  # (T, 2) centre (x, y) per frame

    @property
    def description(self) -> str:
        return f"{self.colour} {KIND_NOUNS.get(self.kind, self.kind)}"

    @property
    def direction(self) -> str | None:
        """The main direction of motion, or None for a shape that stays put."""
        dx, dy = self.path[-1] - self.path[0]
        if math.hypot(dx, dy) < 1.0:
            return None
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"


@dataclass
class Clip:
    """Frames, per-shape visible masks per frame, and the shapes."""

    frames: np.ndarray  # (T, S, S, 3) uint8
    masks: list[list[np.ndarray]]  # [shape][frame] -> (S, S) bool
    shapes: list[MovingShape]


def generate_clip(rng: random.Random, *, frames: int = 16, size: int = 64) -> Clip:
    """Draw one clip: 2 to 4 shapes, each moving straight (or still) inside the frame."""
    looks = rng.sample([(k, c) for k in KINDS for c in sorted(COLOURS)], rng.randint(2, 4))
    shapes = []
    for kind, colour in looks:
        r = rng.uniform(0.08, 0.13) * size
        start = np.array([rng.uniform(r, size - r), rng.uniform(r, size - r)])
        end = start if rng.random() < 0.25 else \
            np.array([rng.uniform(r, size - r), rng.uniform(r, size - r)])
        t = np.linspace(0.0, 1.0, frames)[:, None]
        shapes.append(MovingShape(kind, colour, r, start + t * (end - start)))
    background = BACKGROUNDS[rng.choice(sorted(BACKGROUNDS))]
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = background
    masks: list[list[np.ndarray]] = [[] for _ in shapes]
    for t in range(frames):
        drawn = [shape_mask(s.kind, *s.path[t], s.radius, size) for s in shapes]
        for i, (shape, region) in enumerate(zip(shapes, drawn, strict=True)):
            video[t][region] = COLOURS[shape.colour]
            covered = np.logical_or.reduce(drawn[i + 1:]) if i + 1 < len(drawn) else False
            masks[i].append(region & ~covered)  # later shapes are drawn on top
    return Clip(frames=video, masks=masks, shapes=shapes)


def clip_questions(clip: Clip, rng: random.Random, size: int) -> list[tuple[str, list[int], int]]:
    """(question, indices of the shapes it names, ReVOS type_id) for one clip."""
    shapes = clip.shapes
    out = [(f"the {s.description}", [i], 0) for i, s in enumerate(shapes)]
    for word, _ in DIRECTIONS.items():
        movers = [i for i, s in enumerate(shapes) if s.direction == word]
        if len(movers) == 1:
            out.append((f"which shape is moving {'to the ' + word if word in ('left', 'right') else word}?",
                        movers, 1))
    still = [i for i, s in enumerate(shapes) if s.direction is None]
    if len(still) == 1:
        out.append(("which shape does not move?", still, 1))
    for when, t in (("ends up", -1), ("starts", 0)):
        for side, axis, sign in (("on the left", 0, -1), ("on the right", 0, 1),
                                 ("at the top", 1, -1), ("at the bottom", 1, 1)):
            best = _unique_extreme([s.path[t][axis] * sign for s in shapes], MARGIN * size)
            if best is not None:
                out.append((f"the shape that {when} {side}", [best], 1))
    present = {s.description for s in shapes}
    absent = [f"{c} {KIND_NOUNS.get(k, k)}" for k in KINDS for c in sorted(COLOURS)
              if f"{c} {KIND_NOUNS.get(k, k)}" not in present]
    out.append((f"the {rng.choice(absent)}", [], 2))
    return out


def _unique_extreme(values: list[float], margin: float) -> int | None:
    """Index of the largest value when it beats the runner-up by ``margin``."""
    order = sorted(range(len(values)), key=lambda i: values[i], reverse=True)
    if len(order) < 2 or values[order[0]] - values[order[1]] < margin:
        return None
    return order[0]


def generate_videos(num: int, seed: int, *, frames: int = 16, size: int = 64
                    ) -> Iterator[tuple[str, Clip, list[tuple[str, list[int], int]]]]:
    """``(video name, clip, questions)`` for ``num`` clips; the same seed gives the same clips."""
    for index in range(num):
        rng = random.Random(f"synthetic-video-{seed}-{index}")
        clip = generate_clip(rng, frames=frames, size=size)
        yield f"clip{index:06d}", clip, clip_questions(clip, rng, size)


def write_synthetic_videos(output: str | os.PathLike, *, num: int, seed: int, frames: int = 16,
                           size: int = 64, split: str = "train") -> dict:
    """Write ``num`` clips in ReVOS's layout under ``output``; returns a summary (videos,
    expressions as ``records_written``, expressions per type)."""
    from PIL import Image

    if num < 1 or frames < 2 or size < 16:
        raise SourceError(f"synthetic-video needs --num >= 1, --frames >= 2 and --image-size "
                          f">= 16; got {num}, {frames} and {size}")

    videos, mask_dict, foreground = {}, {}, {}
    counts = {"videos": 0, "records_written": 0, "referring": 0, "reasoning": 0, "no_target": 0}
    names = [f"{t:05d}" for t in range(frames)]
    for video, clip, questions in generate_videos(num, seed, frames=frames, size=size):
        folder = os.path.join(output, "JPEGImages", video)
        os.makedirs(folder, exist_ok=True)
        for name, frame in zip(names, clip.frames, strict=True):
            Image.fromarray(frame).save(os.path.join(folder, f"{name}.jpg"), quality=95)
        anno_ids = []
        for per_frame in clip.masks:
            anno = str(len(mask_dict))
            mask_dict[anno] = [encode_rle(m) if m.any() else None for m in per_frame]
            anno_ids.append(anno)
        foreground[video] = {"masks_rle": [
            encode_rle(np.logical_or.reduce([m[t] for m in clip.masks])) for t in range(frames)]}
        expressions = {}
        for k, (text, targets, type_id) in enumerate(questions):
            expressions[str(k)] = {"exp": text, "obj_id": targets,
                                   "anno_id": [int(anno_ids[i]) for i in targets],
                                   "type_id": type_id}
            counts[("referring", "reasoning", "no_target")[type_id]] += 1
        videos[video] = {"vid_id": counts["videos"], "frames": names, "expressions": expressions}
        counts["videos"] += 1
        counts["records_written"] += len(expressions)  # one expression per record
    _dump(os.path.join(output, "mask_dict.json"), mask_dict)
    _dump(os.path.join(output, "mask_dict_foreground.json"), foreground)
    _dump(os.path.join(output, f"meta_expressions_{split}_.json"), {"videos": videos})
    return counts


def _dump(path: str, data) -> None:
    with atomic_write(path) as f:
        json.dump(data, f)
