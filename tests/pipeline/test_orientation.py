"""Orientation through the real pipeline: a data-set JPEG with EXIF orientation 6 is evaluated
on its stored pixels (its annotations' orientation), while a user's photo in chat is answered
upright, as EXIF says."""

from __future__ import annotations

import json

import numpy as np

from segllm.eval.predictor import PipelinePredictor
from segllm.eval.runners import run_round_task
from tests.eval.helpers import mrseg_record, rect, write_jsonl
from tests.pipeline.helpers import forcing
from tests.test_images import H, W, exif6_jpeg


def test_chat_answers_upright_and_the_stored_rule_keeps_the_stored_size(pipeline):
    chat = pipeline.start(exif6_jpeg())  # a user's photo: EXIF applies
    reply = chat.ask("Segment the square.", generation=forcing(pipeline, "[SEG]."))
    assert chat.size == (W, H) and reply.masks[0].shape == (W, H)
    stored = pipeline.start(exif6_jpeg(), orientation="stored")
    reply = stored.ask("Segment the square.", generation=forcing(pipeline, "[SEG]."))
    assert stored.size == (H, W) and reply.masks[0].shape == (H, W)


def test_evaluation_of_an_exif_rotated_data_set_jpeg(model_dir, tmp_path):
    """Used to fail: "predicted mask 0 has shape (40, 20), the image is 20x40"."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(exif6_jpeg())
    record = mrseg_record("a", H, W, [{"q": "Segment the square.", "targets": [rect(H, W, 0, 4, 0, 4)]}],
                          image="a.jpg")
    data = write_jsonl(tmp_path / "gt.jsonl", [record])
    predictor = PipelinePredictor(str(model_dir))
    predictor.pipeline.generation = forcing(predictor.pipeline, "[SEG].")
    out = tmp_path / "out"
    run_round_task("mrseg", data, out, predictor=predictor, images=images, modes=("own",),
                   progress=False)
    prediction = json.loads((out / "predictions-own.jsonl").read_text().splitlines()[0])
    masks = prediction["rounds"][0]["masks"]
    assert len(masks) == 1 and masks[0]["size"] == [H, W]
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["modes"]["own"]["overall"]["ciou"])
