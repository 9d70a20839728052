"""LISA-7B's full key list maps completely onto segllm's model (on the meta device, no memory).

``full_size_keys.json`` holds every tensor name and shape of LISA-7B as LISA's merge script
saves it, taken from LISA's own classes built at Llama-7B / SAM ViT-H size
(tools/make_lisa_fixture.py). CLIP ViT-L/14's keys come from transformers' ``CLIPModel`` at
the sizes of openai/clip-vit-large-patch14's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from segllm.convert.lisa import (
    clip_aspect,
    drop_clip_extras,
    map_tensors,
    segllm_config,
    vocabulary_size,
)
from segllm.convert.source import SourceTensors
from segllm.modeling.decoders.sam import SAMConfig

FIXTURE = Path(__file__).parents[1] / "fixtures" / "convert" / "lisa" / "full_size_keys.json"
CLIP_L14 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
            "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768}


def clip_l14_on_meta() -> dict[str, torch.Tensor]:
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                     "num_hidden_layers": 12, "num_attention_heads": 12,
                     "max_position_embeddings": 77},
        vision_config={k: v for k, v in CLIP_L14.items() if k != "projection_dim"},
        projection_dim=768)
    with torch.device("meta"):
        return dict(CLIPModel(config).state_dict())


def test_lisa_7b_keys_map_completely_with_the_right_shapes():
    from accelerate import init_empty_weights

    from segllm.modeling.model import SegLLMModel

    data = json.loads(FIXTURE.read_text())
    lisa = data["config"]
    source = SourceTensors({k: torch.empty(s, device="meta") for k, s in data["shapes"].items()},
                           "LISA-7B")
    clip = SourceTensors(clip_l14_on_meta(), "openai/clip-vit-large-patch14")
    # LISA-7B's tokenizer: [SEG] 32001, <im_start> 32002, <im_end> 32003; segllm's six after it
    token_ids = {"seg": 32001, "image_start": 32002, "image_end": 32003, "image": 32004,
                 "mask_crop": 32005, "mask_box": 32006, "phrase_start": 32007,
                 "phrase_end": 32008, "frame": 32009, "pad": 0, "bos": 1, "eos": 2}
    rows = vocabulary_size(32010, lisa["vocab_size"])
    sam_shapes = {k.removeprefix("model.visual_model."): source.peek(k).shape
                  for k in source.with_prefix("model.visual_model.")}
    config = segllm_config(lisa, CLIP_L14, sam_shapes, token_ids, rows, True, "LISA-7B")
    drop_clip_extras(clip, "")
    state = map_tensors(source, clip, "", rows)
    source.finish()
    clip.finish()

    assert config.decoder_config == SAMConfig()  # ViT-H, read from the shapes alone
    assert config.vision.num_image_tokens == 256 and config.vision.aspect == clip_aspect(lisa)
    assert config.projector.kind == "linear" and config.vision.feature_layer == -2
    with init_empty_weights(include_buffers=False):
        model = SegLLMModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(state) == set(expected)
    wrong = {k: (tuple(v.shape), expected[k]) for k, v in state.items()
             if tuple(v.shape) != expected[k]}
    assert not wrong
    assert sum(v.numel() for v in state.values()) > 7_000_000_000
