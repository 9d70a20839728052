"""Video conversations (a target frame plus VISA's reference frames) through ``segllm train``:
a synthetic moving-shapes set, its frame records, a few steps of the tiny recipe, and the
trained model answering through the video path with its reference frames."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from segllm.data_builders.cli import main as build_data
from segllm.train.args import load_train_config
from segllm.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "configs" / "train" / "tiny-synthetic.yaml"
STEPS = 3


@pytest.fixture(scope="module")
def video_frames_jsonl(tmp_path_factory) -> Path:
    """Two 6-frame clips of 32 px and their frame records with 2-3 reference frames each."""
    out = tmp_path_factory.mktemp("synthetic-video")
    assert build_data(["synthetic-video", "--output", str(out), "--num", "2", "--frames", "6",
                       "--image-size", "32", "--seed", "0", "--split", "train"]) == 0
    assert build_data(["revos-frames", "--input", str(out / "meta_expressions_train_.json"),
                       "--output", str(out), "--frames", "1", "--reference-frames", "2", "3",
                       "--seed", "0", "--split", "train"]) == 0
    return out / "revos-frames.jsonl"


def test_train_takes_video_records_with_reference_frames(video_frames_jsonl, tmp_path, capsys):
    records = [json.loads(line) for line in video_frames_jsonl.read_text().splitlines()]
    assert records and all(2 <= len(r["reference_frames"]) <= 3 for r in records)
    overrides = {
        "output_dir": tmp_path / "run", "max_steps": STEPS, "micro_batch_size": 2, "threads": 1,
        "deepspeed_config": ROOT / "configs" / "ds_zero2.json",
        "data.sources.0.path": video_frames_jsonl, "validation.path": video_frames_jsonl,
        "validation.every": 0, "validation.max_samples": 2, "checkpoint.every": 0,
        "checkpoint.keep": 0, "logging.progress": "false", "optim.warmup_steps": 1,
    }
    config = load_train_config(TINY_RECIPE, [f"{k}={v}" for k, v in overrides.items()])
    result = train(config)
    assert result.steps_done == STEPS and all(math.isfinite(x) for x in result.losses)
    capsys.readouterr()

    from segllm.pipeline import GenerationConfig, SegLLMPipeline
    from segllm.video.frames import open_video
    from segllm.video.pipeline import VideoSegmenter

    pipe = SegLLMPipeline.from_pretrained(result.export_dir,
                                          generation=GenerationConfig(max_new_tokens=8))
    assert pipe.takes_reference_frames
    clip = video_frames_jsonl.parent / "JPEGImages" / Path(records[0]["image"]).parent.name
    video = VideoSegmenter(pipe, num_candidates=2, num_global=2, num_local=1)
    answer = video.segment(open_video(clip), records[0]["rounds"][0]["question"])
    assert answer.reference_frames_in_llm and len(answer.masks) == 6
