"""Conversation templating: LLaVA-1.5's vicuna_v1 template, placeholders, labels, truncation.

A conversation becomes one token sequence::

    <s> {system} USER: <image>*N \\n {q0} ASSISTANT: {a0}</s>USER: {q1} ASSISTANT: {a1}</s>...

- ``<image>`` expands to one image token per vision feature (N from the vision config).
- ``<ref:k>`` in a question expands to ``<mask_crop><mask_box>`` once per mask of round k;
  the model writes the mask encoder's two tokens into those slots. At inference ``<region>`` /
  ``<region:i>`` expands to one such pair for a region mask given with the question.
- Labels are -100 everywhere but the assistant answers (and their ``</s>``).
- A length limit drops whole trailing rounds, never part of one, so no ``[SEG]`` is ever cut.

Pieces are tokenized separately and concatenated, so answer spans are exact by construction
(no off-by-one arithmetic on separator lengths, as in LLaVA's ``preprocess_v1``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .tokens import (
    IMAGE_TOKEN,
    MASK_BOX_TOKEN,
    MASK_CROP_TOKEN,
    REF_PATTERN,
    REGION_PATTERN,
    SEG_TOKEN,
)

SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
USER, ASSISTANT = "USER", "ASSISTANT"
IGNORE_INDEX = -100


class ConversationError(ValueError):
    """A conversation that cannot be encoded; the message names the sample and the round."""


@dataclass
class Turn:
    """One round: the question, the answer (None while it is being generated), its masks."""

    question: str
    answer: str | None = None
    num_targets: int = 0


@dataclass
class EncodedConversation:
    """Token ids and where everything is. All lists have the same length."""

    input_ids: list[int]
    labels: list[int]
    round_ids: list[int]  # round index of every token (system prompt counts as round 0)
    num_rounds: int  # rounds kept
    dropped_rounds: int = 0  # trailing rounds dropped by the length limit
    # (question round, referenced round, index of the mask in that round), in slot order
    ref_slots: list[tuple[int, int, int]] = field(default_factory=list)
    # (round, target index) of every [SEG] in the answers, in order
    seg_targets: list[tuple[int, int]] = field(default_factory=list)


def round_prefix(question: str, round_index: int) -> str:
    """The text before an answer; round 0 carries the system prompt and the image."""
    if round_index == 0:
        return f"{SYSTEM_PROMPT} {USER}: {IMAGE_TOKEN}\n{question} {ASSISTANT}:"
    return f"{USER}: {question} {ASSISTANT}:"


REGION_ROUND = -1
"""The "referenced round" of a region's slot in ``ref_slots``: (question round, -1, region i)."""

_SLOT_PATTERN = re.compile(f"{REF_PATTERN.pattern}|{REGION_PATTERN.pattern}")


def region_indices(question: str) -> list[int]:
    """The region each ``<region>`` / ``<region:i>`` tag stands for, in text order (the n-th
    bare ``<region>`` is region n)."""
    bare = 0
    out = []
    for match in REGION_PATTERN.finditer(question):
        if match.group(1) is None:
            out.append(bare)
            bare += 1
        else:
            out.append(int(match.group(1)))
    return out


def expand_refs(question: str, masks_per_round: Sequence[int], round_index: int,
                sample: str, *, num_regions: int | None = None
                ) -> tuple[str, list[tuple[int, int, int]]]:
    """Replace each ``<ref:k>`` with one crop+box slot pair per mask of round k.

    ``num_regions``: regions given with the question (inference); each region tag becomes one
    slot pair ``(round_index, REGION_ROUND, i)``. None (training data) leaves region tags as text.
    """
    slots: list[tuple[int, int, int]] = []
    regions = iter(region_indices(question))  # both walk the tags in text order

    def replace(match) -> str:
        if match.group(1) is None:  # a region tag
            if num_regions is None:
                return match.group(0)
            i = next(regions)
            if i >= num_regions:
                raise ConversationError(
                    f"sample {sample!r} round {round_index}: {match.group(0)} stands for region "
                    f"{i}, but {num_regions} region(s) were given")
            slots.append((round_index, REGION_ROUND, i))
            return MASK_CROP_TOKEN + MASK_BOX_TOKEN
        k = int(match.group(1))
        if k >= round_index:
            raise ConversationError(
                f"sample {sample!r} round {round_index}: <ref:{k}> refers to a round that does "
                f"not exist yet (only rounds 0..{round_index - 1} come before it)")
        n = masks_per_round[k]
        if n == 0:
            raise ConversationError(
                f"sample {sample!r} round {round_index}: <ref:{k}> refers to round {k}, "
                "which has no mask")
        slots.extend((round_index, k, j) for j in range(n))
        return (MASK_CROP_TOKEN + MASK_BOX_TOKEN) * n

    return _SLOT_PATTERN.sub(replace, question), slots


def encode_conversation(turns: Sequence[Turn], tokenizer, token_ids: dict[str, int],
                        num_image_tokens: int, max_length: int | None = None,
                        sample: str = "?", add_generation_prompt: bool = False
                        ) -> EncodedConversation:
    """Tokenize a conversation with the vicuna_v1 template.

    ``add_generation_prompt``: the last turn has no answer yet; stop after ``ASSISTANT:``.
    Raises ``ConversationError`` naming the sample and round for a bad reference, a
    ``[SEG]`` count that differs from the round's targets, or a first round over the limit.
    """
    if not turns:
        raise ConversationError(f"sample {sample!r}: a conversation needs at least one round")
    enc = EncodedConversation(input_ids=[token_ids["bos"]], labels=[IGNORE_INDEX], round_ids=[0],
                              num_rounds=0)
    masks_per_round = [t.num_targets for t in turns]
    for r, turn in enumerate(turns):
        ids, labels, slots, segs = encode_round(
            turn, r, masks_per_round, tokenizer, token_ids, num_image_tokens, sample,
            generation=add_generation_prompt and r == len(turns) - 1)
        if max_length is not None and len(enc.input_ids) + len(ids) > max_length:
            if r == 0:
                raise ConversationError(
                    f"sample {sample!r} round 0: {len(ids) + 1} tokens exceed max_length="
                    f"{max_length} on their own")
            enc.dropped_rounds = len(turns) - r
            break
        enc.input_ids += ids
        enc.labels += labels
        enc.round_ids += [r] * len(ids)
        enc.ref_slots += slots
        enc.seg_targets += segs
        enc.num_rounds = r + 1
    return enc


class EncodedRound(NamedTuple):
    """One round's tokens: what ``encode_round`` returns."""

    input_ids: list[int]
    labels: list[int]
    ref_slots: list[tuple[int, int, int]]  # (question round, referenced round, mask index)
    seg_targets: list[tuple[int, int]]  # (round, target index) of each [SEG] of the answer


def encode_round(turn: Turn, r: int, masks_per_round: Sequence[int], tokenizer,
                 token_ids: dict[str, int], num_image_tokens: int, sample: str,
                 generation: bool = False, num_regions: int | None = None) -> EncodedRound:
    """Token ids and labels of one round; see ``encode_conversation`` (``num_regions``:
    see ``expand_refs``)."""
    where = f"sample {sample!r} round {r}"
    if not turn.question or not turn.question.strip():
        raise ConversationError(f"{where}: the question is empty")
    for token in (SEG_TOKEN, IMAGE_TOKEN, MASK_CROP_TOKEN, MASK_BOX_TOKEN):
        if token in turn.question:
            raise ConversationError(f"{where}: the question may not contain {token!r}")
    question, slots = expand_refs(turn.question, masks_per_round, r, sample,
                                  num_regions=num_regions)
    before, _, after = round_prefix(question, r).partition(IMAGE_TOKEN)
    ids = _tok(tokenizer, before)
    if r == 0:
        ids += [token_ids["image"]] * num_image_tokens + _tok(tokenizer, after)
    labels = [IGNORE_INDEX] * len(ids)
    segs: list[tuple[int, int]] = []
    if not generation:
        if turn.answer is None:
            raise ConversationError(f"{where}: the answer is missing")
        answer_ids = _tok(tokenizer, " " + turn.answer.strip()) + [token_ids["eos"]]
        n_seg = answer_ids.count(token_ids["seg"])
        if n_seg != turn.num_targets:
            raise ConversationError(
                f"{where}: the answer has {n_seg} {SEG_TOKEN} token(s) but the round has "
                f"{turn.num_targets} target mask(s)")
        segs = [(r, j) for j in range(n_seg)]
        ids += answer_ids
        labels += answer_ids
    n_slots = ids.count(token_ids["mask_crop"])
    if n_slots != len(slots) or ids.count(token_ids["mask_box"]) != len(slots):
        raise ConversationError(f"{where}: the tokenizer split a mask-encoder slot token")
    return EncodedRound(input_ids=ids, labels=labels, ref_slots=slots, seg_targets=segs)


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
