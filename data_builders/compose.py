"""Assembling multi-round conversations over one image's annotated objects.

The real-data builders describe objects (:class:`~.geometry.Obj` whose ``extra["rle"]`` holds
the mask, or ``extra["segment"]``: a callable that makes it on first use) and let a
:class:`Planner` turn them into rounds: direct rounds the builder phrases itself, and
positional rounds relative to an earlier single-target round, computed from geometry.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .geometry import RELATIONS, Obj, pick_related
from .rounds import POSITIONAL_QUESTIONS, make_round, ref, target


def obj_rle(obj: Obj) -> dict:
    """The object's RLE, made from its ``segment`` callable on first use."""
    if "rle" not in obj.extra:
        obj.extra["rle"] = obj.extra.pop("segment")()
    return obj.extra["rle"]


def obj_target(obj: Obj) -> dict:
    """The target entry of an object, with its label and flags (``box_derived``...), and the
    source annotation's own box (``ann_bbox``) when it has one: REC Acc@0.5 scores against
    the annotated box, not the mask's tight box."""
    flags = {k: v for k, v in obj.extra.items() if k in ("box_derived", "ignore_rle")}
    ann_box = (obj.extra.get("ann") or {}).get("bbox")
    if ann_box is not None:
        flags["ann_bbox"] = [round(float(v), 2) for v in ann_box]
    return target(obj_rle(obj), label=obj.name, **flags)


class Planner:
    """Rounds of one conversation, with the objects each round targets."""

    def __init__(self, rng: random.Random, max_rounds: int):
        self.rng = rng
        self.max_rounds = max_rounds
        self.rounds: list[dict] = []
        self.targets: list[list[Obj]] = []

    @property
    def full(self) -> bool:
        return len(self.rounds) >= self.max_rounds

    def add(self, question: str, objs: Sequence[Obj], kind: str, refs: Sequence[int] = (),
            missing: str = "such object") -> int:
        """Append a round; returns its index."""
        targets = [obj_target(o) for o in objs]
        self.rounds.append(make_round(question, targets, kind, self.rng, refs, missing))
        self.targets.append(list(objs))
        return len(self.rounds) - 1

    def single_target_rounds(self) -> list[int]:
        return [k for k, objs in enumerate(self.targets) if len(objs) == 1]

    def add_positional(self, candidates: Sequence[Obj]) -> bool:
        """Add "the <name> closest to the left of <ref:k>" (or right/above/below/nearest/
        largest) for a random earlier single target; False when no relation is unique."""
        anchors = self.single_target_rounds()
        self.rng.shuffle(anchors)
        names = sorted({c.name for c in candidates})
        for k in anchors:
            anchor = self.targets[k][0]
            relations = list(RELATIONS)
            self.rng.shuffle(relations)
            self.rng.shuffle(names)
            for name in names:
                pool = [c for c in candidates if c.name == name]
                for relation in relations:
                    found = pick_related(anchor, pool, relation)
                    if found is None or any(found is objs[0] for objs in self.targets if len(objs) == 1):
                        continue
                    question = POSITIONAL_QUESTIONS[relation].format(name=name, ref=ref(k))
                    self.add(question, [found], "positional", refs=[k])
                    return True
        return False
