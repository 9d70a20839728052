"""The decode path's speed-ups: the growing KV cache, the int8 dynamic path and the CPU's
default dtype (bf16 only where it is faster), each giving the answers of the plain path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segllm.dtypes import CPU_DTYPE_ENV, default_cpu_dtype, resolve_dtype
from segllm.inference.kv_cache import GrowingLayer, growing_cache
from segllm.pipeline import SegLLMPipeline
from tests.pipeline.helpers import forcing

LLM_LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def test_growing_layer_returns_what_concatenating_returns_without_a_copy_a_step():
    layer = GrowingLayer(reserve=4)
    chunks = [torch.randn(2, 3, n, 5) for n in (6, 1, 1, 1, 1, 1, 7)]
    buffers = set()
    for i, chunk in enumerate(chunks):
        keys, values = layer.update(chunk, -chunk)
        expected = torch.cat(chunks[:i + 1], dim=2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
        assert layer.get_seq_length() == expected.shape[2]
        buffers.add(layer._key_buffer.data_ptr())
    # 6 columns -> room for 10; five one-column steps fill it (one grow at the 5th); 7 more grow
    assert len(buffers) == 3
    layer.crop(-3)
    assert torch.equal(layer.keys, torch.cat(chunks, dim=2)[:, :, :-3])
    with pytest.raises(ValueError, match="negative"):
        layer.crop(2)


def test_a_growing_cache_holds_the_data_it_starts_from():
    data = [(torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)) for _ in range(2)]
    cache = growing_cache(2, data)
    assert cache.get_seq_length() == 4
    assert all(torch.equal(layer.keys, k) for layer, (k, _) in zip(cache.layers, data, strict=True))
    with pytest.raises(ValueError, match="has 2 layers; the model has 3"):
        growing_cache(3, data)


def test_int8_dynamic_quantizes_the_llm_only_and_keeps_the_answers(model_dir, image):
    from segllm.inference.dynamic_int8 import quantized_weight_bytes

    fp32 = SegLLMPipeline.from_pretrained(model_dir, dtype="fp32")
    int8 = SegLLMPipeline.from_pretrained(model_dir, int8_dynamic=True)
    quantized = [m for m in int8.model.language_model.modules()
                 if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    layers = int8.model.config.llm.num_hidden_layers
    assert len(quantized) == LLM_LINEARS_PER_LAYER * layers
    assert type(int8.model.llava.lm_head) is nn.Linear  # scores [SEG]: kept in fp32
    assert int8.model.quantization["quant_type"] == "int8-dynamic"
    blocks = [quantized_weight_bytes(m.language_model.layers) for m in (int8.model, fp32.model)]
    assert blocks[0] < 0.35 * blocks[1]  # int8 weights: about a quarter of fp32's bytes
    ids = torch.tensor([[1] + list(range(10, 40))])
    with torch.inference_mode():
        hidden = [p.model.language_model(input_ids=ids).last_hidden_state.flatten()
                  for p in (fp32, int8)]
    assert float(torch.cosine_similarity(hidden[0], hidden[1], dim=0)) > 0.99
    reply = int8.start(image, generation=forcing(int8, "Sure, [SEG].")).ask("Segment it.")
    assert len(reply.masks) == 1 and reply.masks[0].shape == image.shape[:2]


def test_int8_dynamic_refuses_another_dtype_or_a_second_quantization(model_dir):
    with pytest.raises(ValueError, match="runs in fp32"):
        SegLLMPipeline.from_pretrained(model_dir, dtype="bf16", int8_dynamic=True)
    with pytest.raises(ValueError, match="choose one"):
        SegLLMPipeline.from_pretrained(model_dir, load_in_8bit=True, int8_dynamic=True)


def test_the_cpu_default_is_bf16_only_where_it_is_faster(monkeypatch):
    import segllm.dtypes as dtypes

    monkeypatch.delenv(CPU_DTYPE_ENV, raising=False)
    dtypes.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: False)
    assert default_cpu_dtype() == torch.float32  # no bf16 units: no timing, fp32
    dtypes.cpu_bf16_is_faster.cache_clear()
    monkeypatch.setattr(dtypes, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(dtypes, "_best_matmul_seconds",
                        lambda dtype, size, repeats: 1.0 if dtype == torch.bfloat16 else 3.0)
    assert default_cpu_dtype() == torch.bfloat16
    dtypes.cpu_bf16_is_faster.cache_clear()
    assert resolve_dtype("auto", "meta") is None  # off the CPU: the saved dtype
    monkeypatch.setenv(CPU_DTYPE_ENV, "fp32")
    assert resolve_dtype("auto") == torch.float32
    monkeypatch.setenv(CPU_DTYPE_ENV, "fp16")
    with pytest.raises(ValueError, match=CPU_DTYPE_ENV):
        default_cpu_dtype()


def test_the_shipped_model_gives_the_same_masks_in_bf16_and_by_default():
    """The shipped model's masks under the CPU default (fp32 on a CPU without bf16 units) and in
    bf16 against fp32: the same answers, masks within IoU tolerance."""
    from segllm.masks import mask_iou
    from segllm.shipped import SCENES_DIR, shipped_model_dir

    record = json.loads((SCENES_DIR / "scenes.jsonl").read_text().splitlines()[2])
    rounds = record["rounds"][:3]  # each with a target; round 1 refers to round 0
    replies = {}
    for dtype in ("fp32", "auto", "bf16"):
        pipeline = SegLLMPipeline.from_pretrained(shipped_model_dir(), dtype=dtype)
        session = pipeline.start(SCENES_DIR / record["image"], orientation="stored")
        replies[dtype] = [session.ask(r["question"], answer=r["answer"]) for r in rounds]
    for dtype, tolerance in (("auto", 0.999), ("bf16", 0.9)):
        for ours, reference in zip(replies[dtype], replies["fp32"], strict=True):
            assert len(ours.masks) == len(reference.masks) > 0
            ious = [mask_iou(a, b) for a, b in zip(ours.masks, reference.masks, strict=True)]
            assert min(ious) >= tolerance, (dtype, ious)
