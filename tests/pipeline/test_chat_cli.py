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


def test_a_reused_out_folder_gets_a_numbered_sibling_and_rounds_never_mix(model_dir, image_file,
                                                                         tmp_path, seg_answers,
                                                                         capsys):
    out = tmp_path / "out"
    scripts = []
    for i, questions in enumerate((["First A.", "First B.", "First C."], ["Second A."])):
        scripts.append(tmp_path / f"script_{i}.txt")
        scripts[-1].write_text("\n".join(questions) + "\n")
    base = ["chat", "--model", str(model_dir), "--image", str(image_file), "--out", str(out)]
    assert cli.main([*base, "--script", str(scripts[0])]) == 0
    assert cli.main([*base, "--script", str(scripts[1])]) == 0
    assert f"note: {out} holds an earlier chat; this one is saved in {out}-2" in \
        capsys.readouterr().out
    # the first chat's three rounds are intact; the second chat's one round is on its own
    assert sorted(p.name for p in out.iterdir()) == ["round_00", "round_01", "round_02"]
    assert json.loads((out / "round_00" / "masks.json").read_text())["question"] == "First A."
    second = tmp_path / "out-2"
    assert sorted(p.name for p in second.iterdir()) == ["round_00"]
    assert json.loads((second / "round_00" / "masks.json").read_text())["question"] == "Second A."
    (tmp_path / "file").write_text("x")
    assert cli.main([*base[:-1], str(tmp_path / "file"), "--script", str(scripts[1])]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_script_lines_split_at_newlines_only(tmp_path):
    script = tmp_path / "questions.txt"
    script.write_text("Segment the red\x1csquare.\nSegment the left\u2028shape.\r\n# note\n\n"
                      "Segment it.", encoding="utf-8")
    assert chat.read_script(script) == ["Segment the red\x1csquare.",
                                        "Segment the left\u2028shape.", "Segment it."]


@pytest.mark.parametrize("content, message", [
    (None, "no such script file"),
    (b"Segment it.\n\xff\xfe broken\n", "line 2: not UTF-8 text"),
])
def test_a_bad_script_exits_with_one_line(model_dir, image_file, tmp_path, capsys, content,
                                          message):
    script = tmp_path / "questions.txt"
    if content is not None:
        script.write_bytes(content)
    code = cli.main(["chat", "--model", str(model_dir), "--image", str(image_file), "--script",
                     str(script), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_ctrl_c_cancels_the_round_and_ctrl_d_ends_the_chat(pipeline, image_file, tmp_path,
                                                           monkeypatch, capsys):
    """Ctrl-C while typing drops the line; Ctrl-C while the model answers (before or after the
    round is stored) cancels that round only; Ctrl-D ends the chat with exit code 0."""
    session = pipeline.start(image_file, generation=forcing(pipeline, "[SEG]."))
    typed = iter([KeyboardInterrupt, "Segment the red square.", "Interrupted in the model.",
                  "Interrupted while saving.", "Now <ref:0>.", EOFError])

    def fake_input(prompt):
        value = next(typed)
        if isinstance(value, type) and issubclass(value, BaseException):
            raise value
        return value

    real_run_jobs, real_save = pipeline.run_jobs, chat.save_round

    def run_jobs(jobs):
        if jobs[0].question == "Interrupted in the model.":
            raise KeyboardInterrupt
        return real_run_jobs(jobs)

    def save_round(out, image, reply):
        folder = real_save(out, image, reply)
        if reply.question == "Interrupted while saving.":
            raise KeyboardInterrupt
        return folder

    monkeypatch.setattr("builtins.input", fake_input)
    monkeypatch.setattr(pipeline, "run_jobs", run_jobs)
    monkeypatch.setattr(chat, "save_round", save_round)
    out = tmp_path / "out"
    out.mkdir()
    assert chat.run_interactive(session, out, history_file=tmp_path / "history") == 0
    printed = capsys.readouterr().out
    assert printed.count("cancelled: round 1 was not asked; the chat goes on") == 2
    assert "(cancelled; Ctrl-D or /quit ends the chat)" in printed
    assert [r.question for r in session.history] == ["Segment the red square.", "Now <ref:0>."]
    assert sorted(p.name for p in out.iterdir()) == ["round_00", "round_01"]
    assert json.loads((out / "round_01" / "masks.json").read_text())["question"] == "Now <ref:0>."
