"""GLaMM-7B's full key list maps completely onto segllm's model (meta device, no memory).

``full_size_keys.json`` holds every tensor name and shape of GLaMM-7B as ``save_pretrained``
writes it, from GLaMM's own classes built at Llama-7B / SAM ViT-H size with their region
encoder (tools/make_glamm_fixture.py). CLIP ViT-L/14-336's keys come from transformers'
``CLIPModel`` at the sizes of openai/clip-vit-large-patch14-336's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from segllm.convert.glamm import (
    SAM_PREFIX,
    map_tensors,
    region_encoder_config,
    region_key,
    segllm_config,
)
from segllm.convert.lisa import drop_clip_extras, vocabulary_size
from segllm.convert.source import ConvertError, SourceTensors
from segllm.modeling.decoders.sam import SAMConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "convert" / "glamm" / "full_size_keys.json"
CLIP_L14_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
                "projection_dim": 768}


def clip_on_meta() -> dict[str, torch.Tensor]:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12,
                     "max_position_embeddings": 77},
        vision_config={k: v for k, v in CLIP_L14_336.items() if k != "projection_dim"},
        projection_dim=768)
    with torch.device("meta"):
        return dict(CLIPModel(config).state_dict())


def glamm_7b_source() -> tuple[dict, SourceTensors]:
    data = json.loads(FIXTURE.read_text())
    return data["config"], SourceTensors(
        {k: torch.empty(s, device="meta") for k, s in data["shapes"].items()}, "GLaMM-7B")


def test_glamm_7b_keys_map_completely_with_the_right_shapes():
    from accelerate import init_empty_weights

    from segllm.modeling.model import SegLLMModel

    glamm, source = glamm_7b_source()
    clip = SourceTensors(clip_on_meta(), "openai/clip-vit-large-patch14-336")
    # GLaMM's tokenizer (train.py): <im_start> 32000, <im_end> 32001, <bbox> 32002,
    # <point> 32003, [SEG] 32004, <p> 32005, </p> 32006; segllm's after it
    token_ids = {"image_start": 32000, "image_end": 32001, "region": 32002, "seg": 32004,
                 "phrase_start": 32005, "phrase_end": 32006, "image": 32007,
                 "mask_crop": 32008, "mask_box": 32009, "frame": 32010, "pad": 0, "bos": 1,
                 "eos": 2}
    rows = vocabulary_size(32011, glamm["vocab_size"])
    region = region_encoder_config(source, glamm, CLIP_L14_336, glamm["hidden_size"])
    sam_shapes = {k.removeprefix(SAM_PREFIX): source.peek(k).shape
                  for k in source.with_prefix(SAM_PREFIX)}
    config = segllm_config(glamm, CLIP_L14_336, sam_shapes, region, token_ids, rows, "GLaMM-7B")
    drop_clip_extras(clip, "")
    state = map_tensors(source, clip, "", rows)
    source.finish()
    clip.finish()

    assert config.decoder_config == SAMConfig()  # ViT-H, from the shapes alone
    assert config.vision.num_image_tokens == 576 and config.projector.kind == "mlp"
    assert region == {"enabled": True, "num_levels": 4, "num_fuse": 5, "roi_size": 14,
                      "query_dim": 1024, "box_hidden": 256, "norm_groups": 64}
    with init_empty_weights(include_buffers=False):
        model = SegLLMModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(state) == set(expected)
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in state.items()
             if tuple(v.shape) != expected[k]}
    assert not wrong
    assert sum(v.numel() for k, v in state.items() if k.startswith("region_encoder.")) > 2e8


def test_a_region_encoder_that_does_not_fit_is_an_error():
    glamm, source = glamm_7b_source()
    narrow_clip = {**CLIP_L14_336, "hidden_size": 768}
    with pytest.raises(ConvertError, match="width 1024 is not CLIP's 768"):
        region_encoder_config(source, glamm, narrow_clip, glamm["hidden_size"])


def test_an_unknown_region_encoder_key_is_an_error_naming_it():
    with pytest.raises(ConvertError, match="roi_align.extra.weight"):
        region_key("roi_align.extra.weight")
