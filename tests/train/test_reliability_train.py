"""Issue 16 in training: no code from checkpoints (item 4), one run per output folder
(item 5), every image checked before step 1 (item 8), optimizer values checked at load,
exports readable by others."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segllm.image_check import ImageCheckError
from segllm.train import checkpoint as ckpt
from segllm.train import run_dir
from segllm.train.args import TrainConfigError, load_train_config
from segllm.train.cli import main as train_main

from .conftest import DS_CONFIG, TINY_RECIPE, tiny_overrides


class _RunsACommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ item 4: RNG files


def _draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.random(), np.random.normal(), float(torch.rand(1))


def test_rng_state_reloads_with_weights_only_and_resumes_exactly(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _draws()  # a cached gaussian on both python and numpy
    torch.save(ckpt.rng_state(), tmp_path / "rng_state_rank0.pt")
    want = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state = torch.load(tmp_path / "rng_state_rank0.pt", weights_only=True)  # plain data only
    ckpt.set_rng_state(state)
    assert _draws() == want


def test_an_rng_file_of_an_earlier_release_is_still_read(tmp_path):
    random.seed(4), np.random.seed(5), torch.manual_seed(6)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(legacy, tmp_path / "old.pt")  # numpy arrays: refused by a bare weights_only load
    want = _draws()
    ckpt.set_rng_state(ckpt.load_rng_file(tmp_path / "old.pt"))
    assert _draws() == want


def test_a_crafted_checkpoint_runs_nothing_and_is_refused(tmp_path):
    marker = tmp_path / "ran"
    rng = tmp_path / "rng_state_rank0.pt"
    torch.save({"torch": torch.get_rng_state(), "x": _RunsACommand(marker)}, rng)
    with pytest.raises(ckpt.CheckpointError, match=r"rng_state_rank0.pt: refused, not plain data.*posix.system"):
        ckpt.load_rng_file(rng)
    engine = tmp_path / "engine"
    engine.mkdir()
    torch.save({"module": {}, "x": _RunsACommand(marker)}, engine / "mp_rank_00_model_states.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"mp_rank_00_model_states.pt: refused"):
        ckpt.check_engine_files(engine)
    assert not marker.exists()


@pytest.mark.slow
def test_a_real_checkpoint_holds_plain_data_and_names_its_run(trained_run):
    last = ckpt.list_checkpoints(trained_run.output_dir)[-1]
    torch.load(last / "rng_state_rank0.pt", weights_only=True)
    ckpt.check_engine_files(last / ckpt.ENGINE_TAG)  # DeepSpeed's files pass the same check
    run = ckpt.read_trainer_state(last)[run_dir.RUN_KEY]
    owner = json.loads((trained_run.output_dir / run_dir.RUN_FILE).read_text())
    assert run["id"] == owner["id"] and run["config_hash"] == owner["config_hash"]
    assert "optim" in run["config"] and "max_steps" not in run["config"]


# ------------------------------------------------------------------ item 5: one run per folder


def _config(synthetic_dir, out, **extra):
    return load_train_config(TINY_RECIPE, tiny_overrides(synthetic_dir, out, **extra))


def test_a_fresh_run_into_a_used_folder_is_refused_before_a_model_is_built(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 9}\n')
    with pytest.raises(run_dir.RunDirError, match="is not empty .*--resume .*--overwrite"):
        run_dir.plan_run(_config(synthetic_dir, out), resume=None)
    assert train_main(["--config", str(TINY_RECIPE), *tiny_overrides(synthetic_dir, out)]) == 2
    assert "is not empty (metrics.jsonl)" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 9}\n'
    plan = run_dir.plan_run(_config(synthetic_dir, out), resume=None, overwrite=True)
    (out / "checkpoint-0000009").mkdir()
    (out / "notes.txt").write_text("mine")
    run_dir.claim(plan, _config(synthetic_dir, out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "run.json", "train_config.json"]
    with pytest.raises(run_dir.RunDirError, match="give one of them"):
        run_dir.plan_run(_config(synthetic_dir, out), resume="latest", overwrite=True)


def _fake_checkpoint(folder: Path, config, run_id: str, step: int = 4) -> Path:
    """A checkpoint folder as save_checkpoint leaves it (the engine files are not needed here)."""
    plan = run_dir.RunPlan(folder, None, run_id, run_dir.config_hash(config.to_dict()), clear=False)
    path = folder / ckpt.checkpoint_name(step)
    path.mkdir(parents=True)
    state = {"step": step, run_dir.RUN_KEY: plan.checkpoint_entry(config)}
    (path / ckpt.STATE_NAME).write_text(json.dumps(state))
    return path


def test_resume_refuses_another_runs_checkpoint_naming_what_differs(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    first = _config(synthetic_dir, out)
    run_dir.claim(run_dir.plan_run(first, resume=None), first)
    run_id = json.loads((out / run_dir.RUN_FILE).read_text())["id"]
    checkpoint = _fake_checkpoint(out, first, run_id)
    # the same run, with what may change between a run and its resumption changed: fine
    longer = _config(synthetic_dir, out, max_steps=80, **{"checkpoint.every": 5})
    assert run_dir.plan_run(longer, resume="latest").resume_from == checkpoint
    # another learning rate is another run
    other_lr = _config(synthetic_dir, out, **{"optim.lr": "1.0e-4"})
    with pytest.raises(run_dir.RunDirError, match=r"is from another run: optim.lr \(0.005 then, 0.0001 now\)"):
        run_dir.plan_run(other_lr, resume="latest")
    # a checkpoint of another run, named explicitly, into this run's folder
    elsewhere = _fake_checkpoint(tmp_path / "other", first, "someone-else")
    with pytest.raises(run_dir.RunDirError, match="belongs to run .*is from run someone-else"):
        run_dir.plan_run(first, resume=str(elsewhere))


def test_a_checkpoint_of_an_earlier_release_is_checked_against_its_saved_config(synthetic_dir, tmp_path):
    out = tmp_path / "run"
    config = _config(synthetic_dir, out)
    path = out / ckpt.checkpoint_name(4)
    path.mkdir(parents=True)
    (path / ckpt.STATE_NAME).write_text(json.dumps({"step": 4}))  # no run entry
    (out / run_dir.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    assert run_dir.plan_run(config, resume="latest").resume_from == path
    with pytest.raises(run_dir.RunDirError, match="seed"):
        run_dir.plan_run(_config(synthetic_dir, out, seed=5), resume="latest")


# ------------------------------------------------------------------ item 8: images before step 1


@pytest.mark.parametrize("damage", ["missing", "truncated", "resized"])
def test_a_bad_image_is_named_before_step_1(synthetic_dir, tmp_path, damage):
    from PIL import Image

    from segllm.train.trainer import train

    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    records = (data / "synthetic.jsonl").read_text().splitlines()
    bad_line = 6
    record = json.loads(records[bad_line - 1])
    image = data / record["image"]
    if damage == "missing":
        image.unlink()
    elif damage == "truncated":
        image.write_bytes(image.read_bytes()[:20])
    else:
        Image.new("RGB", (10, 10)).save(image)
    out = tmp_path / "run"
    config = load_train_config(TINY_RECIPE, tiny_overrides(
        data, out, **{"validation.path": "null", "checkpoint.export": "false"}))
    with pytest.raises(ImageCheckError) as caught:
        train(config)
    message = str(caught.value)
    assert f"synthetic.jsonl:{bad_line}, record {record['id']!r}: image {image}" in message
    assert {"missing": "not found", "truncated": "not a readable image", "resized": "is 10x10"}[damage] in message
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("checkpoint-*"))


# ------------------------------------------------------------------ also: config values, exports


@pytest.mark.parametrize("override, key", [
    ("optim.lr=-1.0e-3", "optim.lr must be >= 0"), ("optim.lr=.nan", "optim.lr: expected a finite number"),
    ("optim.betas=[0.9, 1.0]", r"optim.betas.1 must be in \[0, 1\)"),
    ("optim.betas=[-0.1, 0.9]", r"optim.betas.0 must be in \[0, 1\)"),
    ("optim.eps=0.0", "optim.eps must be > 0"),
])
def test_bad_optimizer_values_fail_at_load_naming_the_key(override, key):
    with pytest.raises(TrainConfigError, match=key):
        load_train_config(TINY_RECIPE, [f"deepspeed_config={DS_CONFIG}", override])


def test_a_quoted_number_in_a_model_config_fails_at_load():
    from segllm.config import SegLLMConfig
    from segllm.typed_config import ConfigError

    data = SegLLMConfig.from_name("tiny").to_dict()
    data["decoder_config"]["mask_threshold"] = "0.5"
    with pytest.raises(ConfigError, match="config.decoder_config.mask_threshold: expected a number, got '0.5'"):
        SegLLMConfig.from_dict(data)
    data["decoder_config"]["mask_threshold"] = float("nan")
    with pytest.raises(ConfigError, match="mask_threshold: expected a finite number"):
        SegLLMConfig.from_dict(data)


def test_an_export_is_readable_by_others(tmp_path):
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel
    from segllm.train.export import export_merged

    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny"))
    old = os.umask(0o022)
    try:
        out = export_merged(model, tmp_path / "export")
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    for path in out.rglob("*"):
        assert oct(path.stat().st_mode & 0o777) == oct(0o755 if path.is_dir() else 0o644), path
