"""4-bit and 8-bit loading of the LLM through bitsandbytes; everything else stays as it was.

Only the linear layers inside the language model are quantized (attention and MLP
projections). The vision tower, the projector, the token embeddings, ``lm_head`` (which scores
``[SEG]``), the seg head, the mask encoder and the mask decoder keep their dtype, as the design
card asks: the mask path is small and sensitive to precision.

LoRA adapters (the ``tiny`` and ``lisa-7b`` presets) are merged into their base weights first:
quantizing a base layer and keeping a float adapter beside it would give a different model
from the one trained, and merging after quantization is lossy.

bitsandbytes 0.50 runs these layers on the CPU as well as on CUDA.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .modeling.lora import merge_lora

__all__ = ["quantize_language_model", "quantize_linear_layers", "dequantize_linear_layers",
           "memory_by_component", "tensor_bytes"]


def quantize_language_model(model, bits: int, compute_dtype: torch.dtype = torch.float32,
                            quant_type: str = "nf4") -> int:
    """Replace the LLM's ``nn.Linear`` layers of ``model`` (a ``SegLLMModel``) in place.

    Args:
        bits: 4 (``Linear4bit``, NF4 by default, double quantization off) or 8 (``Linear8bitLt``,
            int8 weights with the outlier threshold 6.0, as transformers' default).
        compute_dtype: the dtype the 4-bit layers compute in (bf16 / fp16 / fp32).
    Returns:
        the number of layers quantized.
    """
    import bitsandbytes as bnb  # noqa: F401  (fail early with a clear ImportError)

    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    language_model = model.language_model
    merge_lora(language_model)
    count = quantize_linear_layers(language_model, bits, compute_dtype, quant_type)
    if count == 0:
        raise ValueError("the language model has no nn.Linear layer to quantize")
    if bits == 8:
        _quiet_int8_cast_warning()
    model.quantization = {"bits": bits, "quant_type": quant_type if bits == 4 else "int8",
                          "compute_dtype": str(compute_dtype).removeprefix("torch."),
                          "layers": count}
    return count


def quantize_linear_layers(module: nn.Module, bits: int, compute_dtype: torch.dtype = torch.float32,
                           quant_type: str = "nf4") -> int:
    """Replace every plain ``nn.Linear`` under ``module`` by a bitsandbytes layer, in place.

    LoRA base layers are included and LoRA A/B matrices never are, so the same function
    quantizes a merged LLM for inference and the frozen base of a QLoRA run. Returns the count.
    """
    targets = [(name, m) for name, m in module.named_modules()
               if type(m) is nn.Linear and "lora_" not in name]
    for name, linear in targets:
        layer = _linear4(linear, compute_dtype, quant_type) if bits == 4 else _linear8(linear)
        _set_submodule(module, name, layer)
    return len(targets)


def dequantize_linear_layers(module: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Undo 4-bit quantization (for a merged export): ``Linear4bit`` -> ``nn.Linear``."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # nothing can have been quantized without it
        return 0
    from bitsandbytes.functional import dequantize_4bit

    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    for name, q in targets:
        weight = dequantize_4bit(q.weight.data, q.weight.quant_state).to(dtype)
        linear = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None,
                           device=weight.device, dtype=dtype)
        linear.weight.data.copy_(weight)
        if q.bias is not None:
            linear.bias.data.copy_(q.bias.data.to(dtype))
        linear.requires_grad_(False)
        _set_submodule(module, name, linear)
    return len(targets)


def _linear4(linear: nn.Linear, compute_dtype: torch.dtype, quant_type: str) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features,
                              bias=linear.bias is not None, compute_dtype=compute_dtype,
                              quant_type=quant_type, device="meta")
    layer.weight = bnb.nn.Params4bit(linear.weight.data.float().cpu(), requires_grad=False,
                                     quant_type=quant_type)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return layer.to(device)  # moving a Params4bit quantizes it


def _linear8(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features,
                                bias=linear.bias is not None, has_fp16_weights=False,
                                threshold=6.0, device="meta")
    layer.weight = bnb.nn.Int8Params(linear.weight.data.float().cpu(), requires_grad=False,
                                     has_fp16_weights=False)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    return layer.to(device)  # moving an Int8Params quantizes it


class _DropInt8CastWarning(logging.Filter):
    """bitsandbytes logs that int8 matmuls cast their float32 inputs to fp16 at *every* call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _quiet_int8_cast_warning() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in logger.filters):
        logger.addFilter(_DropInt8CastWarning())


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child_name, new)


def tensor_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers, quantization state included."""
    total = 0
    seen: set[int] = set()
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            total += _quant_state_bytes(state)
        scb = getattr(tensor, "SCB", None)
        if isinstance(scb, torch.Tensor):
            total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(state) -> int:
    total = 0
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif hasattr(value, "absmax"):  # nested state (double quantization)
            total += _quant_state_bytes(value)
    return total


def memory_by_component(model) -> dict[str, int]:
    """``{component: bytes}`` for a ``SegLLMModel`` plus an ``"all"`` row."""
    rows = {name: tensor_bytes(module) for name, module in model.components().items()}
    rows["all"] = tensor_bytes(model)
    return rows
