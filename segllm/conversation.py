"""Conversation templating: LLaVA-1.5's vicuna_v1 template, placeholders, labels, truncation.

A conversation becomes one token sequence::

    <s> {system} USER: <image>*N \\n {q0} ASSISTANT: {a0}</s>USER: {q1} ASSISTANT: {a1}</s>...

- ``<image>`` expands to one image token per vision feature (N from the vision config).
  A video's reference frames come just before it, as ``<frame>`` slots (``num_frame_tokens``:
  the frames times ``config.video.tokens_per_frame``), in the frames' temporal order.
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
    FRAME_TOKEN,
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


IMAGE_LINES = {
    "llava_v1": f"{IMAGE_TOKEN}\n",
    # GLaMM's app.py and training data introduce the image with a sentence
    "glamm": f"The {IMAGE_TOKEN} provides an overview of the picture.\n",
}
"""How the first round introduces the image, per ``config.prompt_template``."""


def round_prefix(question: str, round_index: int, template: str = "llava_v1") -> str:
    """The text before an answer; round 0 carries the system prompt and the image."""
    if round_index == 0:
        return f"{SYSTEM_PROMPT} {USER}: {IMAGE_LINES[template]}{question} {ASSISTANT}:"
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
                        sample: str = "?", add_generation_prompt: bool = False,
                        num_frame_tokens: int = 0,
                        template: str = "llava_v1") -> EncodedConversation:
    """Tokenize a conversation with the vicuna_v1 template (``template``: how round 0
    introduces the image, ``IMAGE_LINES``).

    ``add_generation_prompt``: the last turn has no answer yet; stop after ``ASSISTANT:``.
    ``num_frame_tokens``: reference-frame slots before the image's tokens (video input).
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
            generation=add_generation_prompt and r == len(turns) - 1,
            num_frame_tokens=num_frame_tokens, template=template)
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
                 generation: bool = False, num_regions: int | None = None,
                 num_frame_tokens: int = 0, template: str = "llava_v1") -> EncodedRound:
    """Token ids and labels of one round; see ``encode_conversation`` (``num_regions``:
    see ``expand_refs``; ``num_frame_tokens``: round 0's reference-frame slots; ``template``:
    ``config.prompt_template``). With a region encoder (``token_ids`` has ``region``) a
    region tag is one ``<bbox>`` slot instead of a mask-encoder pair."""
    where = f"sample {sample!r} round {r}"
    if not turn.question or not turn.question.strip():
        raise ConversationError(f"{where}: the question is empty")
    for token in (SEG_TOKEN, IMAGE_TOKEN, MASK_CROP_TOKEN, MASK_BOX_TOKEN, FRAME_TOKEN):
        if token in turn.question:
            raise ConversationError(f"{where}: the question may not contain {token!r}")
    question, slots = expand_refs(turn.question, masks_per_round, r, sample,
                                  num_regions=num_regions)
    if "region" in token_ids and num_regions is not None:
        question, slots = _region_slots(question, slots, tokenizer, token_ids)
    before, _, after = round_prefix(question, r, template).partition(IMAGE_TOKEN)
    if r == 0:
        before, after = _wrap_image(tokenizer, token_ids, before, after)
    ids = _tok(tokenizer, before)
    if r == 0:
        ids += _frame_slots(token_ids, num_frame_tokens, where)
        image = [token_ids["image"]] * num_image_tokens
        if "image_start" in token_ids:
            image = [token_ids["image_start"], *image, token_ids["image_end"]]
        ids += image + _tok(tokenizer, after)
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


def _region_slots(question: str, slots, tokenizer, token_ids: dict[str, int]):
    """Region-encoder models (GLaMM): each region's mask-encoder pair becomes the region
    token (``<bbox>``); region slots leave ``slots`` (the model fills them from the boxes)."""
    pair = MASK_CROP_TOKEN + MASK_BOX_TOKEN
    regions = [s for s in slots if s[1] == REGION_ROUND]
    kept = [s for s in slots if s[1] != REGION_ROUND]
    # region pairs and reference pairs are interleaved in text order: rebuild in that order
    pieces = question.split(pair)
    out = pieces[0]
    for slot, piece in zip(slots, pieces[1:], strict=True):
        token = tokenizer.convert_ids_to_tokens(token_ids["region"])
        out += (token if slot in regions else pair) + piece
    return out, kept


def _frame_slots(token_ids: dict[str, int], count: int, where: str) -> list[int]:
    if count and "frame" not in token_ids:
        raise ConversationError(f"{where}: reference frames were given but the tokenizer has no "
                                f"{FRAME_TOKEN} token (a model from before video input)")
    return [token_ids["frame"]] * count if count else []


def _wrap_image(tokenizer, token_ids: dict[str, int], before: str, after: str
                ) -> tuple[str, str]:
    """LLaVA-1 templates (LISA's ``<im_start><image><im_end>``) put the image between two
    tokens, named in ``token_ids`` as ``image_start`` / ``image_end``; ``encode_round`` places
    their ids. The text beside them loses its spaces where the tokenizer's own added-token
    rules (``lstrip`` / ``rstrip``) say so, as the tokenizer would do with the token in text."""
    if "image_start" not in token_ids:
        return before, after
    added = tokenizer.added_tokens_decoder
    start, end = added.get(token_ids["image_start"]), added.get(token_ids["image_end"])
    if start is not None and start.lstrip:
        before = before.rstrip()
    if end is not None and end.rstrip:
        after = after.lstrip()
    return before, after


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
