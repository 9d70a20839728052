"""A published checkpoint's tokenizer, made to tokenize as the code it was trained with did.

LISA and GLaMM load a slow sentencepiece ``LlamaTokenizer`` under transformers 4.31. Two of
its habits decide token ids, and today's fast tokenizer does neither by default:

- it strips the spaces on both sides of every added token (``[SEG]``, ``<im_start>`` ...):
  ``"USER: <im_start>"`` has no space token before ``<im_start>``;
- in its legacy mode every stretch of text between added tokens gets sentencepiece's leading
  ``▁``, so ``"<im_end>\\nWhat"`` gives ``▁What``.

``load_source_tokenizer`` sets both on the fast tokenizer (the added tokens' ``lstrip`` /
``rstrip``; a Metaspace pre-tokeniser that gives every stretch its ``▁``), only when the checkpoint says it was written by
a slow Llama tokenizer before transformers 4.34 changed that handling, then adds segllm's
tokens. tests/convert checks the ids against the ones LISA's own code produced.
"""

from __future__ import annotations

from pathlib import Path

from ..tokenizer import add_segllm_tokens
from ..tokens import IMAGE_TOKEN
from .source import ConvertError, read_json

LEGACY_BEFORE = (4, 34)  # transformers 4.34 reworked added tokens (no default stripping)


def _version(text: str) -> tuple[int, int]:
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def slow_legacy_llama(folder: Path, written_by: str | None) -> bool:
    """Whether ``folder``'s tokenizer is a slow Llama tokenizer used as transformers < 4.34 did."""
    path = folder / "tokenizer_config.json"
    config = read_json(path) if path.is_file() else {}
    if config.get("tokenizer_class") not in ("LlamaTokenizer", None):
        return False
    if config.get("legacy") is False:
        return False
    return written_by is not None and _version(written_by) < LEGACY_BEFORE


def load_source_tokenizer(folder: Path, written_by: str | None):
    """The checkpoint's tokenizer as a fast tokenizer that gives its original ids, plus
    segllm's tokens (appended after every token it has)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ImportError, ValueError, OSError) as err:
        hint = (" (a sentencepiece tokenizer.model needs the 'sentencepiece' package)"
                if (folder / "tokenizer.model").is_file() else "")
        raise ConvertError(f"{folder}: cannot load its tokenizer{hint}: {err}") from err
    if slow_legacy_llama(folder, written_by):
        backend = tokenizer.backend_tokenizer
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                         split=False)
        added = read_json(folder / "added_tokens.json") if (folder / "added_tokens.json").is_file() else {}
        for content, token_id in sorted(added.items(), key=lambda item: item[1]):
            special = content in tokenizer.all_special_tokens
            tokenizer.add_tokens([AddedToken(content, lstrip=True, rstrip=True,
                                             normalized=False, special=special)])
            if tokenizer.convert_tokens_to_ids(content) != token_id:
                raise ConvertError(f"{folder}: added token {content!r} moved from id {token_id}")
    if tokenizer.unk_token is None:
        raise ConvertError(f"{folder}: the tokenizer has no unk token to pad with")
    tokenizer.pad_token = tokenizer.unk_token  # what LISA and GLaMM set
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)],
                             special_tokens=True)
    return tokenizer, add_segllm_tokens(tokenizer)
