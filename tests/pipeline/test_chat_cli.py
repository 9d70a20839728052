"""``segllm chat``: script and interactive modes, and what each round writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segllm import cli
from segllm.commands import chat
from segllm.masks import decode_rle
from tests.pipeline.helpers import forcing


@pytest.fixture()
def image_file(tmp_path, image):
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture()
def seg_answers(monkeypatch, pipeline):
    """Make the random model answer "Sure, [SEG] and [SEG]." to everything."""
    monkeypatch.setattr(chat, "generation_from_args",
                        lambda args: forcing(pipeline, "Sure, [SEG] and [SEG]."))


def test_script_mode_saves_masks_rle_and_overlay_per_round(model_dir, image_file, image,
                                                          tmp_path, seg_answers, capsys):
    script = tmp_path / "questions.txt"
    script.write_text("# a comment\nSegment the red square.\n\n"
                      "Segment <ref:4>.\nSegment the shape right of <ref:0>.\n")
    out = tmp_path / "out"
    code = cli.main(["chat", "--model", str(model_dir), "--image", str(image_file),
                     "--script", str(script), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1  # one question was refused, the others answered
    assert "refused: <ref:4> refers to round 4, which does not exist" in printed
    assert "[0] Sure, [SEG] and [SEG]." in printed and "[1] Sure, [SEG] and [SEG]." in printed
    assert sorted(p.name for p in out.iterdir()) == ["round_00", "round_01"]
    record = json.loads((out / "round_01" / "masks.json").read_text())
    assert record["question"] == "Segment the shape right of <ref:0>."
    assert record["answer"] == "Sure, [SEG] and [SEG]." and (record["height"], record["width"]) == (48, 64)
    assert len(record["masks"]) == 2
    for entry in record["masks"]:
        png = np.asarray(Image.open(out / "round_01" / entry["png"]))
        assert png.shape == (48, 64) and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(decode_rle(entry["rle"]), png // 255)
        assert isinstance(entry["score"], float) and len(entry["bbox"]) == 4
    overlay = np.asarray(Image.open(out / "round_01" / "overlay.png").convert("RGB"))
    scale = -(-chat.OVERLAY_MIN_SIDE // 48)  # small images are enlarged so labels stay small
    assert overlay.shape == (48 * scale, 64 * scale, 3)
    overlay = overlay[::scale, ::scale]  # back to the image grid (nearest-neighbour enlargement)
    covered = decode_rle(record["masks"][0]["rle"]).astype(bool)
    if covered.any():  # coloured where the mask is
        assert not np.array_equal(overlay[covered], image[covered])
    assert chat.overlay_labels(type("R", (), {"round": 1, "masks": [0, 0]})) == ["round 1.0",
                                                                             "round 1.1"]


def test_interactive_mode_undo_history_and_readline_file(pipeline, image_file, tmp_path,
                                                         capsys):
    session = pipeline.start(image_file, generation=forcing(pipeline, "[SEG]."))
    out, history = tmp_path / "out", tmp_path / "history"
    lines = iter(["Segment the red square.", "", "Now <ref:0>.", "/history", "/undo",
                  "/undo", "/undo", "Again.", "/quit", "never asked"])
    assert chat.run_interactive(session, out, lines=lines, history_file=history) == 0
    printed = capsys.readouterr().out
    assert "refused: the question is empty" in printed
    assert "[0] Segment the red square. -> [SEG]." in printed
    assert "[1] Now <ref:0>. -> [SEG]." in printed
    assert "undid round 1: Now <ref:0>." in printed and "undid round 0" in printed
    assert "refused: there is no round to undo" in printed
    assert [r.question for r in session.history] == ["Again."]
    assert sorted(p.name for p in out.iterdir()) == ["round_00"]  # undone rounds' files removed
    assert json.loads((out / "round_00" / "masks.json").read_text())["question"] == "Again."
    assert history.is_file()


def test_a_bad_image_exits_with_a_message(model_dir, tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = cli.main(["chat", "--model", str(model_dir), "--image", str(bad), "--script",
                     str(bad)])
    assert code == 2
    assert "notes.png is not an image PIL can read" in capsys.readouterr().err
