"""Fixtures for the training tests: a small synthetic set and one 50-step tiny run shared by
the loss, resume and export tests (the slow part; about 30 s on two shared cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "configs" / "train" / "tiny-synthetic.yaml"
DS_CONFIG = ROOT / "configs" / "ds_zero2.json"
STEPS = 50


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """8 conversations of 1-2 rounds on 48 px images (PNG + JSONL, the real formats)."""
    from segllm.data_builders.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(out, num=8, seed=0, image_size=48, max_rounds=2, gcg=False)
    return out


def tiny_overrides(synthetic_dir: Path, output_dir: Path, **extra) -> list[str]:
    """The tiny recipe pointed at the test data; ``extra`` adds or replaces keys."""
    values = {
        "output_dir": str(output_dir), "max_steps": STEPS, "micro_batch_size": 2,
        "deepspeed_config": str(DS_CONFIG), "threads": 1,
        "data.sources.0.path": str(synthetic_dir / "synthetic.jsonl"),
        "validation.path": str(synthetic_dir / "synthetic.jsonl"), "validation.every": 0,
        "validation.max_samples": 4, "optim.lr": "5.0e-3", "optim.warmup_steps": 10,
        "checkpoint.every": 25, "checkpoint.keep": 0, "logging.progress": "false",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def trained_run(synthetic_dir, tmp_path_factory):
    """The uninterrupted reference run: 50 steps, checkpoints at 25 and 50, merged export."""
    from segllm.train.args import load_train_config
    from segllm.train.trainer import train

    out = tmp_path_factory.mktemp("run-full")
    config = load_train_config(TINY_RECIPE, tiny_overrides(synthetic_dir, out))
    return train(config, keep_model=True)


def subprocess_env() -> dict[str, str]:
    """Env for launched trainers: one thread each, the repo importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # an in-process run of this session set these (and holds MASTER_PORT): start clean
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env
