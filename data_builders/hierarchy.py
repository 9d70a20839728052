"""Hierarchical rounds shared by PACO-LVIS and Pascal-Panoptic-Parts: object <-> part.

A round asks for a part of an earlier target ("Segment the handle of <ref:0>.") or for the
whole an earlier part belongs to ("Segment the whole object that <ref:1> is part of."). An
object whose class occurs more than once is named by its extreme position ("the leftmost
person") when that is unambiguous, and left out otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .compose import Planner
from .geometry import Obj
from .rounds import PART_OF_QUESTIONS, WHOLE_OF_QUESTIONS, ref

EXTREMES = (("leftmost", 0, 1), ("rightmost", 0, -1), ("topmost", 1, 1), ("bottommost", 1, -1))


def describe(obj: Obj, same_named: Sequence[Obj]) -> str | None:
    """"the dog" when it is the only dog, "the leftmost dog" (etc.) when that is clear-cut."""
    if len(same_named) == 1:
        return f"the {obj.name}"
    for word, axis, sign in EXTREMES:
        ranked = sorted(same_named, key=lambda o: sign * o.center[axis])
        gap = abs(ranked[1].center[axis] - ranked[0].center[axis])
        if ranked[0] is obj and gap > 0.25 * obj.bbox[2 + axis]:
            return f"the {word} {obj.name}"
    return None


def plan_hierarchy(planner: Planner, wholes: Sequence[tuple[Obj, Sequence[Obj]]]) -> None:
    """Fill ``planner`` with object->part and part->object rounds over ``wholes``
    (each an object and its parts), plus positional rounds between objects."""
    rng = planner.rng
    by_name: dict[str, list[Obj]] = defaultdict(list)
    for whole, _ in wholes:
        by_name[whole.name].append(whole)
    order = [w for w in wholes if w[1]]
    rng.shuffle(order)
    objects = [w for w, _ in wholes]
    for whole, parts in order:
        description = describe(whole, by_name[whole.name])
        if planner.full or description is None:
            continue
        by_part: dict[str, list[Obj]] = defaultdict(list)
        for part in parts:
            by_part[part.name].append(part)
        part_name = rng.choice(sorted(by_part))
        chosen = sorted(by_part[part_name], key=lambda o: (o.center, str(o.key)))
        if rng.random() < 0.5 and len(planner.rounds) + 2 <= planner.max_rounds:
            # part first (named through its whole), then the whole it belongs to
            k = planner.add(f"Segment the {part_name} of {description}.", chosen, "hierarchical")
            if len(chosen) == 1:
                question = rng.choice(WHOLE_OF_QUESTIONS).format(ref=ref(k), whole=whole.name)
                planner.add(question, [whole], "hierarchical", refs=[k])
            continue
        k = planner.add(f"Segment {description}.", [whole], "referring")
        if not planner.full:
            question = rng.choice(PART_OF_QUESTIONS).format(part=part_name, ref=ref(k))
            planner.add(question, chosen, "hierarchical", refs=[k])
        if not planner.full and rng.random() < 0.3:
            planner.add_positional(objects)
