"""int8 decoding on the CPU: PyTorch's dynamic quantization of the LLM's linear layers.

A decode step reads every weight of the LLM once for one token, so it is bound by memory
bandwidth: int8 weights are a quarter of fp32's bytes (``bench/bench_inference.py`` measures
the bound and the step). Each ``nn.Linear`` inside the language model becomes a
``DynamicQuantizedLinear``: int8 weights with one scale per layer, activations quantized per
call, int8 x int8 products through FBGEMM / oneDNN. As in ``segllm.quantization`` (the
bitsandbytes path), only the LLM's projections change: the vision tower, projector, token
embeddings, ``lm_head`` (which scores ``[SEG]``), seg head, mask encoder and mask decoder keep
fp32, since the mask path is small and the part most sensitive to precision. LoRA adapters are
merged first.

The quantized model serves chat (``SegLLMPipeline.from_pretrained(path, int8_dynamic=True)``);
it is not saved, trained or moved to a GPU. ``torch.ao.quantization`` is deprecated in favour of
torchao but still ships with torch; its deprecation warnings are silenced here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..modeling.lora import merge_lora


def quantize_language_model_int8(model) -> int:
    """Replace the LLM's ``nn.Linear`` layers of ``model`` (a ``SegLLMModel`` in fp32, on the
    CPU) by dynamically quantized int8 layers, in place. Returns the number of layers."""
    language_model = model.language_model
    weights = [p for p in language_model.parameters()]
    if any(p.device.type != "cpu" for p in weights):
        raise ValueError("int8 dynamic quantization runs on the CPU only; load the model there")
    if any(p.dtype != torch.float32 for p in weights if p.is_floating_point()):
        raise ValueError("int8 dynamic quantization needs the LLM in fp32; load it with "
                         "dtype='fp32'")
    merge_lora(language_model)
    count = sum(1 for m in language_model.modules() if type(m) is nn.Linear)
    if count == 0:
        raise ValueError("the language model has no nn.Linear layer to quantize")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated.*")
        torch.ao.quantization.quantize_dynamic(language_model, {nn.Linear}, dtype=torch.qint8,
                                               inplace=True)
    model.quantization = {"bits": 8, "quant_type": "int8-dynamic", "compute_dtype": "float32",
                          "layers": count}
    return count


def quantized_weight_bytes(module: nn.Module) -> int:
    """Bytes of weights ``module`` holds: float parameters and buffers at their element size,
    int8 dynamic layers at one byte a weight (plus their float biases)."""
    total = sum(t.numel() * t.element_size()
                for t in [*module.parameters(), *module.buffers()])
    for layer in module.modules():
        packed = getattr(layer, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            weight, bias = packed._weight_bias()
            total += weight.numel() * weight.element_size()
            total += bias.numel() * bias.element_size() if bias is not None else 0
    return total
