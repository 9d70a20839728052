"""Training arguments: YAML, overrides, and errors that name the key before any step runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segllm.train.args import TrainConfigError, load_train_config
from segllm.train.backend import deepspeed_config
from segllm.train.cli import main as train_main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train" / "tiny-synthetic.yaml"


def test_yaml_loads_typed_and_overrides_apply():
    cfg = load_train_config(TINY, ["optim.lr=1e-3", "data.sources.0.weight=2",
                                   "model.overrides.lora.r=8", "checkpoint.every=7"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.data.sources[0].weight == 2.0
    assert cfg.model.overrides["lora"] == {"r": 8}
    assert cfg.checkpoint.every == 7
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.global_batch_size(world_size=4) == 2 * 1 * 4


def test_unknown_key_is_named_with_its_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\noptim2: {}\n")
    with pytest.raises(TrainConfigError, match=r"bad.yaml: unknown key\(s\) \['optim2'\]"):
        load_train_config(bad)
    with pytest.raises(TrainConfigError, match=r"unknown key\(s\) \['optim.learning_rate'\]"):
        load_train_config(TINY, ["optim.learning_rate=1"])
    with pytest.raises(TrainConfigError, match=r"optim.schedule: 'exponential' is not one of"):
        load_train_config(TINY, ["optim.schedule=exponential"])
    with pytest.raises(TrainConfigError, match=r"max_steps: expected an integer, got 'ten'"):
        load_train_config(TINY, ["max_steps=ten"])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TrainConfigError, match="nope.yaml does not exist"):
        load_train_config(tmp_path / "nope.yaml")


def test_cli_fails_before_building_a_model(tmp_path, capsys):
    """A missing data file ends the command with status 2 and its key, in well under a second."""
    code = train_main(["--config", str(TINY), f"output_dir={tmp_path}",
                       f"deepspeed_config={ROOT / 'configs' / 'ds_zero2.json'}",
                       "data.sources.0.path=/no/such/file.jsonl"])
    assert code == 2
    assert "data.sources.0.path: /no/such/file.jsonl does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was written
    assert train_main(["--config", str(TINY), "optim.nonsense=1"]) == 2
    assert "optim.nonsense" in capsys.readouterr().err


def test_deepspeed_auto_values_are_filled_and_conflicts_named(tmp_path):
    cfg = load_train_config(TINY, [f"deepspeed_config={ROOT / 'configs' / 'ds_zero2.json'}",
                                   "micro_batch_size=3", "gradient_accumulation_steps=4",
                                   "optim.max_grad_norm=0.5"])
    ds = deepspeed_config(cfg, world_size=8)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 96 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True
    fixed = tmp_path / "ds.json"
    fixed.write_text(json.dumps({**ds, "train_micro_batch_size_per_gpu": 1}))
    cfg.deepspeed_config = str(fixed)
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 1 but the training "
                                         "arguments give 3"):
        deepspeed_config(cfg, world_size=8)


def test_shipped_config_files_resolve_from_any_directory(tmp_path, monkeypatch):
    """configs/ds_zero2.json named by a recipe is found beside it when run from elsewhere."""
    from pathlib import Path

    from segllm.train.args import load_train_config

    recipe = Path(__file__).resolve().parents[2] / "configs" / "train" / "tiny-synthetic.yaml"
    monkeypatch.chdir(tmp_path)
    config = load_train_config(recipe, ["validation.path=null"])
    assert Path(config.deepspeed_config).is_file()
    assert Path(config.deepspeed_config).name == "ds_zero2.json"
    assert config.data.sources[0].path == "data/synthetic/synthetic.jsonl"  # data stays relative
