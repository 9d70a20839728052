"""4-bit / 8-bit (bitsandbytes, on the CPU) and bf16 / fp16 loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segllm.pipeline import SegLLMPipeline, parse_dtype
from tests.pipeline.helpers import forcing

bnb = pytest.importorskip("bitsandbytes")

LLM_LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def last_hidden(pipeline) -> torch.Tensor:
    ids = torch.tensor([[1] + list(range(10, 60))])
    with torch.no_grad():
        embeds = pipeline.model.language_model.embed_tokens(ids)
        return pipeline.model.language_model(inputs_embeds=embeds).last_hidden_state.float()


@pytest.fixture(scope="module")
def reference_hidden(model_dir):
    return last_hidden(SegLLMPipeline.from_pretrained(model_dir))


@pytest.mark.parametrize("bits, layer_type, min_cosine", [
    (4, "Linear4bit", 0.97), (8, "Linear8bitLt", 0.999)])
def test_quantized_llm_only(model_dir, image, reference_hidden, bits, layer_type, min_cosine):
    from segllm.quantization import memory_by_component

    fp32 = SegLLMPipeline.from_pretrained(model_dir)
    pipeline = SegLLMPipeline.from_pretrained(model_dir, **{f"load_in_{bits}bit": True})
    model = pipeline.model
    kinds = [type(m).__name__ for m in model.language_model.modules()]
    layers = model.config.llm.num_hidden_layers
    assert kinds.count(layer_type) == LLM_LINEARS_PER_LAYER * layers
    assert not any(type(m) is nn.Linear for m in model.language_model.modules())
    assert model.quantization["bits"] == bits
    # LoRA was merged first (nothing of it is left) and nothing outside the LLM changed
    assert not any("lora" in n for n, _ in model.named_parameters())
    for part in (model.llava.model.vision_tower, model.llava.lm_head, model.seg_head,
                 model.decoder, model.llava.model.multi_modal_projector, model.mask_encoder):
        assert all(p.dtype == torch.float32 for p in part.parameters())
        assert not any(type(m).__name__.startswith("Linear") and type(m) is not nn.Linear
                       for m in part.modules())
    cosine = torch.nn.functional.cosine_similarity(last_hidden(pipeline), reference_hidden, dim=-1)
    assert cosine.min() > min_cosine
    # the LLM's projection weights shrink 8x (4-bit) or 4x (8-bit) against fp32, plus scales
    full, small = memory_by_component(fp32.model), memory_by_component(model)
    embed = model.language_model.embed_tokens.weight.numel() * 4
    ratio = (small["language_model"] - embed) / (full["language_model"] - embed)
    assert ratio < {4: 0.2, 8: 0.3}[bits]
    assert small["sam_mask_decoder"] == full["sam_mask_decoder"]
    reply = pipeline.start(image).ask("Segment the red square.",
                                      generation=forcing(pipeline, "Sure, [SEG]."))
    assert reply.text == "Sure, [SEG]." and reply.masks[0].shape == (48, 64)
    follow = pipeline.start(image)
    follow.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    assert follow.ask("And <ref:0>?", generation=forcing(pipeline, "[SEG].")).round == 1


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_keeps_sam_in_float32(model_dir, image, reference_hidden, dtype,
                                             torch_dtype):
    pipeline = SegLLMPipeline.from_pretrained(model_dir, dtype=dtype)
    model = pipeline.model
    assert model.language_model.embed_tokens.weight.dtype == torch_dtype
    assert model.llava.model.vision_tower.embeddings.patch_embedding.weight.dtype == torch_dtype
    assert all(p.dtype == torch.float32 for p in model.decoder.parameters())
    cosine = torch.nn.functional.cosine_similarity(last_hidden(pipeline), reference_hidden, dim=-1)
    assert cosine.min() > 0.999
    session = pipeline.start(image)
    first = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    second = session.ask("And <ref:0>?", generation=forcing(pipeline, "[SEG]."))
    assert first.masks[0].dtype == np.bool_ and second.masks[0].shape == (48, 64)


def test_four_bit_with_bf16_compute(model_dir, image):
    pipeline = SegLLMPipeline.from_pretrained(model_dir, dtype="bf16", load_in_4bit=True)
    q_proj = pipeline.model.language_model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.compute_dtype == torch.bfloat16
    reply = pipeline.start(image).ask("Segment it.", generation=forcing(pipeline, "[SEG]."))
    assert reply.masks[0].shape == (48, 64)


def test_merging_lora_keeps_the_outputs(model_dir, reference_hidden):
    from segllm.modeling.lora import merge_lora

    pipeline = SegLLMPipeline.from_pretrained(model_dir)
    with torch.no_grad():  # give LoRA B a non-zero value so the merge has something to do
        for name, p in pipeline.model.language_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = last_hidden(pipeline)
    assert merge_lora(pipeline.model.language_model) == 2 * pipeline.model.config.llm.num_hidden_layers
    assert torch.allclose(last_hidden(pipeline), before, atol=1e-5)
    assert not torch.allclose(before, reference_hidden, atol=1e-3)


def test_option_errors(model_dir):
    with pytest.raises(ValueError, match="choose one of load_in_4bit and load_in_8bit"):
        SegLLMPipeline.from_pretrained(model_dir, load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        parse_dtype("int3")
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype(None) is None
