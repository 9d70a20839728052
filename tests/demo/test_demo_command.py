"""``segllm demo``: the scripted tour of a model on the bundled scenes (a tiny random model
here; the shipped model's own quality is checked in tests/test_shipped_model.py)."""

from __future__ import annotations

import json

import pytest
import torch

from segllm.cli import main
from segllm.shipped import SCENES_DIR


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from segllm.config import SegLLMConfig
    from segllm.modeling.model import SegLLMModel

    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("tiny", mask_aware_decoding=True))
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "tiny")


def test_demo_prints_every_round_and_writes_pictures(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_dir), "--scenes", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    scene = json.loads((SCENES_DIR / "scenes.jsonl").read_text().splitlines()[0])
    for r, rnd in enumerate(scene["rounds"]):
        assert f"[{r}] {rnd['question']}" in printed
        assert (out / "scene_0" / f"round_{r:02d}" / "overlay.png").is_file()
    assert "there is no such object" in printed  # the scene has a "no such object" round
    assert "grounded caption of" in printed and "mean IoU by round" in printed
    report = json.loads((out / "demo.json").read_text())
    assert [r["question"] for r in report["scenes"][0]["rounds"]] == [
        r["question"] for r in scene["rounds"]]
    for rnd in report["scenes"][0]["rounds"]:
        assert all(0.0 <= v <= 1.0 for v in rnd["ious"])
    assert "caption" in report
    from PIL import Image

    for picture in ("scene_0.png", "caption.png"):
        with Image.open(out / picture) as image:
            assert image.width >= 300


def test_without_a_model_the_error_says_where_the_shipped_one_belongs(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("SEGLLM_MODEL", str(tmp_path / "nowhere"))
    assert main(["demo", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "--model" in err
