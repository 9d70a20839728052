"""Special tokens shared by templating, the model and the data builders.

Ids are always looked up with ``tokenizer.convert_tokens_to_ids`` (never
``tokenizer(tok).input_ids[0]``, which returns BOS or a word piece for some tokenizers).
"""

import re

IMAGE_TOKEN = "<image>"
"""Stands for the image in a prompt; expanded to one token per vision patch."""

SEG_TOKEN = "[SEG]"
"""Emitted by the LLM once per mask; the hidden state that predicts it drives the decoder."""

MASK_CROP_TOKEN = "<mask_crop>"
"""Slot for the CLIP token of an earlier mask's masked crop (mask encoder)."""

MASK_BOX_TOKEN = "<mask_box>"
"""Slot for the box token of an earlier mask (mask encoder)."""

PHRASE_START = "<p>"
PHRASE_END = "</p>"
"""Grounded-caption (GCG) answers read ``<p>phrase</p> [SEG]``."""

FRAME_TOKEN = "<frame>"
"""Slot for one pooled image token of a video's reference frame (VISA's global-local frames);
a reference frame takes ``config.video.tokens_per_frame`` of them, before the image's tokens."""

SPECIAL_TOKENS = [SEG_TOKEN, MASK_CROP_TOKEN, MASK_BOX_TOKEN, PHRASE_START, PHRASE_END]
"""Tokens segllm adds to a base tokenizer (the image token comes with llava-hf)."""

VIDEO_TOKENS = [FRAME_TOKEN]
"""Added after ``SPECIAL_TOKENS`` and kept out of the tiny tokenizer's BPE budget, so the ids
and merges of tokenizers built before video input are unchanged."""

REF_PATTERN = re.compile(r"<ref:(\d+)>")
"""``<ref:k>`` in a question marks where round k's masks come back as mask-encoder tokens."""

REGION_PATTERN = re.compile(r"<region(?::(\d+))?>")
"""``<region:i>`` in a question marks where region mask i, given with the question (a box drawn
on the image, say), comes in as mask-encoder tokens; a bare ``<region>`` takes the next region
in order (the n-th bare tag is region n). Inference only: training data has no regions."""
