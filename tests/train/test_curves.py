"""Training curves (train/curves.py): stages drawn in sequence, the word loss when present."""

from __future__ import annotations

import json

from segllm.train.curves import chain_stages, main


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
