"""Models saved before decoders were registered keep loading, with the same meaning and keys.

The v0 layout (``tests/fixtures/legacy_config``) named the decoder's section ``sam`` and its
freezing flags ``trainable.sam_image_encoder / sam_prompt_encoder / sam_mask_decoder /
reference_mask_encoder``; ``state_dict_v0.json`` holds the state-dict keys, shapes and
trainable parameters that code gave for the tiny mask-aware model and the ``shapes`` preset
(the model trained on this CPU, whose export writes the v0 layout).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.modeling.decoders.sam import SAMConfig
from segllm.modeling.model import CONFIG_NAME, SegLLMModel
from tests.conftest import make_conversation

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_config"
V0_STATE = json.loads((LEGACY / "state_dict_v0.json").read_text())


def shapes_of(model) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def trainable_of(model) -> list[str]:
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_the_v0_layout_maps_key_by_key():
    v0 = json.loads((LEGACY / "tiny_mask_aware_v0.json").read_text())
    config = SegLLMConfig.from_dict(v0)
    assert config.decoder == "sam" and config.mask_aware_decoding
    assert config.decoder_config == SAMConfig(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in v0["sam"].items()})
    assert config.trainable.decoder == {"image_encoder": False, "prompt_encoder": False,
                                        "mask_decoder": False, "reference_encoder": True}
    saved = config.to_dict()  # written in the new layout from now on
    assert "sam" not in saved and not any(k.startswith("sam_") for k in saved["trainable"])
    flipped = dict(v0, trainable={**v0["trainable"], "sam_image_encoder": True,
                                  "sam_mask_decoder": True, "reference_mask_encoder": False})
    assert SegLLMConfig.from_dict(flipped).trainable.decoder == {
        "image_encoder": True, "prompt_encoder": False, "mask_decoder": True,
        "reference_encoder": False}


def test_v0_overrides_still_work_on_a_preset():
    old = SegLLMConfig.from_name("tiny", trainable={"sam_mask_decoder": True},
                                 **{"sam.mask_threshold": 0.5})
    new = SegLLMConfig.from_name("tiny", trainable={"decoder": {"mask_decoder": True}},
                                 decoder_config={"mask_threshold": 0.5})
    assert old == new and old.decoder_config.encoder_embed_dim == 32  # the preset's sizes stay


def test_a_v0_model_directory_loads_strictly(tmp_path, tiny_tokenizer):
    """A tiny mask-aware model saved with the v0 config JSON and v0 key names."""
    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny", mask_aware_decoding=True),
                                    tokenizer=tiny_tokenizer).eval()
    assert shapes_of(model) == V0_STATE["tiny_mask_aware"]["shapes"]
    assert trainable_of(model) == V0_STATE["tiny_mask_aware"]["trainable"]
    for key in ("decoder.sam.image_encoder.patch_embed.proj.weight",
                "decoder.sam.prompt_encoder.no_mask_embed.weight",
                "decoder.sam.mask_decoder.iou_token.weight",
                "decoder.reference_encoder.layers.0.weight"):
        assert key in V0_STATE["tiny_mask_aware"]["shapes"], key
    with torch.no_grad():  # wake the zero-initialised reference path, so it matters below
        model.decoder.reference_encoder.layers[-1].weight.normal_(0, 0.5)
    directory = model.save_pretrained(tmp_path / "v0")
    shutil.copy(LEGACY / "tiny_mask_aware_v0.json", directory / CONFIG_NAME)
    loaded = SegLLMModel.from_pretrained(directory)  # strict: every key, every shape
    # v0 knew no video input: no reference frames, no <frame> id
    expected = model.config.with_overrides(**{"video.tokens_per_frame": 0})
    del expected.token_ids["frame"]
    assert loaded.config == expected and not loaded.takes_reference_frames
    assert trainable_of(loaded) == trainable_of(model)
    batch = build_batch([make_conversation("c", seed=1)], tiny_tokenizer, model.config)
    with torch.no_grad():
        before, after = model(**batch.model_inputs()), loaded.eval()(**batch.model_inputs())
    for a, b in zip(before.mask_logits, after.mask_logits, strict=True):
        assert torch.equal(a, b)


def test_a_v0_shapes_export_builds_the_same_keys_and_trainable_set():
    """What a ``shapes`` run started before the change exports (its v0 JSON) builds the model
    that run trained: the same keys and shapes, the same trainable parameters."""
    v0 = SegLLMConfig.load(LEGACY / "shapes_v0.json")
    assert v0.trainable.decoder == {"image_encoder": True, "prompt_encoder": True,
                                    "mask_decoder": True, "reference_encoder": True}
    with torch.device("meta"):
        model = SegLLMModel(v0)
    assert shapes_of(model) == V0_STATE["shapes"]["shapes"]
    assert trainable_of(model) == V0_STATE["shapes"]["trainable"]
