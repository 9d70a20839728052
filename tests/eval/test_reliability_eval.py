"""Issue 16 in ``segllm eval``: a malformed mask is an error, not a hang (item 1); with
``--model``, an unwritable ``--output`` and bad images are found before the first prediction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segllm.eval import cli as eval_cli
from segllm.eval import predictor as predictor_module

from .helpers import eval_args, round_prediction, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _predictions_with_a_short_mask(mrseg_set, tmp_path):
    """A predictions file for the set whose first mask's counts cover 741 of 64x64 pixels."""
    data, _ = mrseg_set
    records = [json.loads(line) for line in data.read_text().splitlines()]
    preds = []
    for record in records:
        size = (record["height"], record["width"])
        rounds = [[np.zeros(size, bool)] * len(r["targets"]) for r in record["rounds"]]
        preds.append(round_prediction(record["id"], rounds))
    preds[0]["rounds"][0]["masks"][0] = {"size": [record["height"], record["width"]], "counts": "Ue01o1"}
    return data, write_jsonl(tmp_path / "preds.jsonl", preds)


def test_a_mask_that_does_not_cover_its_size_is_an_error_not_a_hang(mrseg_set, tmp_path):
    """Before the fix pycocotools' iou looped for ever at 100 % CPU (Ctrl-C did not stop it):
    the command runs in a subprocess with a time limit so that a regression fails, not hangs."""
    data, preds = _predictions_with_a_short_mask(mrseg_set, tmp_path)
    cmd = [sys.executable, "-m", "segllm.cli", "eval", "mrseg", "--data", str(data),
           "--output", str(tmp_path / "out"), "--predictions", str(preds), "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "record 'conv-a', round 0" in proc.stderr and "sum to 741" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


@pytest.fixture()
def no_model(monkeypatch, tmp_path):
    """A model folder that resolves, and a predictor that fails the test if it is built."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "segllm_config.json").write_text("{}")

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predictor_module, "PipelinePredictor", refuse)
    return model


def test_unwritable_output_is_refused_before_the_model_loads(mrseg_set, tmp_path, no_model, capsys):
    data, images = mrseg_set
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a file where the output folder's parent should be (root ignores modes)
    args = eval_args(["mrseg", "--data", str(data), "--output", str(blocker / "out"),
                      "--model", str(no_model), "--images", str(images), "--no-progress"])
    assert eval_cli.run(args) == 2
    err = capsys.readouterr().err
    assert "cannot write there" in err and str(blocker / "out") in err


def test_a_missing_image_is_named_before_the_model_loads(mrseg_set, tmp_path, no_model, capsys):
    data, images = mrseg_set
    (images / "conv-b.png").unlink()
    args = eval_args(["mrseg", "--data", str(data), "--output", str(tmp_path / "out"),
                      "--model", str(no_model), "--images", str(images), "--no-progress"])
    assert eval_cli.run(args) == 2
    err = capsys.readouterr().err
    assert f"{data}:2, record 'conv-b'" in err and "not found" in err
