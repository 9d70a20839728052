"""Two CPU processes (gloo) under the real ``deepspeed`` launcher, ZeRO-2 bf16, against one
process with the same global batch (micro-batch 1 x accumulation 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segllm.train.args import load_train_config
from segllm.train.backend import free_port
from segllm.train.tracking import read_metrics
from segllm.train.trainer import train

from .conftest import ROOT, TINY_RECIPE, subprocess_env, tiny_overrides

pytestmark = pytest.mark.slow
STEPS = 5


def test_two_processes_match_one_with_the_same_global_batch(synthetic_dir, tmp_path):
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    common = {"max_steps": STEPS, "micro_batch_size": 1, "checkpoint.export": "false",
              "checkpoint.every": 0, "validation.path": "null"}
    launcher = Path(sys.executable).parent / "deepspeed"
    env = dict(subprocess_env(), LOCAL_SIZE="2")  # the CPU accelerator's device count
    cmd = [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), "--module",
           "segllm.train.cli", "--config", str(TINY_RECIPE),
           *tiny_overrides(synthetic_dir, two_dir, **common)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train(load_train_config(TINY_RECIPE, tiny_overrides(
        synthetic_dir, one_dir, **common, gradient_accumulation_steps=2)))

    two = [m for m in read_metrics(two_dir / "metrics.jsonl") if "loss" in m]
    one = [m for m in read_metrics(one_dir / "metrics.jsonl") if "loss" in m]
    assert len(two) == len(one) == STEPS
    assert two[0]["samples_seen"] == one[0]["samples_seen"] == 2
    for key in ("loss", "mask_loss", "ce_loss"):
        np.testing.assert_allclose([m[key] for m in two], [m[key] for m in one], rtol=1e-4,
                                   err_msg=key)
    assert two[-1]["loss"] < two[0]["loss"]  # it trained
