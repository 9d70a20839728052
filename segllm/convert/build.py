"""A converted state dict into a ``SegLLMModel``, loaded strictly, without a random init."""

from __future__ import annotations

import torch

from ..config import SegLLMConfig
from ..modeling.loading import load_state_dict_strict


def build_model(config: SegLLMConfig, state: dict[str, torch.Tensor], tokenizer, *,
                source: str, dtype: torch.dtype | None = None):
    """Built on the meta device and filled with ``state`` (every key, every shape), so a 7B
    model is never initialised at random first."""
    from accelerate import init_empty_weights

    from ..modeling.model import SegLLMModel

    with init_empty_weights(include_buffers=False):
        model = SegLLMModel(config)
    load_state_dict_strict(model, state, source=source, assign=True)
    if dtype is not None:
        model.to(dtype)
    model.apply_trainable()
    model.tokenizer = tokenizer
    return model
