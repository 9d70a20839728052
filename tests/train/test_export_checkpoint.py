"""python -m segllm.train.export_checkpoint: any checkpoint of a run as a model folder; the last
one gives exactly the run's own final export, and one that does not match its run is refused."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from segllm.modeling.model import SegLLMModel
from segllm.train.export_checkpoint import ExportError, export_checkpoint, main


def test_the_last_checkpoint_exports_as_the_runs_final_export(trained_run, tmp_path):
    out = export_checkpoint(trained_run.output_dir / "checkpoint-0000050", tmp_path / "at-50")
    want = load_file(trained_run.export_dir / "model.safetensors")
    got = load_file(out / "model.safetensors")
    assert got.keys() == want.keys()
    assert all((got[k] == want[k]).all() for k in want)
    assert json.loads((out / "segllm_config.json").read_text()) == json.loads(
        (trained_run.export_dir / "segllm_config.json").read_text())
    early = load_file(export_checkpoint(trained_run.output_dir / "checkpoint-0000025",
                                        tmp_path / "at-25") / "model.safetensors")
    assert any(not (early[k] == want[k]).all() for k in want)  # trained weights moved since
    SegLLMModel.from_pretrained(out)


def test_a_checkpoint_beside_another_runs_config_is_refused(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run.output_dir / "checkpoint-0000050", run / "checkpoint-0000050")
    config = json.loads((trained_run.output_dir / "train_config.json").read_text())
    config["seed"] += 1  # the frozen base weights come from the seed: other weights
    (run / "train_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="checkpoint-0000050: the frozen weights"):
        export_checkpoint(run / "checkpoint-0000050", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err
