import json
from pathlib import Path

import pytest
import yaml

from segllm.config import PRESETS, SegLLMConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_preset_round_trips_through_json(tmp_path):
    for name in PRESETS:
        cfg = SegLLMConfig.from_name(name)
        cfg.save(tmp_path / f"{name}.json")
        again = SegLLMConfig.load(tmp_path / f"{name}.json")
        assert again == cfg
        assert again.name == name


def test_overrides_nested_dotted_and_top_level():
    cfg = SegLLMConfig.from_name("tiny", lora={"r": 16}, **{"loss.dice_weight": 1.5}, max_length=77)
    assert cfg.lora.r == 16 and cfg.lora.alpha == 8  # the rest of the preset stays
    assert cfg.loss.dice_weight == 1.5 and cfg.loss.bce_weight == 2.0
    assert cfg.max_length == 77


def test_preset_facts():
    seg = SegLLMConfig.from_name("segllm-7b")
    assert (seg.vision.image_size, seg.vision.patch_size, seg.vision.num_image_tokens) == (336, 14, 576)
    assert seg.mask_encoder.enabled and seg.decoder == "sam" and seg.decoder_config.encoder_embed_dim == 1280
    lisa = SegLLMConfig.from_name("lisa-7b")
    assert lisa.vision.image_size == 224 and not lisa.mask_encoder.enabled
    assert (lisa.lora.r, lisa.lora.alpha, lisa.lora.target_modules) == (8, 16, ("q_proj", "v_proj"))
    assert lisa.trainable.llm == "lora"
    assert (seg.loss.ce_weight, seg.loss.bce_weight, seg.loss.dice_weight) == (1.0, 2.0, 0.5)


def test_unknown_preset_and_unknown_field_are_named():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        SegLLMConfig.from_name("nope")
    with pytest.raises(ValueError, match=r"config.lora: unknown field\(s\) \['rank'\]"):
        SegLLMConfig.from_name("tiny", lora={"rank": 3})


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\ndecoder_config: {depth: 3}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: config.decoder_config: unknown field"):
        SegLLMConfig.from_file(bad)
    missing = tmp_path / "nopreset.yaml"
    missing.write_text("lora: {r: 2}\n")
    with pytest.raises(ValueError, match="nopreset.yaml: a model config needs a 'preset'"):
        SegLLMConfig.from_file(missing)


def _load_config_file(path: Path):
    """Every shipped config is loaded by the loader that its folder is for."""
    folder = path.relative_to(ROOT / "configs").parts[0]
    if folder == "model":
        return SegLLMConfig.from_file(path)
    if folder == "train":
        from segllm.train.args import load_train_config
        from segllm.train.decoder_training import is_decoder_recipe, load_decoder_config

        return load_decoder_config(path) if is_decoder_recipe(path) else load_train_config(path)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return yaml.safe_load(path.read_text())


def test_every_file_in_configs_loads():
    files = sorted(p for p in (ROOT / "configs").rglob("*") if p.is_file())
    assert files, "configs/ is empty"
    for path in files:
        loaded = _load_config_file(path)
        assert loaded, f"{path} loaded as empty"


@pytest.mark.parametrize("overrides, message", [
    ({"lora.r": "eight"}, r"config.lora.r: expected an integer, got 'eight'"),
    ({"trainable.llm": "lorra"}, r"config.trainable.llm: 'lorra' is not one of \['lora', 'full', 'frozen'\]"),
    ({"token_ids": {"seg": "x"}}, r"config.token_ids.seg: expected an integer, got 'x'"),
    ({"mask_aware_decoding": "yes"}, r"config.mask_aware_decoding: expected true or false, got 'yes'"),
    ({"decoder_config.encoder_global_attn_indexes": [1, "a"]},
     r"config.decoder_config.encoder_global_attn_indexes.1: expected an integer, got 'a'"),
    ({"llm.num_key_value_heads": 2.5}, r"config.llm.num_key_value_heads: expected an integer, got 2.5"),
    ({"llm": 3}, r"config.llm: expected a mapping, got int"),
])
def test_wrong_types_and_choices_are_named_with_the_full_key_path(overrides, message):
    with pytest.raises(ValueError, match=message):
        SegLLMConfig.from_name("tiny", **overrides)


def test_lists_for_tuples_ints_for_floats_and_none_for_optionals_are_taken():
    cfg = SegLLMConfig.from_name("tiny", **{"lora.target_modules": ["q_proj"], "loss.dice_weight": 1,
                                            "decoder_config.encoder_global_attn_indexes": [0, 1],
                                            "llm.num_key_value_heads": None})
    assert cfg.lora.target_modules == ("q_proj",) and cfg.decoder_config.encoder_global_attn_indexes == (0, 1)
    assert cfg.loss.dice_weight == 1.0 and isinstance(cfg.loss.dice_weight, float)
    assert cfg.llm.num_key_value_heads is None


def test_model_and_training_configs_share_one_checker(tmp_path):
    from segllm.train.args import TrainConfigError, config_from_dict
    from segllm.typed_config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nlora: {r: eight}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: config.lora.r: expected an integer"):
        SegLLMConfig.from_file(bad)
    with pytest.raises(TrainConfigError, match=r"config: optim.lr: expected a number, got 'fast'"):
        config_from_dict({"model": {"preset": "tiny"}, "optim": {"lr": "fast"}})
    assert issubclass(TrainConfigError, ConfigError)
