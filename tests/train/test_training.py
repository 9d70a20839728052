"""End-to-end training on the CPU: learning, exact resume after SIGKILL, the merged export."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from segllm.modeling.model import SegLLMModel
from segllm.train.args import load_train_config
from segllm.train.checkpoint import list_checkpoints, read_trainer_state
from segllm.train.objective import compute_objective
from segllm.train.tracking import read_metrics
from segllm.train.trainer import train

from .conftest import ROOT, STEPS, TINY_RECIPE, subprocess_env, tiny_overrides

pytestmark = pytest.mark.slow


def step_metrics(output_dir) -> list[dict]:
    return [m for m in read_metrics(output_dir / "metrics.jsonl") if "loss" in m]


def test_mask_loss_falls_by_half_in_50_steps(trained_run):
    metrics = step_metrics(trained_run.output_dir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    mask = np.array([m["mask_loss"] for m in metrics])
    assert mask[-5:].mean() <= 0.5 * mask[:5].mean(), mask
    assert metrics[-1]["ce_loss"] < 0.5 * metrics[0]["ce_loss"]
    first = metrics[0]
    assert first["lr"] == pytest.approx(5e-3 / 10)  # warm-up step 1 of 10
    assert first["samples_per_s"] > 0 and first["tokens_per_s"] > 0 and first["grad_norm"] > 0
    validation = [m for m in read_metrics(trained_run.output_dir / "metrics.jsonl")
                  if "val/ciou" in m]
    assert validation and validation[-1]["step"] == STEPS and validation[-1]["val/masks"] > 0
    assert 0.0 <= validation[-1]["val/ciou_round_0"] <= 1.0


def test_validation_reports_round_types_and_runs_on_a_saved_model(trained_run, synthetic_dir,
                                                                   tmp_path, capsys):
    """Teacher-forced cIoU per round type, in training and for a saved model (the figures a
    retrained ablation of a mask path reads, apart from naming)."""
    import json

    from segllm.records import read_jsonl
    from segllm.train.validation import main as validation_main

    last = [m for m in read_metrics(trained_run.output_dir / "metrics.jsonl")
            if "val/ciou" in m][-1]
    types = {r["type"] for rec in list(read_jsonl(synthetic_dir / "synthetic.jsonl"))[:4]
             for r in rec["rounds"] if r["targets"]}
    assert {k for k in last if k.startswith("val/ciou_type_")} == {f"val/ciou_type_{t}"
                                                                   for t in types}
    out = tmp_path / "tf.json"
    assert validation_main(["--model", str(trained_run.export_dir), "--data",
                            str(synthetic_dir / "synthetic.jsonl"), "--limit", "4",
                            "--output", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["conversations"] == 4
    for key, value in last.items():  # the exported model scores what the trained one did
        if key.startswith("val/"):
            assert saved[key] == pytest.approx(value, abs=1e-6), key
    assert json.loads(capsys.readouterr().out) == saved


def test_checkpoints_are_complete_and_hold_only_trainable_weights(trained_run):
    found = list_checkpoints(trained_run.output_dir)
    assert [p.name for p in found] == ["checkpoint-0000025", "checkpoint-0000050"]
    state = read_trainer_state(found[-1])
    assert state["step"] == STEPS and state["data_position"] == STEPS * 2
    saved = torch.load(found[-1] / "engine" / "mp_rank_00_model_states.pt", weights_only=False)
    module = trained_run.model
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in module.named_buffers()}
    assert set(saved["module"]) - buffers == trainable  # DeepSpeed keeps buffers too (tiny)
    assert any("lora_A" in n for n in trainable)
    assert not any("vision_tower" in n for n in saved["module"])  # frozen CLIP not saved
    assert not list(trained_run.output_dir.glob(".tmp-*"))


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(trained_run, synthetic_dir,
                                                                    tmp_path):
    """Kill -9 a launched run right after its step-4 checkpoint; resume; compare all losses."""
    out = tmp_path / "killed"
    overrides = tiny_overrides(synthetic_dir, out, **{"checkpoint.every": 4})
    cmd = [sys.executable, "-m", "segllm.cli", "train", "--config", str(TINY_RECIPE), *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    try:
        while not (out / "checkpoint-0000004" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(m["step"] for m in step_metrics(out))
    assert killed_at < STEPS, "the run finished before it could be killed"

    config = load_train_config(TINY_RECIPE, overrides)
    resumed = train(config, resume=str(out / "checkpoint-0000004"))
    assert resumed.steps_done == STEPS and len(resumed.losses) == STEPS - 4
    reference = step_metrics(trained_run.output_dir)
    again = step_metrics(out)
    assert [m["step"] for m in again] == list(range(1, STEPS + 1))  # no duplicated lines
    for key in ("loss", "ce_loss", "bce_loss", "dice_loss", "lr"):
        np.testing.assert_allclose([m[key] for m in again], [m[key] for m in reference],
                                   rtol=1e-5, atol=1e-7, err_msg=key)


def test_merged_export_loads_and_matches_the_adapter_model(trained_run, synthetic_dir):
    from segllm.batching import collate
    from segllm.train.args import SourceArgs
    from segllm.train.data import ConversationSource

    exported = SegLLMModel.from_pretrained(trained_run.export_dir)
    assert exported.config.trainable.llm == "frozen"
    assert not any("lora_" in k for k in exported.state_dict())
    adapter = copy.deepcopy(trained_run.model).float().eval()
    assert any("lora_A" in k for k in adapter.state_dict())
    source = ConversationSource.from_args(SourceArgs(path=str(synthetic_dir / "synthetic.jsonl")))
    samples = [_encode(source, i, adapter) for i in range(2)]
    batch = collate(samples, adapter.config.token_ids["pad"])
    with torch.no_grad():
        want = compute_objective(adapter, batch)
        got = compute_objective(exported.eval(), batch)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-4)
    for g, w in zip(got.mask_logits, want.mask_logits, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)


def _encode(source, index, model):
    from segllm.batching import encode_sample

    record, image = source.load(index)
    return encode_sample(record, image, model.tokenizer, model.config)
