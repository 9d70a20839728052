"""A decode step against its physical limit: the bytes of weights it must read, over the memory
bandwidth of this machine measured in the same run.

Decoding one token multiplies a single activation row by every weight matrix of the LLM, so
each step reads all of them once (the token embedding: one row) and does about 2 FLOPs per
weight: far too few to be compute bound. Its floor is ``weight bytes / bandwidth``; the ratio
``step / floor`` says how far the step is from it, and fewer bytes a weight (bf16, int8) move
the floor itself. ``bench_inference.py`` prints the table; tests use the small functions.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from segllm.inference.dynamic_int8 import quantize_language_model_int8, quantized_weight_bytes


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (bytes read + bytes written), best of
    ``repeats``: the memory bandwidth one thread can use here."""
    src = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: the LLM's layers and final norm, ``lm_head``,
    and one row of the token embedding."""
    language_model = model.language_model
    embedding = language_model.embed_tokens.weight
    layers = sum(quantized_weight_bytes(layer) for layer in language_model.layers)
    norm = quantized_weight_bytes(language_model.norm)
    return (layers + norm + quantized_weight_bytes(model.llava.lm_head)
            + embedding.shape[1] * embedding.element_size())


@torch.inference_mode()
def decode_step_seconds(model, context: int = 256, steps: int = 16) -> float:
    """Median seconds of one decode step (embed a token, every LLM layer over a cache of
    ``context`` tokens, ``lm_head``) as the chat engine runs it, batch 1."""
    from segllm.inference.kv_cache import growing_cache

    language_model = model.language_model
    cache = growing_cache(language_model.config.num_hidden_layers, reserve=steps + 1)
    ids = torch.randint(5, 100, (1, context))
    language_model(inputs_embeds=language_model.embed_tokens(ids), past_key_values=cache,
                   use_cache=True)
    token = torch.tensor([[7]])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        hidden = language_model(inputs_embeds=language_model.embed_tokens(token),
                                past_key_values=cache, use_cache=True).last_hidden_state
        model.llava.lm_head(hidden[:, -1])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def decode_variants(model) -> dict[str, nn.Module]:
    """The model as the chat engine can run it: fp32, bf16 and int8 dynamic (copies)."""
    fp32 = copy.deepcopy(model).float().eval()
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    int8 = copy.deepcopy(fp32)
    quantize_language_model_int8(int8)
    return {"fp32": fp32, "bf16": bf16, "int8 dynamic": int8}


def decode_bound_rows(model, context: int = 256, steps: int = 8, rounds: int = 3) -> list[dict]:
    """One row per variant: weight bytes a step, the bandwidth floor, the step, their ratio.

    On a shared machine the bandwidth changes from second to second, so each round measures
    the copy bandwidth right before each variant's steps and the ratio is the median over
    rounds of ``step / (bytes / that bandwidth)``.
    """
    variants = decode_variants(model)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            bandwidth = copy_bandwidth(megabytes=128, repeats=3)
            samples[name].append((bandwidth, decode_step_seconds(variant, context, steps)))
    rows = []
    for name, variant in variants.items():
        weight_bytes = decode_weight_bytes(variant)
        bandwidth = statistics.median(b for b, _ in samples[name])
        rows.append({"variant": name, "weight_bytes": weight_bytes, "bandwidth": bandwidth,
                     "floor_s": weight_bytes / bandwidth,
                     "step_s": statistics.median(s for _, s in samples[name]),
                     "ratio": statistics.median(s * b / weight_bytes for b, s in samples[name])})
    return rows
