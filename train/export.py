"""The final export: LoRA folded into the base weights, written by ``save_pretrained``.

The result loads with ``SegLLMModel.from_pretrained`` and needs neither peft nor
bitsandbytes: a QLoRA base is dequantised first, then every adapter is merged in float32
(a bf16 merge would round ``W + BA``), then the weights are cast to the export dtype.
The exported config says ``trainable.llm: frozen`` where it said ``lora`` (the adapters are
gone); a later run chooses what to train through its own overrides.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from segllm.dtypes import parse_dtype
from segllm.files import publish_permissions
from segllm.modeling.lora import has_lora, merge_lora
from segllm.modeling.model import SegLLMModel
from segllm.quantization import dequantize_linear_layers


def merged_copy(model: SegLLMModel) -> SegLLMModel:
    """A float32 CPU copy of ``model`` with LoRA merged (the original is left as it is)."""
    clone = copy.deepcopy(model).to("cpu")
    dequantize_linear_layers(clone.language_model, torch.float32)
    clone.float()
    if has_lora(clone.language_model):
        merge_lora(clone.language_model)
        clone.config = copy.deepcopy(clone.config)
        clone.config.trainable.llm = "frozen"
    clone.tokenizer = model.tokenizer
    clone.apply_trainable()
    return clone


def export_merged(model: SegLLMModel, path: str | Path, dtype: str = "float32") -> Path:
    """Write the merged model to ``path`` (atomically, by ``save_pretrained``), with the usual
    permissions (0o755 folders, 0o644 files under umask 022), not the owner-only ones of the
    temporary folder it was written in: an export is meant to be shared."""
    merged = merged_copy(model)
    merged.to(parse_dtype(dtype))
    out = merged.save_pretrained(path)
    publish_permissions(out)
    return out
