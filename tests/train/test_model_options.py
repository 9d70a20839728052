"""QLoRA (4-bit base through bitsandbytes), gradient checkpointing and LoRA merging, in
float32 on the tiny model (no DeepSpeed)."""

from __future__ import annotations

import copy

import torch

from segllm.modeling.lora import has_lora, merge_lora
from segllm.quantization import dequantize_linear_layers
from segllm.train.args import ModelArgs
from segllm.train.model_setup import build_model
from segllm.train.objective import compute_objective


def _grads(model, batch):
    model.zero_grad()
    compute_objective(model, batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_batch):
    torch.manual_seed(0)
    plain = build_model(ModelArgs(preset="tiny"))
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    want, got = _grads(plain, tiny_batch), _grads(checkpointed, tiny_batch)
    assert want.keys() == got.keys() and any("lora_A" in k for k in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_quantises_the_base_and_trains_only_adapters(tiny_batch):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = build_model(ModelArgs(preset="tiny", quantize_4bit=True))
    lm = model.language_model
    quantised = [m for m in lm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 2 * 7  # q k v o gate up down in each of the 2 layers
    assert all(not p.requires_grad for m in quantised for p in m.parameters())
    grads = _grads(model, tiny_batch)
    lora = [k for k in grads if "lora_" in k]
    assert lora and all(grads[k].abs().sum() > 0 for k in lora if "lora_B" in k)
    assert not any(k.startswith("llava.model.language_model") and "lora_" not in k
                   and "embed_tokens" not in k for k in grads)
    # export path: dequantise, then merge; outputs stay within 4-bit-free float error
    with torch.no_grad():
        before = model(**tiny_batch.model_inputs()).logits
    assert dequantize_linear_layers(lm) == 14 and has_lora(lm)
    with torch.no_grad():
        dequantised = model(**tiny_batch.model_inputs()).logits
    torch.testing.assert_close(dequantised, before, rtol=2e-2, atol=2e-2)  # bf16 compute before
    merge_lora(lm)
    assert not has_lora(lm)
    with torch.no_grad():
        torch.testing.assert_close(model(**tiny_batch.model_inputs()).logits, dequantised, rtol=1e-4, atol=1e-5)
