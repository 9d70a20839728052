"""Building blocks of MRSeg rounds: targets, answers and question phrasings.

Answers carry one ``[SEG]`` per target in target order ("Sure, [SEG].", "[SEG], [SEG] and
[SEG]."); a round without targets answers with a sentence saying the object is not there.
Questions mark earlier rounds with ``<ref:k>``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from segllm.masks import RLE, rle_bbox
from segllm.tokens import SEG_TOKEN

SINGLE_ANSWERS = ("Sure, {seg}.", "It is {seg}.", "{seg}.", "Sure, it is {seg}.")
NO_TARGET_ANSWERS = (
    "There is no {what} in the image.",
    "I cannot find {article} {what} in this image.",
    "No {what} is visible here.",
)


def ref(k: int) -> str:
    """The placeholder for round ``k``'s masks in a later question."""
    return f"<ref:{k}>"


def target(rle: RLE, **extra) -> dict:
    """A target entry: the RLE, its tight ``[x, y, w, h]`` box and any extra flags."""
    return {"rle": rle, "bbox": [round(v, 2) for v in rle_bbox(rle)], **extra}


def seg_list(n: int) -> str:
    """``[SEG]``, ``[SEG] and [SEG]``, ``[SEG], [SEG] and [SEG]``..."""
    if n < 1:
        raise ValueError("a list of masks needs at least one mask")
    if n == 1:
        return SEG_TOKEN
    return ", ".join([SEG_TOKEN] * (n - 1)) + f" and {SEG_TOKEN}"


def answer_for(n_targets: int, rng: random.Random, missing: str = "such object") -> str:
    """An answer with one ``[SEG]`` per target, or a "not there" sentence for zero targets."""
    if n_targets == 0:
        template = rng.choice(NO_TARGET_ANSWERS)
        return template.format(what=missing, article=article(missing))
    if n_targets == 1:
        return rng.choice(SINGLE_ANSWERS).format(seg=SEG_TOKEN)
    return rng.choice(("{segs}.", "Sure, {segs}.", "They are {segs}.")).format(segs=seg_list(n_targets))


DESCRIBED_SINGLE = ("Sure, it is the {item}.", "It is the {item}.", "The {item}.",
                    "Sure, the {item}.")
DESCRIBED_MANY = ("{items}.", "Sure, {items}.", "They are {items}.")


def described_answer(names: Sequence[str], rng: random.Random) -> str:
    """An answer that names each target right before its ``[SEG]``: "It is the red circle [SEG]."

    The state that predicts each ``[SEG]`` then follows the words naming its target, so a
    language model trained from scratch learns to carry what it segments into that state
    (with answers like "Sure, [SEG]." it has no reason to look back at the question).
    """
    items = [f"{name} {SEG_TOKEN}" for name in names]
    if len(items) == 1:
        return rng.choice(DESCRIBED_SINGLE).format(item=items[0])
    listed = ", ".join(f"the {i}" for i in items[:-1]) + f" and the {items[-1]}"
    return _capital(rng.choice(DESCRIBED_MANY).format(items=listed))


# as many templates as DESCRIBED_SINGLE, DESCRIBED_MANY and NO_TARGET_ANSWERS: a choice among
# n options draws the same random bits whatever the options, so the rounds after an answer do
# not change with the answer style
ECHOED_SINGLE = ("{Echo} {seg} is the {name}.", "Sure, {echo} {seg} is the {name}.",
                 "{Echo} {seg}: it is the {name}.", "Sure, {echo} {seg}: it is the {name}.")
ECHOED_MANY = ("{Echo} are {items}.", "Sure, {echo} are {items}.", "{Echo}: {items}.")
ECHOED_NONE = ("{Echo} {verb} not in the image.", "{Echo} {verb} not visible here.",
               "{Echo} cannot be found in this image.")


def echoed_answer(echo: str | tuple[str, str], names: Sequence[str], rng: random.Random) -> str:
    """An answer that first repeats what the question asks for, then segments and names it:
    "The red shape [SEG] is the red circle at the top left." (one target), "The circles are the
    red circle at the top left [SEG] and the blue circle on the right [SEG]." (several: each
    named before its ``[SEG]``), "The red circle is not in the image." (none).

    ``echo`` is the question's own phrase for its target ("the shape closest to the left of
    it"), or a (singular, plural) pair when the number of targets varies. With one target the
    state that predicts ``[SEG]`` follows words copied from the question, not the model's own
    reading of the picture, so a wrong name cannot mislead the mask decoder, which sees the
    image (and the referenced masks) itself; the name comes after, still trained. Whether the
    target is there is decided right after the echo, with the query in the nearest context.
    Exactly one ``rng`` choice among as many options as :func:`described_answer` (or
    :func:`answer_for`) makes, so scenes and questions built after it do not change with the
    answer style.
    """
    singular, plural_echo = (echo, echo) if isinstance(echo, str) else echo
    if len(names) == 1:
        template = rng.choice(ECHOED_SINGLE)
        return template.format(Echo=_capital(singular), echo=singular, seg=SEG_TOKEN, name=names[0])
    if not names:
        template = rng.choice(ECHOED_NONE)
        verb = "are" if isinstance(echo, tuple) else "is"
        return template.format(Echo=_capital(plural_echo), verb=verb)
    items = ", ".join(f"the {n} {SEG_TOKEN}" for n in names[:-1]) + f" and the {names[-1]} {SEG_TOKEN}"
    template = rng.choice(ECHOED_MANY)
    return template.format(Echo=_capital(plural_echo), echo=plural_echo, items=items)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_round(question: str, targets: Sequence[dict], kind: str, rng: random.Random,
               refs: Sequence[int] = (), missing: str = "such object",
               describe: bool = False, names: Sequence[str] | None = None,
               echo: str | tuple[str, str] | None = None) -> dict:
    """One round in the record layout, refs sorted as the question's ``<ref:k>`` order allows.

    ``describe``: name every target before its ``[SEG]`` (:func:`described_answer`), by
    ``names`` (one per target) when given, else by its ``label``; with ``echo`` (and
    ``describe``), answer as :func:`echoed_answer` does, repeating the question's phrase first.
    """
    if names is not None and len(names) != len(targets):
        raise ValueError(f"{len(names)} names for {len(targets)} targets")
    if describe and echo is not None:
        answer = echoed_answer(echo, list(names or [t["label"] for t in targets]), rng)
    elif describe and targets:
        answer = described_answer(names or [t["label"] for t in targets], rng)
    else:
        answer = answer_for(len(targets), rng, missing)
    return {
        "question": question,
        "answer": answer,
        "targets": list(targets),
        "refs": sorted(set(refs)),
        "type": kind,
    }


def article(noun: str) -> str:
    """'a' or 'an' for a noun phrase."""
    return "an" if noun[:1].lower() in "aeiou" else "a"


def plural(noun: str) -> str:
    """A rough English plural, good enough for class names in questions."""
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def clean_name(name: str) -> str:
    """Source class names as words: ``traffic_light`` -> ``traffic light``, first synonym of
    ``building;edifice`` or ``building, edifice``."""
    first = name.split(";")[0].split(",")[0]
    return first.replace("_", " ").strip()


REFERRING_QUESTIONS = (
    "Segment {expr}.",
    "Please segment {expr}.",
    "Can you segment {expr} in this image?",
    "Where is {expr}? Please output its mask.",
)

CATEGORY_QUESTIONS = ("Segment the {name}.", "Please segment the {name} in this image.")
ALL_OF_CATEGORY_QUESTIONS = ("Segment all the {names}.", "Please segment every {name} in the image.")
SEMANTIC_QUESTIONS = ("Segment the {name}.", "Please segment the {name} region.", "Which pixels are {name}?")

POSITIONAL_QUESTIONS = {
    "left": "Segment the {name} closest to the left of {ref}.",
    "right": "Segment the {name} closest to the right of {ref}.",
    "above": "Segment the {name} closest above {ref}.",
    "below": "Segment the {name} closest below {ref}.",
    "nearest": "Segment the {name} nearest to {ref}.",
    "largest": "Segment the largest {name} other than {ref}.",
}

PART_OF_QUESTIONS = ("Segment the {part} of {ref}.", "Please segment the {part} of {ref}.")
WHOLE_OF_QUESTIONS = ("Segment the whole object that {ref} is part of.", "Segment the {whole} that {ref} belongs to.")


def referring_question(expression: str, rng: random.Random) -> str:
    """A question asking for the object a referring expression describes."""
    expression = expression.strip().rstrip(".")
    return rng.choice(REFERRING_QUESTIONS).format(expr=expression)
