"""The mask-decoder registry: a new decoder is one class (its file) plus one registry line.

``ToyDecoder`` below is everything a decoder needs (in the package it would be
``segllm/modeling/decoders/toy.py`` plus ``register_decoder("toy", ToyDecoder)`` in
``segllm/modeling/decoders/__init__.py``); the tests run the tiny model's forward, a training
step, save / load and a chat session with it, and nothing else in segllm changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.decoders import (
    DECODERS,
    MaskDecoder,
    SAMDecoder,
    build_decoder,
    decoder_class,
    register_decoder,
)
from segllm.modeling.model import SegLLMModel
from segllm.pipeline import SegLLMPipeline
from segllm.train.objective import compute_objective
from segllm.typed_config import ConfigError
from tests.conftest import make_conversation
from tests.pipeline.helpers import forcing


@dataclass
class ToyConfig:
    image_size: int = 16
    prompt_dim: int = 8


class ToyDecoder(MaskDecoder):
    """A conv net: image features [B, C, S, S]; a mask per prompt is their dot product with
    the prompt's mean token, resized to the image."""

    config_class = ToyConfig
    trainable_defaults = {"convs": True}

    def __init__(self, config: ToyConfig, *, mask_aware: bool = False):
        super().__init__(config, mask_aware=mask_aware)
        self.convs = nn.Sequential(nn.Conv2d(3, config.prompt_dim, 3, padding=1), nn.GELU(),
                                   nn.Conv2d(config.prompt_dim, config.prompt_dim, 1))

    @classmethod
    def preprocess(cls, image, config):
        side = config.image_size
        pixels = F.interpolate(image[None].float() / 255, size=(side, side), mode="bilinear")[0]
        return pixels, (side, side)

    @classmethod
    def resized_size(cls, height, width, config):
        return config.image_size, config.image_size

    @property
    def prompt_dim(self) -> int:
        return self.config.prompt_dim

    def encode_image(self, pixels):
        return self.convs(pixels.to(self.convs[0].weight.dtype))

    def decode(self, image_features, prompts, input_size, original_size, *, ref_masks=None):
        logits = torch.einsum("nc,chw->nhw", prompts.mean(dim=1).to(image_features.dtype),
                              image_features[0])
        logits = F.interpolate(logits[None], size=original_size, mode="bilinear")[0]
        return logits, logits.sigmoid().mean(dim=(1, 2))

    def trainable_groups(self):
        return {"convs": self.convs}


@pytest.fixture()
def toy():
    register_decoder("toy", ToyDecoder)  # the one registry line
    yield ToyDecoder
    DECODERS.pop("toy")


@pytest.fixture()
def toy_model(toy, tiny_tokenizer):
    torch.manual_seed(0)
    config = SegLLMConfig.from_name("tiny", decoder="toy", decoder_config={"image_size": 16})
    return SegLLMModel.from_config(config, tokenizer=tiny_tokenizer)


def test_config_builds_the_registered_decoder(toy_model):
    config = toy_model.config
    assert config.decoder_config == ToyConfig(image_size=16, prompt_dim=8)
    assert config.trainable.decoder == {"convs": True}  # the tiny preset's SAM groups dropped
    assert isinstance(toy_model.decoder, ToyDecoder)
    assert toy_model.seg_head.prompt_dim == 8  # sized by the decoder's prompt_dim
    rows = toy_model.parameter_counts()
    assert rows["toy_convs"]["trainable"] == rows["toy_convs"]["total"] > 0
    assert not any(k.startswith("decoder.sam") for k in toy_model.state_dict())


def test_forward_training_step_and_save_load(toy_model, tiny_tokenizer, tmp_path):
    batch = build_batch([make_conversation("conv-a", seed=1)], tiny_tokenizer, toy_model.config)
    assert batch.decoder_pixel_values.shape == (1, 3, 16, 16)  # the toy's own preprocessing
    out = toy_model(**batch.model_inputs())
    assert [tuple(m.shape) for m in out.mask_logits] == [(4, 48, 64)]
    before = toy_model.decoder.convs[0].weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in toy_model.parameters() if p.requires_grad], lr=1e-2)
    objective = compute_objective(toy_model, batch)
    objective.loss.backward()
    assert toy_model.decoder.convs[0].weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, toy_model.decoder.convs[0].weight)
    toy_model.eval()
    loaded = SegLLMModel.from_pretrained(toy_model.save_pretrained(tmp_path / "toy"))
    assert loaded.config == toy_model.config and isinstance(loaded.decoder, ToyDecoder)
    with torch.no_grad():
        a, b = toy_model(**batch.model_inputs()), loaded(**batch.model_inputs())
    assert torch.equal(a.mask_logits[0], b.mask_logits[0])


def test_chat_session(toy_model):
    pipeline = SegLLMPipeline(toy_model)
    image = np.random.default_rng(0).integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    session = pipeline.start(image)
    first = session.ask("Segment the red square.", generation=forcing(pipeline, "Sure, [SEG]."))
    second = session.ask("And <ref:0>?", generation=forcing(pipeline, "[SEG]."))
    assert first.masks[0].shape == second.masks[0].shape == (48, 64)
    assert first.masks[0].dtype == np.bool_ and second.round == 1
    assert toy_model.decoder.convs[0].weight.dtype == torch.float32


def test_registry_and_config_errors(toy):
    assert decoder_class("sam") is SAMDecoder and decoder_class("toy") is ToyDecoder
    with pytest.raises(ValueError, match=r"unknown mask decoder 'unet'; "
                                         r"registered: \['hipie', 'querymeld', 'sam', 'toy'\]"):
        decoder_class("unet")
    with pytest.raises(ValueError, match="'toy' is already registered as ToyDecoder"):
        register_decoder("toy", SAMDecoder)
    with pytest.raises(TypeError, match="is not a MaskDecoder subclass"):
        register_decoder("linear", nn.Linear)
    with pytest.raises(ConfigError, match=r"config.decoder: 'unet' is not a registered decoder; "
                                          r"known: \['hipie', 'querymeld', 'sam', 'toy'\]"):
        SegLLMConfig.from_name("tiny", decoder="unet")
    with pytest.raises(ConfigError, match=r"config.trainable.decoder: unknown group\(s\) "
                                          r"\['mask_decoder'\]; known: \['convs'\]"):
        SegLLMConfig.from_name("tiny", decoder="toy", trainable={"decoder": {"mask_decoder": True}})
    with pytest.raises(ConfigError, match=r"config.decoder_config.image_size: expected an integer"):
        SegLLMConfig.from_name("tiny", decoder="toy", decoder_config={"image_size": "big"})


def test_build_decoder_follows_the_config():
    config = SegLLMConfig.from_name("tiny", mask_aware_decoding=True)
    decoder = build_decoder(config)
    assert isinstance(decoder, SAMDecoder) and decoder.reference_encoder is not None
    assert decoder.prompt_dim == config.decoder_config.prompt_embed_dim == 32
    assert set(decoder.trainable_groups()) == set(SAMDecoder.trainable_defaults)


def test_trainable_groups_merge_with_the_preset_and_the_decoder_defaults():
    shapes = SegLLMConfig.from_name("shapes", trainable={"decoder": {"image_encoder": False}})
    assert shapes.trainable.decoder == {"image_encoder": False, "prompt_encoder": True,
                                        "mask_decoder": True, "reference_encoder": True}
    dotted = SegLLMConfig.from_name("tiny", **{"trainable.decoder.mask_decoder": True})
    flags = dotted.trainable.decoder
    assert flags["mask_decoder"] and not flags["image_encoder"]
