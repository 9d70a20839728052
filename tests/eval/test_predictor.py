"""The ``SegLLMPipeline`` adapter (``segllm.eval.predictor``) over hand-built ``segllm.pipeline``
modules: branches the real pipeline cannot reach (a session without ``ref_masks``), and the
``--model`` path of ``segllm eval`` with a scripted predictor behind the adapter, so the metrics
are known exactly. The real pipeline runs behind ``segllm eval`` in ``tests/test_readme.py``."""

from __future__ import annotations

import json
import sys
import types

import pytest

from segllm.eval import cli as eval_cli
from segllm.eval.predictor import PipelinePredictor, SimpleReply
from segllm.eval.runners import run_round_task

from .helpers import MRSEG_SCRIPT, T0, FakePredictor, eval_args


class GenerationConfig:
    """Stands in for ``segllm.pipeline.GenerationConfig``: keeps what the adapter sets."""

    def __init__(self, **settings):
        self.settings = settings


def fake_pipeline_module(monkeypatch, from_pretrained) -> None:
    """Install a ``segllm.pipeline`` whose ``SegLLMPipeline.from_pretrained`` is the given function."""
    module = types.ModuleType("segllm.pipeline")
    module.GenerationConfig = GenerationConfig
    module.SegLLMPipeline = type("SegLLMPipeline", (), {"from_pretrained": classmethod(from_pretrained)})
    monkeypatch.setitem(sys.modules, "segllm.pipeline", module)


class PlainSession:
    """A session whose ``ask`` takes no ``ref_masks`` (an older or foreign pipeline)."""

    def ask(self, text):
        return SimpleReply(text="[SEG]", masks=[T0], scores=[1.0])


def plain_pipeline(cls, path, device="cpu", generation=None):
    return type("Pipe", (), {"start": lambda self, image: PlainSession()})()


def test_cli_model_path_through_pipeline_adapter(mrseg_set, tmp_path, monkeypatch, capsys):
    data, images = mrseg_set

    def from_pretrained(cls, path, device="cpu", generation=None):
        assert (path, device) == ("some/model", "cpu")
        return FakePredictor(MRSEG_SCRIPT)

    fake_pipeline_module(monkeypatch, from_pretrained)
    model = tmp_path / "some" / "model"  # a model folder is recognised by its config file
    model.mkdir(parents=True)
    (model / "segllm_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    rc = eval_cli.run(eval_args(["refer", "--model", "some/model", "--images", str(images), "--data", str(data),
                                 "--output", str(out), "--no-progress"]))
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["modes"]) == ["own"]  # single-round tasks default to own mode
    assert metrics["modes"]["own"]["overall"]["ciou"] == pytest.approx(548 / 804)
    assert metrics["source"] == {"model": "some/model"}
    assert "| own masks fed back | 68.2 |" in capsys.readouterr().out


def test_pipeline_without_ref_masks_fails_clearly_in_gt_mode(mrseg_set, tmp_path, monkeypatch):
    data, images = mrseg_set
    fake_pipeline_module(monkeypatch, plain_pipeline)
    predictor = PipelinePredictor("m")
    with pytest.raises(NotImplementedError, match="ref_masks"):
        run_round_task("mrseg", data, tmp_path / "out", predictor=predictor, images=images, progress=False)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_pipeline_without_ref_masks_still_serves_own_mode(mrseg_set, tmp_path, monkeypatch):
    data, images = mrseg_set
    fake_pipeline_module(monkeypatch, plain_pipeline)
    metrics = run_round_task("mrseg", data, tmp_path / "out", predictor=PipelinePredictor("m"),
                             images=images, modes=("own",), progress=False)
    assert list(metrics["modes"]) == ["own"]  # own mode never passes ref_masks


def test_inference_ablations_switch_off_each_path_back_to_earlier_rounds(tmp_path):
    import numpy as np
    import torch

    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny", mask_aware_decoding=True))
    path = model.save_pretrained(tmp_path / "m")
    full = PipelinePredictor(str(path))
    assert full.pipeline.model.decoder.reference_encoder is not None
    no_tokens = PipelinePredictor(str(path), ablate=["mask-tokens"])
    assert no_tokens.pipeline.model.mask_encoder.inference_scale == 0.0
    assert "ablated: mask-tokens" in no_tokens.name
    no_refs = PipelinePredictor(str(path), ablate=["reference-masks"])
    assert no_refs.pipeline.model.decoder.reference_encoder is None
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    session = no_refs.start(image)  # still answers a referring question, masks and all
    session.ask("Segment the red square.")
    with pytest.raises(ValueError, match="unknown ablation"):
        PipelinePredictor(str(path), ablate=["everything"])
