"""Training memory of the 7B preset, from the real module shapes on the meta device.

    .venv/bin/python bench/memory_7b.py [--seq 1024] [--micro-batch 2] [--lora-r 16]

Rows, per GPU, in GiB:
- weights: every parameter in bf16 (2 bytes), replicated under ZeRO-2;
- gradients: trainable parameters in bf16, partitioned by ZeRO-2 over N GPUs (the reduce
  buckets add a constant, DeepSpeed's reduce_bucket_size, not counted);
- optimizer: fp32 master copy + Adam m + v = 12 bytes per trainable parameter, / N;
- activations of the LLM for one micro-batch, without and with checkpointing. Counted from
  the decoder layer's Linear/RMSNorm shapes: every Linear keeps its input, each RMSNorm its
  input, SwiGLU keeps gate, up and their product, attention through SDPA/flash keeps q, k, v
  and its output (no L x L matrix). With checkpointing only each layer's input is kept, plus
  one layer's activations during its recomputation. The CLIP tower and the mask decoder are
  frozen with frozen inputs, so autograd keeps nothing for them; the logits ([tokens, vocab]
  in fp32 for the loss) are added once.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from segllm.config import SegLLMConfig
from segllm.modeling.model import SegLLMModel

GIB = 1024 ** 3


def build_on_meta(trainable_llm: str, lora_r: int) -> SegLLMModel:
    overrides = {"trainable": {"llm": trainable_llm}}
    if trainable_llm == "lora":
        overrides["lora"] = {"r": lora_r, "alpha": 2 * lora_r,
                             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    with torch.device("meta"):
        return SegLLMModel.from_config(SegLLMConfig.from_name("segllm-7b", **overrides))


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def layer_activation_elements(layer: nn.Module, tokens: int) -> int:
    """Elements autograd keeps for one decoder layer over ``tokens`` tokens (bf16 each)."""
    kept = 0
    for module in layer.modules():
        if isinstance(module, nn.Linear) and not hasattr(module, "base_layer"):
            kept += module.in_features * tokens  # input saved for the weight gradient
        elif type(module).__name__.endswith("RMSNorm"):
            kept += module.weight.shape[0] * tokens
    mlp = layer.mlp
    intermediate = mlp.up_proj.out_features if hasattr(mlp.up_proj, "out_features") \
        else mlp.up_proj.base_layer.out_features
    kept += 3 * intermediate * tokens  # gate, up, act(gate) * up for SwiGLU's backward
    attn = layer.self_attn
    q = attn.q_proj if isinstance(attn.q_proj, nn.Linear) else attn.q_proj.base_layer
    kept += 4 * q.out_features * tokens  # q, k, v (after RoPE) and the attention output
    return kept


def activation_bytes(model: SegLLMModel, tokens: int, checkpointing: bool) -> int:
    layers = list(model.language_model.layers)
    hidden = model.config.llm.hidden_size
    per_layer = layer_activation_elements(layers[0], tokens)
    if checkpointing:
        elements = len(layers) * hidden * tokens + per_layer
    else:
        elements = len(layers) * per_layer
    logits = tokens * model.config.llm.vocab_size * 4  # fp32 logits for the loss
    return 2 * elements + logits


def table(seq: int, micro_batch: int, lora_r: int) -> list[dict]:
    tokens = seq * micro_batch
    rows = []
    for mode in ("full", "lora"):
        model = build_on_meta(mode, lora_r)
        total, trainable = parameter_bytes(model)
        for gpus in (1, 8):
            weights = 2 * total
            grads = 2 * trainable / gpus
            optim = 12 * trainable / gpus
            for ckpt in (False, True):
                act = activation_bytes(model, tokens, ckpt)
                rows.append({"mode": mode, "gpus": gpus, "checkpointing": ckpt,
                             "params": total, "trainable": trainable, "weights": weights,
                             "grads": grads, "optimizer": optim, "activations": act,
                             "total": weights + grads + optim + act})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=1024, help="tokens per conversation")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    rows = table(args.seq, args.micro_batch, args.lora_r)
    print(f"segllm-7b, ZeRO-2 bf16, micro-batch {args.micro_batch} x {args.seq} tokens, "
          f"LoRA r={args.lora_r} on q,k,v,o; GiB per GPU")
    print(f"{'mode':5} {'GPUs':>4} {'ckpt':>5} {'params':>10} {'trainable':>10} {'weights':>8} "
          f"{'grads':>7} {'optim':>7} {'activ':>7} {'total':>7}")
    for r in rows:
        print(f"{r['mode']:5} {r['gpus']:>4} {('yes' if r['checkpointing'] else 'no'):>5} "
              f"{r['params'] / 1e9:>9.3f}B {r['trainable'] / 1e6:>9.1f}M "
              f"{r['weights'] / GIB:>8.2f} {r['grads'] / GIB:>7.2f} {r['optimizer'] / GIB:>7.2f} "
              f"{r['activations'] / GIB:>7.2f} {r['total'] / GIB:>7.2f}")


if __name__ == "__main__":
    main()
