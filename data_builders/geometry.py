"""Spatial relations between objects, computed from their boxes.

The same functions phrase positional rounds in the builders and check them in the tests, so
"left of <ref:0>" means one thing everywhere: the candidate's box centre lies left of the
anchor's box centre by more than :data:`MARGIN` of the anchor's width, and among such
candidates it is the one whose centre is nearest. A relation whose best candidate is tied
with a runner-up (within :data:`TIE_RATIO`) is not used, so every answer is unique.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MARGIN = 0.1
TIE_RATIO = 1.1
RELATIONS = ("left", "right", "above", "below", "nearest", "largest")


@dataclass
class Obj:
    """One annotated region: a name, its ``[x, y, w, h]`` box, area and whatever else."""

    key: Any
    name: str
    bbox: Sequence[float]
    area: float
    extra: dict = field(default_factory=dict)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.bbox
        return x + w / 2.0, y + h / 2.0


def distance(a: Obj, b: Obj) -> float:
    (ax, ay), (bx, by) = a.center, b.center
    return math.hypot(ax - bx, ay - by)


def satisfies(candidate: Obj, anchor: Obj, relation: str) -> bool:
    """Whether ``candidate`` stands in ``relation`` to ``anchor`` (ignoring "closest")."""
    (cx, cy), (ax, ay) = candidate.center, anchor.center
    mx, my = MARGIN * anchor.bbox[2], MARGIN * anchor.bbox[3]
    if relation == "left":
        return cx < ax - mx
    if relation == "right":
        return cx > ax + mx
    if relation == "above":
        return cy < ay - my
    if relation == "below":
        return cy > ay + my
    if relation in ("nearest", "largest"):
        return candidate.key != anchor.key
    raise ValueError(f"unknown relation {relation!r}; one of {RELATIONS}")


def pick_related(anchor: Obj, candidates: Sequence[Obj], relation: str) -> Obj | None:
    """The unique object in ``relation`` to ``anchor`` (closest for directions, biggest for
    "largest"), or ``None`` when there is none or the best is tied."""
    pool = [c for c in candidates if c.key != anchor.key and satisfies(c, anchor, relation)]
    if not pool:
        return None
    if relation == "largest":
        ranked = sorted(pool, key=lambda c: -c.area)
        if len(ranked) > 1 and ranked[0].area < TIE_RATIO * ranked[1].area:
            return None
        return ranked[0]
    ranked = sorted(pool, key=lambda c: distance(c, anchor))
    if len(ranked) > 1 and distance(ranked[1], anchor) < TIE_RATIO * distance(ranked[0], anchor):
        return None
    return ranked[0]
