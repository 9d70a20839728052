"""A seeded synthetic multi-round segmentation set: scenes of coloured shapes.

No downloads, fast enough for tests and benchmarks (thousands of 64 px conversations a
second before PNG encoding), and exact: every answer is computed from the masks that drew
the scene, so "the shape closest to the left of <ref:0>" really is left of round 0's target.

A scene holds 3 to 6 top-level shapes on a 3x3 grid (circle, triangle, square, pentagon,
hexagon, "square with a hole"); some contain a smaller shape of another colour (a part: its
whole's mask covers it), and some pairs are linked by a drawn line. Rounds come in every
type of docs/architecture.md ("Record formats"), plus rounds with several targets and
"no such object" rounds. An answer with one target first repeats the question's phrase for it,
then segments it, then names it by colour, kind and grid cell ("The red shape [SEG] is the red
circle at the top left."); answers with several targets name each before its ``[SEG]``
(``echo=False``: every answer so, "It is the red circle at the top left [SEG]."; ``places=False``:
names without the cell).

Python API::

    for record, image in generate_conversations(100, seed=0, min_rounds=3):
        ...  # record: MRSeg dict (image path "images/000000.png"), image: (H, W, 3) uint8

    write_synthetic("out/", num=1000, seed=0)  # out/images/*.png, out/synthetic.jsonl, ...
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from segllm.files import atomic_directory
from segllm.masks import encode_rle, mask_to_bbox
from segllm.records import AtomicWriter, validate_conversation, validate_gcg, write_json

from .base import BuildError, BuildStats, check_replaceable, require_records
from .geometry import RELATIONS, Obj, pick_related
from .rounds import POSITIONAL_QUESTIONS, article, make_round, ref, target

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30),
    "purple": (140, 60, 180), "orange": (245, 130, 30), "cyan": (30, 190, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250), "light gray": (225, 225, 225), "beige": (240, 230, 205),
}
LINE_COLOUR = (60, 60, 60)
CORNERS = {"circle": 0, "triangle": 3, "square": 4, "ring": 4, "pentagon": 5, "hexagon": 6}
"""Shape kinds and their corner counts (a ring is a square with a hole)."""
KIND_NOUNS = {"ring": "square with a hole"}
GRID = 3
PLACES = (("at the top left", "at the top", "at the top right"),
          ("on the left", "in the middle", "on the right"),
          ("at the bottom left", "at the bottom", "at the bottom right"))
"""The words for each cell of the grid, by row then column. A top-level shape lies wholly in
its own cell, so its cell names it uniquely (a part shares its whole's cell)."""


@dataclass
class Shape:
    """One drawn shape. ``mask`` is its region in the image (a whole includes its part)."""

    id: int
    kind: str
    colour: str
    mask: np.ndarray
    parent: int | None = None
    child: int | None = None
    link: int | None = None
    _rle: dict | None = field(default=None, repr=False)
    _obj: Obj | None = field(default=None, repr=False)
    _target: dict | None = field(default=None, repr=False)

    @property
    def noun(self) -> str:
        return KIND_NOUNS.get(self.kind, self.kind)

    @property
    def description(self) -> str:
        return f"{self.colour} {self.noun}"

    def place(self, image_size: int) -> str:
        """Where it is: the words of the grid cell holding its box centre ("at the top left")."""
        cx, cy = self.as_obj().center
        cell = image_size / GRID
        return PLACES[min(GRID - 1, int(cy // cell))][min(GRID - 1, int(cx // cell))]

    @property
    def rle(self) -> dict:
        if self._rle is None:
            self._rle = encode_rle(self.mask)
        return self._rle

    def as_obj(self) -> Obj:
        """Box and area (computed once; the mask never changes after drawing)."""
        if self._obj is None:
            self._obj = Obj(key=self.id, name=self.description, bbox=mask_to_bbox(self.mask),
                            area=float(np.count_nonzero(self.mask)))
        return self._obj

    def as_target(self) -> dict:
        """A fresh target dict (box computed once)."""
        if self._target is None:
            self._target = target(self.rle, label=self.description)
        return dict(self._target)


@dataclass
class Scene:
    """An image and the shapes drawn on it."""

    image: np.ndarray
    shapes: list[Shape]
    background: str

    @property
    def top_level(self) -> list[Shape]:
        return [s for s in self.shapes if s.parent is None]


# --------------------------------------------------------------------------- drawing


def _regular_polygon_mask(xx, yy, cx, cy, r, sides, rotation) -> np.ndarray:
    """Pixels inside a regular polygon: on the inner side of every edge."""
    angles = rotation + 2 * math.pi * np.arange(sides) / sides
    vx, vy = cx + r * np.cos(angles), cy + r * np.sin(angles)
    inside = np.ones(np.broadcast(xx, yy).shape, dtype=bool)
    for i in range(sides):
        x0, y0, x1, y1 = vx[i], vy[i], vx[(i + 1) % sides], vy[(i + 1) % sides]
        inside &= (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
    return inside


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row vectors of pixel-centre coordinates (broadcast to ``(size, size)``)."""
    centres = np.arange(size, dtype=np.float64) + 0.5
    return centres[:, None], centres[None, :]


def shape_mask(kind: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Binary ``(size, size)`` mask of a shape centred at (cx, cy) with radius r."""
    # evaluate only the shape's window: 10x fewer pixels than the whole image at 64 px
    x0, y0 = max(0, int(cx - r) - 1), max(0, int(cy - r) - 1)
    x1, y1 = min(size, int(cx + r) + 2), min(size, int(cy + r) + 2)
    yy, xx = _pixel_centres(size)
    yy, xx = yy[y0:y1], xx[:, x0:x1]
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = _shape_window(kind, xx, yy, cx, cy, r)
    return mask


def _shape_window(kind: str, xx, yy, cx: float, cy: float, r: float) -> np.ndarray:
    if kind == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if kind in ("square", "ring"):
        half = r * 0.85
        outer = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
        if kind == "square":
            return outer
        hole = (np.abs(xx - cx) <= half * 0.45) & (np.abs(yy - cy) <= half * 0.45)
        return outer & ~hole
    sides = {"triangle": 3, "pentagon": 5, "hexagon": 6}[kind]
    return _regular_polygon_mask(xx, yy, cx, cy, r, sides, -math.pi / 2)


def _draw_line(image: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> None:
    steps = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1])) * 2) + 1
    xs = np.clip(np.rint(np.linspace(p0[0], p1[0], steps) - 0.5).astype(int), 0, image.shape[1] - 1)
    ys = np.clip(np.rint(np.linspace(p0[1], p1[1], steps) - 0.5).astype(int), 0, image.shape[0] - 1)
    image[ys, xs] = LINE_COLOUR


def generate_scene(rng: random.Random, image_size: int = 64) -> Scene:
    """Draw 3 to 6 shapes on a grid, some with a part inside, some pairs linked by a line."""
    size = image_size
    cell = size / GRID
    cells = rng.sample(range(GRID * GRID), rng.randint(3, 6))
    background = rng.choice(sorted(BACKGROUNDS))
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[background]
    kinds = sorted(CORNERS)
    colours = sorted(COLOURS)
    shapes: list[Shape] = []
    placements = []
    for c in cells:
        r = rng.uniform(0.30, 0.42) * cell
        jitter = max(0.0, cell / 2 - r - 1)
        cx = (c % GRID + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (c // GRID + 0.5) * cell + rng.uniform(-jitter, jitter)
        kind = rng.choice(kinds)
        whole = Shape(len(shapes), kind, rng.choice(colours), shape_mask(kind, cx, cy, r, size))
        shapes.append(whole)
        placements.append((whole, cx, cy, r))
    # links: a matching between top-level shapes, drawn under the shapes
    top = list(shapes)
    rng.shuffle(top)
    for a, b in zip(top[0::2], top[1::2], strict=False):
        if rng.random() < 0.5:
            a.link, b.link = b.id, a.id
            (pa,) = [(x, y) for s, x, y, _ in placements if s is a]
            (pb,) = [(x, y) for s, x, y, _ in placements if s is b]
            _draw_line(image, pa, pb)
    for whole, cx, cy, r in placements:
        image[whole.mask] = COLOURS[whole.colour]
        # parts: a smaller shape inside a solid whole (not inside a ring's hole)
        if whole.kind != "ring" and rng.random() < 0.35:
            kind = rng.choice(["circle", "square", "triangle"])
            colour = rng.choice([c for c in colours if c != whole.colour])
            inner = shape_mask(kind, cx, cy, r * (0.42 if whole.kind != "triangle" else 0.3), size)
            inner &= whole.mask
            if inner.sum() >= 4:
                part = Shape(len(shapes), kind, colour, inner, parent=whole.id)
                whole.child = part.id
                shapes.append(part)
                image[inner] = COLOURS[colour]
    return Scene(image=image, shapes=shapes, background=background)


# --------------------------------------------------------------------------- rounds


REFERRING_QUESTIONS = ("Segment the {d}.", "Please segment the {d}.", "Where is the {d}?")


class _Conversation:
    """Rounds being built for one scene; each generator returns a round or ``None``."""

    def __init__(self, scene: Scene, rng: random.Random, describe: bool = True,
                 places: bool = True, echo: bool = True):
        self.scene = scene
        self.rng = rng
        self.describe = describe
        self.places = places
        self.echo = echo
        self.rounds: list[dict] = []
        self.targets: list[list[int]] = []  # shape ids per round
        self.by_id = {s.id: s for s in scene.shapes}

    # helpers
    def _unique(self, shapes: list[Shape], key: Callable[[Shape], object]) -> list[Shape]:
        counts: dict[object, int] = {}
        for s in self.scene.shapes:
            counts[key(s)] = counts.get(key(s), 0) + 1
        return [s for s in shapes if counts[key(s)] == 1]

    def _asked(self, question: str) -> bool:
        return any(r["question"] == question for r in self.rounds)

    def _single_target_rounds(self, predicate: Callable[[Shape], bool] = lambda s: True) -> list[int]:
        return [k for k, ids in enumerate(self.targets) if len(ids) == 1 and predicate(self.by_id[ids[0]])]

    def _make(self, question, shapes, kind, refs=(), missing="such shape", echo=None):
        """``echo``: the question's phrase for its target(s), "the red shape" (a (singular,
        plural) pair when the count varies); the answer repeats it when ``self.echo``."""
        if self._asked(question):
            return None
        shapes = sorted(shapes, key=lambda s: (s.as_obj().center, s.id))
        return make_round(question, [s.as_target() for s in shapes], kind, self.rng, refs, missing,
                          describe=self.describe, names=[self._name(s) for s in shapes],
                          echo=echo if self.echo else None), [s.id for s in shapes]

    def _name(self, shape: Shape) -> str:
        """How an answer names a target: its colour and kind, then (``places``) its grid cell.

        The cell gives the state that predicts ``[SEG]`` a key that picks one shape even when
        the kind is misread, and puts earlier targets' places into the history that positional
        rounds reason over.
        """
        if not self.places:
            return shape.description
        return f"{shape.description} {shape.place(self.scene.image.shape[0])}"

    # generators, one per round type
    def referring(self):
        pool = self._unique(self.scene.shapes, lambda s: (s.colour, s.kind))
        pool = [s for s in pool if s.parent is None]
        if not pool:
            return None
        s = self.rng.choice(pool)
        q = self.rng.choice(REFERRING_QUESTIONS)
        return self._make(q.format(d=s.description), [s], "referring", echo=f"the {s.description}")

    def attribute(self):
        options = []
        for s in self._unique(self.scene.shapes, lambda s: s.colour):
            options.append((f"Segment the {s.colour} shape.", s, f"the {s.colour} shape"))
        rings = [s for s in self.scene.shapes if s.kind == "ring"]
        if len(rings) == 1:
            options.append(("Segment the shape that has a hole in it.", rings[0],
                            "the shape with a hole"))
        if not options:
            return None
        q, s, echo = self.rng.choice(options)
        return self._make(q, [s], "attribute", echo=echo)

    def semantic(self):
        by_kind: dict[str, list[Shape]] = {}
        for s in self.scene.shapes:
            by_kind.setdefault(s.kind, []).append(s)
        by_colour: dict[str, list[Shape]] = {}
        for s in self.scene.shapes:
            by_colour.setdefault(s.colour, []).append(s)
        nouns = {k: "squares with a hole" if k == "ring" else f"{k}s" for k in by_kind}
        options = [(f"Segment all the {nouns[k]}.", v, f"the {nouns[k]}")
                   for k, v in by_kind.items() if len(v) > 1]
        options += [(f"Segment every {c} shape.", v, f"the {c} shapes")
                    for c, v in by_colour.items() if len(v) > 1]
        if not options:
            return None
        q, shapes, echo = self.rng.choice(sorted(options, key=lambda o: o[0]))
        return self._make(q, shapes, "semantic", echo=echo)

    def positional(self):
        anchors = self._single_target_rounds(lambda s: s.parent is None)
        if not anchors:
            return None
        k = self.rng.choice(anchors)
        anchor = self.by_id[self.targets[k][0]].as_obj()
        candidates = [s.as_obj() for s in self.scene.top_level]
        relations = list(RELATIONS)
        self.rng.shuffle(relations)
        for relation in relations:
            found = pick_related(anchor, candidates, relation)
            if found is not None:
                q = POSITIONAL_QUESTIONS[relation].format(name="shape", ref=ref(k))
                echo = POSITIONAL_QUESTIONS[relation].format(name="shape", ref="it")
                echo = echo.removeprefix("Segment ").rstrip(".")
                made = self._make(q, [self.by_id[found.key]], "positional", refs=[k], echo=echo)
                if made:
                    made[0]["relation"] = relation
                    return made
        return None

    def interactional(self):
        anchors = self._single_target_rounds(lambda s: s.parent is None)
        if not anchors:
            return None
        k = self.rng.choice(anchors)
        anchor = self.by_id[self.targets[k][0]]
        if self.rng.random() < 0.6:
            linked = [self.by_id[anchor.link]] if anchor.link is not None else []
            q = f"Segment the shape linked to {ref(k)} by a line."
            return self._make(q, linked, "interactional", [k], missing="shape linked to it",
                              echo="the shape linked to it")
        same = [s for s in self.scene.shapes if s.colour == anchor.colour and s.id != anchor.id]
        q = f"Segment the other shapes that have the same colour as {ref(k)}."
        return self._make(q, same, "interactional", [k], missing="other shape of that colour",
                          echo=("the other shape of its colour", "the other shapes of its colour"))

    def hierarchical(self):
        options = []
        for k in self._single_target_rounds():
            s = self.by_id[self.targets[k][0]]
            if s.child is not None:
                noun = self.by_id[s.child].noun
                options.append((f"Segment the {noun} inside {ref(k)}.", s.child, [k],
                                f"the {noun} inside it"))
            if s.parent is not None:
                options.append((f"Segment the whole shape that {ref(k)} is part of.", s.parent, [k],
                                "the whole shape it is part of"))
        wholes = {s.id for s in self._unique(self.scene.top_level, lambda s: (s.colour, s.kind))}
        for s in self.scene.shapes:
            if s.parent in wholes:
                whole = self.by_id[s.parent]
                inside = f"the {s.description} inside the {whole.description}"
                options.append((f"Segment {inside}.", s.id, [], inside))
                contains = f"the shape that contains the {s.description}"
                options.append((f"Segment {contains}.", whole.id, [], contains))
        if not options:
            return None
        q, sid, refs, echo = self.rng.choice(options)
        return self._make(q, [self.by_id[sid]], "hierarchical", refs, echo=echo)

    def reasoning(self):
        top = self.scene.top_level
        options = []
        corners = sorted(top, key=lambda s: -CORNERS[s.kind])
        if len(corners) > 1 and CORNERS[corners[0].kind] > CORNERS[corners[1].kind]:
            options.append(("Which shape has the most corners? Segment it.", corners[0],
                            "the shape with the most corners"))
        if len(corners) > 1 and CORNERS[corners[-1].kind] < CORNERS[corners[-2].kind]:
            options.append(("Segment the shape with the fewest corners.", corners[-1],
                            "the shape with the fewest corners"))
        circles = [s for s in self.scene.shapes if s.kind == "circle"]
        if len(circles) == 1:
            options.append(("Which shape would roll if it were pushed? Segment it.", circles[0],
                            "the shape that would roll"))
        by_area = sorted(top, key=lambda s: -s.as_obj().area)
        if len(by_area) > 1 and by_area[0].as_obj().area > 1.15 * by_area[1].as_obj().area:
            options.append(("Segment the shape that covers the most of the picture.", by_area[0],
                            "the shape that covers the most of the picture"))
        if not options:
            return None
        q, s, echo = self.rng.choice(options)
        return self._make(q, [s], "reasoning", echo=echo)

    def no_target(self):
        present = {(s.colour, s.kind) for s in self.scene.shapes}
        absent = [(c, k) for c in sorted(COLOURS) for k in sorted(CORNERS) if (c, k) not in present]
        colour, kind = self.rng.choice(absent)
        what = f"{colour} {KIND_NOUNS.get(kind, kind)}"
        # the same wordings as a referring round: a wording used only for absent shapes
        # would let the model answer from the words, not the picture
        q = self.rng.choice(REFERRING_QUESTIONS)
        return self._make(q.format(d=what), [], "referring", missing=what, echo=f"the {what}")

    GENERATORS = ("referring", "attribute", "semantic", "positional", "interactional",
                  "hierarchical", "reasoning", "no_target")

    def add_round(self) -> bool:
        """Add one round of a random type (falling back through the others); False if none fits."""
        names = list(self.GENERATORS)
        self.rng.shuffle(names)
        if not self.rounds:  # round 0 cannot refer back; start with a target when possible
            names.remove("no_target")
            names.append("no_target")
        for name in names:
            made = getattr(self, name)()
            if made is not None:
                rnd, ids = made
                rnd.pop("relation", None)
                self.rounds.append(rnd)
                self.targets.append(ids)
                return True
        return False


def scene_to_conversation(scene: Scene, rng: random.Random, record_id: str, image_path: str,
                          num_rounds: int, describe: bool = True, places: bool = True,
                          echo: bool = True) -> dict:
    """An MRSeg record of (up to) ``num_rounds`` rounds about a scene; ``describe``: answers
    name each target (see ``rounds.described_answer``), with its grid cell when ``places``;
    ``echo``: single-target answers repeat the question's phrase, then ``[SEG]``, then the name
    ("The red shape [SEG] is the red circle at the top left.", ``rounds.echoed_answer``);
    without it the name comes first ("It is the red circle at the top left [SEG].")."""
    conversation = _Conversation(scene, rng, describe, places, echo)
    while len(conversation.rounds) < num_rounds and conversation.add_round():
        pass
    size = scene.image.shape[0]
    return {"id": record_id, "image": image_path, "height": size, "width": scene.image.shape[1],
            "source": "synthetic", "split": "train", "rounds": conversation.rounds}


def scene_to_gcg(scene: Scene, record_id: str, image_path: str, places: bool = True) -> dict:
    """A grounded caption naming each top-level shape (with its grid cell when ``places``)
    and its part, with spans and masks."""
    pieces: list[tuple[str, Shape | None]] = []
    top = sorted(scene.top_level, key=lambda s: (s.as_obj().center[0], s.id))
    for i, s in enumerate(top):
        if i:
            pieces.append((", " if i < len(top) - 1 else " and ", None))
        text = f"{article(s.description)} {s.description}"
        if places:
            text += f" {s.place(scene.image.shape[0])}"
        pieces.append(((text[0].upper() + text[1:]) if i == 0 else text, s))
        if s.child is not None:
            part = scene.shapes[s.child]
            pieces.append((" containing ", None))
            pieces.append((f"{article(part.description)} {part.description}", part))
    pieces.append((f" on a {scene.background} background.", None))
    caption, phrases = "", []
    for text, shape in pieces:
        if shape is not None:
            phrases.append({"text": text, "span": [len(caption), len(caption) + len(text)], "rle": shape.rle})
        caption += text
    size = scene.image.shape[0]
    return {"id": record_id, "image": image_path, "height": size, "width": scene.image.shape[1],
            "caption": caption, "phrases": phrases}


# --------------------------------------------------------------------------- public API


def _scene_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"synthetic:{seed}:{index}")


def generate_conversations(
    num: int, seed: int, image_size: int = 64, min_rounds: int = 1, max_rounds: int = 8,
    start: int = 0, describe: bool = True, places: bool = True, echo: bool = True,
) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield ``num`` (MRSeg record, ``(H, W, 3)`` uint8 image) pairs, deterministic in ``seed``.

    Record ``i`` has id ``synthetic-{seed}-{i:06d}`` and image path ``images/{i:06d}.png``;
    it depends only on (seed, i), so any slice (``start``) reproduces the same records.
    """
    if not 1 <= min_rounds <= max_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    for index in range(start, start + num):
        record, scene = conversation_at(seed, index, image_size, min_rounds, max_rounds, describe,
                                        places, echo)
        yield record, scene.image


def conversation_at(seed: int, index: int, image_size: int = 64, min_rounds: int = 1,
                    max_rounds: int = 8, describe: bool = True,
                    places: bool = True, echo: bool = True) -> tuple[dict, Scene]:
    """Record ``index`` of the set for ``seed``, with the :class:`Scene` it describes."""
    rng = _scene_rng(seed, index)
    # a scene that cannot give min_rounds rounds is redrawn (rare: tiny scenes)
    for attempt in range(10):
        scene = generate_scene(rng, image_size)
        wanted = rng.randint(min_rounds, max_rounds)
        record = scene_to_conversation(scene, rng, f"synthetic-{seed}-{index:06d}",
                                       f"images/{index:06d}.png", wanted, describe, places, echo)
        if len(record["rounds"]) >= min_rounds or attempt == 9:
            return record, scene
    raise AssertionError("unreachable")


def generate_gcg(num: int, seed: int, image_size: int = 64, start: int = 0,
                 places: bool = True) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield ``num`` (GCG record, image) pairs for the same scenes as :func:`generate_conversations`
    with the default round limits."""
    for index in range(start, start + num):
        _, scene = conversation_at(seed, index, image_size, 1, 8)
        record = scene_to_gcg(scene, f"synthetic-gcg-{seed}-{index:06d}", f"images/{index:06d}.png",
                              places)
        yield record, scene.image


def _render_one(job: tuple) -> tuple[dict, dict | None]:
    """Make conversation ``index``, save its PNG and return (record, GCG record or None).

    A module-level function so that worker processes can run it.
    """
    from PIL import Image

    output_dir, seed, index, image_size, min_rounds, max_rounds, gcg, describe, places, echo = job
    record, scene = conversation_at(seed, index, image_size, min_rounds, max_rounds, describe,
                                    places, echo)
    validate_conversation(record)  # a generator bug must fail loudly, not be skipped
    Image.fromarray(scene.image).save(os.path.join(output_dir, record["image"]), compress_level=1)
    gcg_record = None
    if gcg:
        gcg_record = validate_gcg(scene_to_gcg(scene, f"synthetic-gcg-{seed}-{index:06d}",
                                               record["image"], places))
    return record, gcg_record


SYNTHETIC_OUTPUTS = ("images", "synthetic.jsonl", "synthetic_gcg.jsonl", "synthetic.summary.json")
"""What :func:`write_synthetic` writes in its folder; a folder holding anything else is not
replaced."""


def write_synthetic(
    output_dir: str | os.PathLike, num: int, seed: int, image_size: int = 64, min_rounds: int = 1,
    max_rounds: int = 8, gcg: bool = True, progress: bool = False, workers: int = 1,
    describe: bool = True, allow_empty: bool = False, places: bool = True, echo: bool = True,
) -> BuildStats:
    """Write ``images/*.png``, ``synthetic.jsonl`` (MRSeg), ``synthetic_gcg.jsonl`` (GCG, when
    ``gcg``) and ``synthetic.summary.json`` under ``output_dir``; return the counters.

    The whole folder is built beside ``output_dir`` and swapped in at the end
    (``segllm.files.atomic_directory``), images included: a build that fails or is stopped
    leaves an older data set as it was and removes its temporary folder. An existing
    ``output_dir`` holding files this function does not write is refused (``BuildError``), and
    so is ``num`` 0 unless ``allow_empty``. Image paths in records are relative to
    ``output_dir``. ``workers`` > 1 renders in that many processes; records still come out in
    index order, so the output is byte-identical whatever the number of workers.
    """
    if num < 0:
        raise BuildError(f"synthetic: --num must be >= 0, got {num}")
    stats = BuildStats(source="synthetic")
    check_replaceable(output_dir, SYNTHETIC_OUTPUTS, "a synthetic build")
    with atomic_directory(output_dir) as build_dir:
        _render_all(os.fspath(build_dir), stats, num, seed, image_size, min_rounds, max_rounds,
                    gcg, progress, workers, describe, places, echo)
        require_records(stats, output_dir, allow_empty)
        write_json(os.path.join(build_dir, "synthetic.summary.json"), stats.to_dict())
    return stats


def _render_all(build_dir: str, stats: BuildStats, num: int, seed: int, image_size: int,
                min_rounds: int, max_rounds: int, gcg: bool, progress: bool, workers: int,
                describe: bool, places: bool, echo: bool) -> None:
    """Render every scene into ``build_dir/images`` and write the JSONL files there."""
    os.makedirs(os.path.join(build_dir, "images"))
    jobs = ((build_dir, seed, i, image_size, min_rounds, max_rounds, gcg, describe, places, echo)
            for i in range(num))
    pool = None
    if workers > 1:
        import multiprocessing

        # workers die quietly on the SIGTERM of pool.terminate(), whatever handler the parent set
        pool = multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(
            workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL))
        results = pool.imap(_render_one, jobs, chunksize=32)
    else:
        results = map(_render_one, jobs)
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=num, desc="build synthetic", unit="conv")
    conv_path = os.path.join(build_dir, "synthetic.jsonl")
    gcg_path = os.path.join(build_dir, "synthetic_gcg.jsonl")
    gcg_writer = AtomicWriter(gcg_path) if gcg else contextlib.nullcontext()
    try:
        with AtomicWriter(conv_path) as conv_out, gcg_writer as gcg_out:
            for record, gcg_record in results:
                conv_out.write_record(record)
                stats.count_written(record)
                if gcg_record is not None:
                    gcg_out.write_record(gcg_record)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
