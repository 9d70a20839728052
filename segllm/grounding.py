"""Grounded captions (GCG) as conversations the model trains on and answers.

A GCG record (caption, phrases with spans and masks) becomes a one-round conversation: the
question is GLaMM's GCG instruction, the answer is the caption with each phrase wrapped as
``<p>phrase</p> [SEG]`` in caption order, and the round's targets are the phrases' masks, so the
i-th ``[SEG]`` pairs with the i-th phrase. ``segllm.eval``'s GCG parser reads such answers back.
"""

from __future__ import annotations

from .tokens import PHRASE_END, PHRASE_START, SEG_TOKEN

GCG_INSTRUCTION = ("Could you please give me a detailed description of the image? Please respond "
                   "with interleaved segmentation masks for the corresponding parts of the answer.")
"""GLaMM's GCG instruction (its ``eval/gcg/infer.py``), used when a record has no question."""

GROUNDED_ROUND_TYPE = "grounded"


def grounded_answer(caption: str, phrases: list[dict]) -> str:
    """The caption with ``<p>phrase</p> [SEG]`` at every phrase span (spans in caption order)."""
    pieces, end = [], 0
    for phrase in phrases:
        start, stop = phrase["span"]
        pieces.append(caption[end:start])
        pieces.append(f"{PHRASE_START}{caption[start:stop]}{PHRASE_END} {SEG_TOKEN}")
        end = stop
    pieces.append(caption[end:])
    return "".join(pieces)


def gcg_to_conversation(record: dict) -> dict:
    """A validated GCG record -> an MRSeg-layout record of one grounded-caption round."""
    phrases = record["phrases"]
    return {
        "id": record["id"], "image": record["image"], "height": record["height"],
        "width": record["width"], "source": record.get("source", "gcg"),
        "split": record.get("split", "train"),
        "rounds": [{
            "question": record.get("question") or GCG_INSTRUCTION,
            "answer": grounded_answer(record["caption"], phrases),
            "targets": [{"rle": p["rle"], **({"bbox": p["bbox"]} if "bbox" in p else {})}
                        for p in phrases],
            "refs": [], "type": GROUNDED_ROUND_TYPE,
        }],
    }
