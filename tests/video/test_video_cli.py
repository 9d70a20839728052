"""``segllm eval revos|mevis`` and ``segllm video`` on the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segllm.cli import main
from segllm.data_builders.video import load_video_set

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REVOS_META = FIXTURES / "revos" / "meta_expressions_valid_.json"
MEVIS_META = FIXTURES / "mevis" / "valid_u" / "meta_expressions.json"


def test_eval_revos_scores_a_predictions_file(tmp_path, capsys):
    data = load_video_set("revos", REVOS_META)
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"video": e.video, "expression": e.expression_id,
                                        "frames": list(e.frames), "masks": data.target_masks(e)})
                            + "\n" for e in data.expressions))
    code = main(["eval", "revos", "--data", str(REVOS_META), "--predictions", str(pred),
                 "--output", str(tmp_path / "out")])
    assert code == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["summary"]["overall"]["J&F"] == 100.0
    assert len(metrics["expressions"]) == 5
    assert "| overall | 100.00 | 100.00 | 100.00 | 100.00 | 4 |" in capsys.readouterr().out


def test_eval_video_bad_input_exits_2(tmp_path, capsys):
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"video": "vid_a", "expression": "0", "frames": [], "masks": []}\n')
    code = main(["eval", "mevis", "--data", str(MEVIS_META), "--predictions", str(pred),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert "error: video 'vid_a', expression '0'" in capsys.readouterr().err
    code = main(["eval", "mevis", "--data", str(tmp_path / "nothing.json"), "--predictions",
                 str(pred), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "nothing.json: file not found" in capsys.readouterr().err


def test_eval_mevis_with_a_model_writes_predictions_and_overlays(tmp_path, model_dir):
    out = tmp_path / "out"
    code = main(["eval", "mevis", "--data", str(MEVIS_META), "--model", str(model_dir),
                 "--output", str(out), "--candidates", "2", "--overlays", "1",
                 "--max-new-tokens", "4", "--no-progress"])
    assert code == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["expression"] for r in records] == ["0", "1"]
    assert all(len(r["masks"]) == 4 and r["target_frame"] in r["frames"] for r in records)
    assert (out / "overlays" / "vid_a_0.gif").is_file()
    assert not (out / "overlays" / "vid_a_1.gif").exists()
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["overall"]["expressions"] == 2


def test_video_command_writes_masks_gif_and_summary(tmp_path, model_dir, capsys):
    script = tmp_path / "queries.txt"
    script.write_text("# a comment\nthe square in the lower left\n")
    out = tmp_path / "video"
    code = main(["video", "--model", str(model_dir), "--video",
                 str(FIXTURES / "revos" / "JPEGImages" / "MOSE" / "vid_a"), "--script", str(script),
                 "--query", "the square", "--out", str(out), "--candidates", "2",
                 "--max-new-tokens", "4", "--stride", "2"])
    assert code == 0
    for n in ("00", "01"):
        record = json.loads((out / f"query_{n}" / "masks.jsonl").read_text())
        assert record["frames"] == ["00000", "00002"] and len(record["masks"]) == 2
        summary = json.loads((out / f"query_{n}" / "summary.json").read_text())
        assert summary["target_frame"] in record["frames"] and summary["seconds"]
        from PIL import Image

        with Image.open(out / f"query_{n}" / "overlay.gif") as gif:
            assert gif.n_frames == 2  # (the box moves: Pillow merges identical frames)
    assert "vid_a: 2 frames of 32x24" in capsys.readouterr().out


def test_chat_video_segments_each_scripted_question_through_the_video(tmp_path, model_dir,
                                                                      capsys):
    script = tmp_path / "questions.txt"
    script.write_text("the square\n")
    out = tmp_path / "chat"
    code = main(["chat", "--model", str(model_dir), "--video",
                 str(FIXTURES / "revos" / "JPEGImages" / "MOSE" / "vid_a"), "--script", str(script),
                 "--out", str(out), "--candidates", "2", "--max-new-tokens", "4"])
    assert code == 0
    record = json.loads((out / "query_00" / "masks.jsonl").read_text())
    assert len(record["frames"]) == len(record["masks"]) == 4
    assert "vid_a: 4 frames" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an image and a video at once is refused by the parser
        main(["chat", "--model", str(model_dir), "--video", "v", "--image", "i"])


def test_video_command_refuses_missing_input_and_sam2_without_weights(tmp_path, model_dir, capsys):
    assert main(["video", "--model", str(model_dir), "--video", str(tmp_path / "none"),
                 "--query", "x"]) == 2
    assert "no such folder of frames or video file" in capsys.readouterr().err
    assert main(["video", "--model", str(model_dir), "--video",
                 str(FIXTURES / "revos" / "JPEGImages" / "vid_b"), "--query", "x",
                 "--propagation", "sam2"]) == 2
    assert "--sam2-config and --sam2-checkpoint" in capsys.readouterr().err
