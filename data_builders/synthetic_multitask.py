"""Synthetic multi-task scenes as unified (c, b, m) records: things, stuff and referring texts.

Each scene has two or three background regions ("stuff": sky, grass, water, sand, rock; bands
with wavy borders and pixel noise, so no region is one flat colour) and one to four shapes
("things": circle, square or triangle, each in a colour of the synthetic set; kinds a tiny
decoder tells apart at 64 px). Exact by construction: a stuff region's mask is its band minus the shapes over it.

Per scene one record per task of ``tasks``, all on the same image:

- ``panoptic``: every thing (text: its kind, ``"isthing": true``) and stuff region (text: its
  name, ``"isthing": false``);
- ``instance``: the things only;
- ``semantic``: one mask per class present (things of a kind merged);
- ``referring``: one annotation per thing whose colour and kind are unique in the scene, text
  from a template captioner ("the red circle"), plus each stuff region ("the sky").

``isthing`` (COCO panoptic's name for it) is an extra annotation field the query-type
statistic reads; the unified schema (``segllm.records``) allows extra fields.

    python -m segllm.data_builders.synthetic_multitask --output data/synthetic-multitask --num 400
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from segllm.files import atomic_directory
from segllm.masks import encode_rle, mask_to_bbox
from segllm.records import AtomicWriter, validate_unified, write_json

from .base import BuildError, BuildStats, check_replaceable, require_records
from .synthetic import COLOURS, shape_mask

THING_KINDS = ("circle", "square", "triangle")
STUFF_COLOURS: dict[str, tuple[int, int, int]] = {
    "sky": (150, 200, 240), "grass": (110, 165, 80), "water": (60, 110, 170),
    "sand": (215, 195, 150), "rock": (125, 120, 115),
}
TASKS = ("panoptic", "instance", "semantic", "referring")
OUTPUTS = ("images", "synthetic_multitask.jsonl", "synthetic_multitask.summary.json")
SOURCE = "synthetic-multitask"
MIN_STUFF_PIXELS = 40


@dataclass
class Segment:
    """One drawn region: its class text, whether it is a thing, its colour name (things) and
    its mask."""

    text: str
    isthing: bool
    mask: np.ndarray
    colour: str | None = None

    def annotation(self, text: str | None = None) -> dict:
        return {"text": text or self.text, "bbox": mask_to_bbox(self.mask),
                "rle": encode_rle(self.mask), "isthing": self.isthing}


@dataclass
class MultitaskScene:
    image: np.ndarray
    segments: list[Segment]

    @property
    def things(self) -> list[Segment]:
        return [s for s in self.segments if s.isthing]

    @property
    def stuff(self) -> list[Segment]:
        return [s for s in self.segments if not s.isthing]


def stuff_bands(rng: random.Random, size: int) -> list[tuple[str, np.ndarray]]:
    """Two or three horizontal bands of distinct stuff classes with wavy borders."""
    names = rng.sample(sorted(STUFF_COLOURS), rng.randint(2, 3))
    cuts = sorted(rng.uniform(0.25, 0.75) * size for _ in range(len(names) - 1))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    label = np.zeros((size, size), dtype=np.int64)
    for cut in cuts:
        wave = cut + rng.uniform(1, 0.08 * size) * np.sin(
            xs * rng.uniform(1.0, 3.0) * 2 * math.pi / size + rng.uniform(0, 2 * math.pi))
        label += ys > wave
    return [(name, label == k) for k, name in enumerate(names)]


def place_things(rng: random.Random, size: int, count: int) -> list[Segment]:
    """Up to ``count`` non-overlapping shapes (a placement that overlaps is tried again, up
    to 30 times)."""
    things: list[Segment] = []
    taken = np.zeros((size, size), dtype=bool)
    for _ in range(30 * count):
        if len(things) == count:
            break
        r = rng.uniform(0.12, 0.2) * size
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        kind = rng.choice(THING_KINDS)
        mask = shape_mask(kind, cx, cy, r, size)
        if (mask & taken).any() or mask.sum() < 12:
            continue
        taken |= mask
        things.append(Segment(kind, True, mask, colour=rng.choice(sorted(COLOURS))))
    return things


def generate_multitask_scene(rng: random.Random, image_size: int = 64) -> MultitaskScene:
    """Stuff bands, then shapes over them; pixel noise on the whole image."""
    size = image_size
    image = np.zeros((size, size, 3), dtype=np.float64)
    bands = stuff_bands(rng, size)
    for name, mask in bands:
        image[mask] = STUFF_COLOURS[name]
    things = place_things(rng, size, rng.randint(1, 4))
    covered = np.zeros((size, size), dtype=bool)
    for thing in things:
        image[thing.mask] = COLOURS[thing.colour]
        covered |= thing.mask
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, 8.0, size=image.shape)
    pixels = np.clip(image + noise, 0, 255).astype(np.uint8)
    stuff = [Segment(name, False, mask & ~covered) for name, mask in bands
             if (mask & ~covered).sum() >= MIN_STUFF_PIXELS]
    return MultitaskScene(image=pixels, segments=things + stuff)


def template_caption(segment: Segment) -> str:
    """The template captioner: "the red circle" for a thing, "the sky" for stuff."""
    return f"the {segment.colour} {segment.text}" if segment.isthing else f"the {segment.text}"


def task_annotations(scene: MultitaskScene, task: str) -> list[dict]:
    """The annotations of ``scene`` for one task (see the module docstring)."""
    if task == "panoptic":
        return [s.annotation() for s in scene.segments]
    if task == "instance":
        return [s.annotation() for s in scene.things]
    if task == "semantic":
        merged: dict[str, Segment] = {}
        for s in scene.segments:
            if s.text in merged:
                merged[s.text] = Segment(s.text, s.isthing, merged[s.text].mask | s.mask)
            else:
                merged[s.text] = s
        return [s.annotation() for s in merged.values()]
    if task == "referring":
        captions = [template_caption(s) for s in scene.segments]
        return [s.annotation(text) for s, text in zip(scene.segments, captions, strict=True)
                if captions.count(text) == 1]
    raise BuildError(f"synthetic-multitask: unknown task {task!r}; one of {', '.join(TASKS)}")


def scene_records(scene: MultitaskScene, *, index: int, seed: int, image_path: str,
                  tasks: Sequence[str]) -> list[dict]:
    """One validated unified record per task (a task with no annotation is left out)."""
    size = scene.image.shape[0]
    records = []
    for task in tasks:
        annotations = task_annotations(scene, task)
        if not annotations:
            continue
        records.append(validate_unified({
            "id": f"{SOURCE}-{seed}-{index:06d}-{task}", "image": image_path, "height": size,
            "width": size, "source": SOURCE, "task": task, "annotations": annotations,
            "meta": {"synthetic": True}}))
    return records


def generate_multitask(num: int, seed: int, image_size: int = 64,
                       tasks: Sequence[str] = ("panoptic", "referring"), start: int = 0
                       ) -> Iterator[tuple[list[dict], np.ndarray]]:
    """(records, image) of scenes ``start`` .. ``start + num - 1``; scene i depends only on
    (seed, i)."""
    for index in range(start, start + num):
        rng = random.Random(f"{SOURCE}:{seed}:{index}")
        scene = generate_multitask_scene(rng, image_size)
        yield scene_records(scene, index=index, seed=seed, image_path=f"images/{index:06d}.png",
                            tasks=tasks), scene.image


def write_synthetic_multitask(output_dir: str | os.PathLike, *, num: int, seed: int,
                              image_size: int = 64,
                              tasks: Sequence[str] = ("panoptic", "referring"),
                              allow_empty: bool = False) -> BuildStats:
    """``images/*.png``, ``synthetic_multitask.jsonl`` and its summary under ``output_dir``,
    built beside it and swapped in whole (a folder holding other files is refused)."""
    from PIL import Image

    if num < 0:
        raise BuildError(f"synthetic-multitask: --num must be >= 0, got {num}")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not tasks:
        raise BuildError(f"synthetic-multitask: --tasks {list(tasks)}: use some of {list(TASKS)}")
    stats = BuildStats(source=SOURCE)
    check_replaceable(output_dir, OUTPUTS, "a synthetic-multitask build")
    with atomic_directory(output_dir) as build_dir:
        os.makedirs(build_dir / "images")
        with AtomicWriter(build_dir / "synthetic_multitask.jsonl") as out:
            for records, image in generate_multitask(num, seed, image_size, tasks):
                Image.fromarray(image).save(build_dir / records[0]["image"], compress_level=1)
                for record in records:
                    out.write_record(record)
                    stats.count_written(record)
        require_records(stats, output_dir, allow_empty)
        write_json(build_dir / "synthetic_multitask.summary.json", stats.to_dict())
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segllm.data_builders.synthetic_multitask",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--num", type=int, default=400, help="scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--tasks", nargs="+", default=["panoptic", "referring"], choices=TASKS)
    args = parser.parse_args(argv)
    try:
        stats = write_synthetic_multitask(args.output, num=args.num, seed=args.seed,
                                          image_size=args.image_size, tasks=args.tasks)
    except (BuildError, OSError) as err:
        print(f"synthetic-multitask: {err}", file=sys.stderr)
        return 2
    print(f"wrote {stats.written} records to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
