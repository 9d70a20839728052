"""Chat sessions over one image: multi-round segmentation with the KV cache kept between rounds.

    pipeline = SegLLMPipeline.from_pretrained("ckpt/", dtype="bf16")      # or load_in_4bit=True
    session = pipeline.start("photo.jpg")
    first = session.ask("Segment the man in the red shirt.")
    second = session.ask("Segment the bag left of <ref:0>.")   # round 0's masks come back
    first.masks[0].shape == (H, W)                              # bool, original image size
    session.undo()                                              # drops round 1, cache included

What a round costs (docs/architecture.md, "Data flow"): the session keeps the LLM's key/value cache and the
mask decoder's image features, so a new round feeds only the tokens it adds (the last answer's
``</s>``, then ``USER: {question} ASSISTANT:``) and then decodes. ``reuse_cache=False`` gives the
baseline that recomputes the whole history every round (what LISA's chat does), with identical
results; the benchmark and a test compare the two.

Masks come from the last-layer hidden state that *predicts* each generated ``[SEG]`` (the state
at the position before it), through the seg head and the mask decoder, at the original size.

``<ref:k>`` in a question brings back round k's masks through the mask encoder: the session's
own predicted masks, or, for ground-truth-reference evaluation, ``ask(text, ref_masks={k: [...]})``
(the protocol of ``segllm.eval.predictor``). A referenced round without any non-empty mask is
dropped from the question with a warning on the reply; a round that does not exist is refused.

``<region>`` brings in a region the user marks on the image, the same way: ``ask("Segment the
shape left of <region>.", regions=[mask_or_box])`` gives each region tag one mask-encoder slot
pair (masked crop + box token, exactly as one mask of a ``<ref:k>``), and with mask-aware
decoding the region joins the union of referenced masks fed to the decoder. A region is an
``(H, W)`` mask or a box ``[x, y, w, h]`` in pixels (filled); ``<region:i>`` names region i,
the n-th bare ``<region>`` is region n.

Every refusal raises ``InputError`` (a ``ValueError``) before the session changes, so the
session stays usable after an error.

The code is split by job under ``segllm/inference/``: ``generation`` (settings, next-token
choice through transformers' logits warpers), ``engine`` (jobs and the batched KV cache),
``session`` (a conversation's state and its checks) and ``pipeline`` (loading, sessions,
batches, masks). This module is the public entry point.
"""

from __future__ import annotations

from .dtypes import parse_dtype
from .images import ImageError, ImageLimits, InputError, load_image
from .inference.generation import ForcedTokens, GenerationConfig, LogitsProcessor
from .inference.pipeline import SegLLMPipeline
from .inference.session import ChatSession, Reply

__all__ = [
    "ChatSession", "ForcedTokens", "GenerationConfig", "ImageError", "ImageLimits", "InputError",
    "LogitsProcessor", "Reply", "SegLLMPipeline", "load_image", "parse_dtype",
]
