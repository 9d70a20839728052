"""Training curves (train/curves.py): stages drawn in sequence, the word loss when present."""

from __future__ import annotations

import json

import pytest

from segllm.train.curves import chain_stages, generated_ciou, main


def test_stages_are_chained_with_their_steps_shifted():
    first = [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.0, "val/ciou": 0.3}]
    second = [{"step": 10, "loss": 0.9, "aux_loss": 1.5}]
    chained, boundaries = chain_stages([first, second])
    assert [m["step"] for m in chained] == [10, 20, 30] and boundaries == [20]
    assert chained[2]["aux_loss"] == 1.5 and first[0]["step"] == 10  # inputs untouched


def test_the_cli_draws_two_stages_to_a_png(tmp_path):
    for name, extra in (("a", {}), ("b", {"aux_loss": 1.2})):
        (tmp_path / name).mkdir()
        lines = [{"step": s, "loss": 1.0 / s, "ce_loss": 0.5, "mask_loss": 0.4, **extra}
                 for s in range(1, 30)]
        lines.append({"step": 29, "val/ciou": 0.5, "val/ciou_round_0": 0.6})
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "curves.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _eval_output(folder, ciou, modes=("own",)):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(
        {"task": "mrseg", "modes": {m: {"overall": {"ciou": ciou}} for m in modes}}))


def test_generated_ciou_is_read_from_eval_folders_named_by_step(tmp_path):
    _eval_output(tmp_path / "gen" / "2000", 0.4)
    _eval_output(tmp_path / "gen" / "500", 0.1, modes=("own", "gt"))
    (tmp_path / "gen" / "notes").mkdir()  # not a step: passed over
    assert generated_ciou(tmp_path / "gen") == [(500, 0.1), (2000, 0.4)]
    _eval_output(tmp_path / "gen" / "3000", 0.5, modes=("gt",))
    with pytest.raises(ValueError, match="3000/metrics.json: no 'own' mode"):
        generated_ciou(tmp_path / "gen")
    with pytest.raises(ValueError, match="no STEP/metrics.json"):
        generated_ciou(tmp_path / "empty")


def test_the_cli_adds_the_generated_curve(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    lines = [{"step": s, "loss": 1.0, "ce_loss": 0.5, "mask_loss": 0.4} for s in range(1, 30)]
    lines.append({"step": 20, "val/ciou": 0.5})
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    _eval_output(tmp_path / "run" / "gen" / "20", 0.3)
    out = tmp_path / "curves.png"
    assert main([str(tmp_path / "run"), "--generated", str(tmp_path / "run" / "gen"),
                 "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--generated", str(tmp_path / "nothing"), "--output", str(out)])
    assert "no STEP/metrics.json" in capsys.readouterr().err
