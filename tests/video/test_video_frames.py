"""Video expressions as one-round training conversations on sampled target frames."""

from __future__ import annotations

import json
from pathlib import Path

from segllm import masks as rle_ops
from segllm.data_builders.cli import main as build_data
from segllm.data_builders.video import load_video_set
from segllm.data_builders.video_frames import frame_conversations, question_for
from segllm.records import read_jsonl

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REVOS_META = FIXTURES / "revos" / "meta_expressions_valid_.json"


def test_questions_follow_visa_templates():
    assert question_for("The red square") == "Segment the red square."
    assert question_for("which one moves?") == "which one moves? Please output the segmentation mask."


def test_every_frame_of_every_expression_with_the_union_as_target():
    data = load_video_set("revos", REVOS_META)
    records, counts = frame_conversations(data, frames_per_expression=4, seed=0, split="train")
    assert len(records) == 5 * 4
    both = [r for r in records if r["id"].startswith("revos-MOSE/vid_a-2-")]
    union = rle_ops.decode(both[0]["rounds"][0]["targets"][0]["rle"])
    assert union.sum() == 36 + 48 and both[0]["image"] == "JPEGImages/MOSE/vid_a/00000.jpg"
    nothing = [r for r in records if r["id"].startswith("revos-MOSE/vid_a-3-")]
    assert all(r["rounds"][0]["targets"] == [] and "[SEG]" not in r["rounds"][0]["answer"]
               for r in nothing)
    assert counts["without_target"] == 4
    assert {r["rounds"][0]["type"] for r in records} == {"referring", "reasoning"}


def test_cli_writes_valid_records_that_open_their_frames(tmp_path, capsys):
    assert build_data(["revos-frames", "--input", str(REVOS_META), "--output", str(tmp_path),
                       "--frames", "2", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records_written"] == 10
    records = list(read_jsonl(tmp_path / "revos-frames.jsonl"))
    from PIL import Image

    for record in records:
        with Image.open(Path(summary["image_root"]) / record["image"]) as image:
            assert (image.height, image.width) == (record["height"], record["width"])
    assert build_data(["mevis-frames", "--input", str(tmp_path / "none.json"),
                       "--output", str(tmp_path)]) == 2
    assert "none.json: file not found" in capsys.readouterr().err


def test_same_seed_same_frames():
    data = load_video_set("revos", REVOS_META)
    a, _ = frame_conversations(data, frames_per_expression=2, seed=3, split="train")
    b, _ = frame_conversations(data, frames_per_expression=2, seed=3, split="train")
    assert [r["id"] for r in a] == [r["id"] for r in b]
