"""Helpers shared by the pipeline and demo tests."""

from __future__ import annotations


def forcing(pipeline, answer: str, max_new_tokens: int = 16):
    """Generation settings that make the random model answer exactly ``answer``, step by step."""
    from segllm.pipeline import ForcedTokens, GenerationConfig

    return GenerationConfig(max_new_tokens=max_new_tokens,
                            logits_processors=(ForcedTokens.from_text(pipeline, answer),))


def cache_snapshot(session):
    """A copy of the session's KV cache tensors (``None`` when empty)."""
    if session._past is None:
        return None
    return [(k.clone(), v.clone()) for k, v in session._past]


def same_cache(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return len(a) == len(b) and all(torch_equal(x[0], y[0]) and torch_equal(x[1], y[1])
                                     for x, y in zip(a, b, strict=True))


def torch_equal(x, y) -> bool:
    import torch

    return x.shape == y.shape and bool(torch.equal(x, y))
