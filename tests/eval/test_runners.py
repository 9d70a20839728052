"""Runners and ``segllm eval`` end to end with a deterministic fake predictor on tiny images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from segllm.eval import cli as eval_cli
from segllm.eval.errors import EvalInputError
from segllm.eval.runners import run_gcg, run_round_task
from segllm.eval.text_similarity import MINILM_NAME, FunctionSimilarity

from .helpers import (
    MRSEG_SCRIPT,
    T0,
    FakePredictor,
    H,
    W,
    eval_args,
    rect,
    rle,
    write_image,
    write_jsonl,
)


def test_mrseg_runner_both_modes(mrseg_set, tmp_path):
    data, images = mrseg_set
    predictor = FakePredictor(MRSEG_SCRIPT)
    out = tmp_path / "out"
    metrics = run_round_task("mrseg", data, out, predictor=predictor, images=images, progress=False)

    own, gt = metrics["modes"]["own"]["overall"], metrics["modes"]["gt"]["overall"]
    # own: 0.6 (round 0), 0.6 (round 1 inherits round 0's error), 1, 1 (conv-b), 1 (no target, nothing predicted)
    assert own["ciou"] == pytest.approx(548 / 804)
    assert own["giou"] == pytest.approx(0.84)
    assert own["miou"] == pytest.approx(0.8)
    # gt: round 1 is fed the true round-0 mask and is exact
    assert gt["ciou"] == pytest.approx(612 / 740)
    assert gt["giou"] == pytest.approx(0.92)
    assert own["rec_acc50"] == gt["rec_acc50"] == 1.0
    per_round = metrics["modes"]["own"]["per_round"]
    assert per_round["0"]["ciou"] == pytest.approx(356 / 484)
    assert per_round["1"]["ciou"] == pytest.approx(0.6)
    assert metrics["modes"]["gt"]["per_round"]["1"]["ciou"] == 1.0
    assert per_round["2"]["giou"] == 1.0 and per_round["2"]["n_targets"] == 0
    assert metrics["modes"]["own"]["per_type"]["semantic"]["ciou"] == 1.0

    # what the fake session saw: ground-truth masks of round 0 only in gt mode, only where referred to
    own_a, _, gt_a, _ = predictor.sessions
    assert own_a.ref_masks_seen == [None, None, None]
    assert gt_a.ref_masks_seen[0] is None and gt_a.ref_masks_seen[2] is None
    assert list(gt_a.ref_masks_seen[1]) == [0] and np.array_equal(gt_a.ref_masks_seen[1][0][0], T0)

    # the files
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "per_round.png",
                                                      "predictions-gt.jsonl", "predictions-own.jsonl"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["modes"]["own"]["overall"]["ciou"] == pytest.approx(548 / 804)
    assert saved["modes"]["own"]["per_round"]["2"]["miou"] is None  # NaN is written as null
    md = (out / "metrics.md").read_text()
    assert "| own masks fed back | 68.2 | 84.0 | 80.0 | 100.0 | 4 |" in md
    assert "| ground-truth references | 82.7 | 92.0 | 90.0 | 100.0 | 4 |" in md
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it
    with Image.open(out / "per_round.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    first = json.loads((out / "predictions-own.jsonl").read_text().splitlines()[0])
    assert first["id"] == "conv-a" and first["mode"] == "own" and first["task"] == "mrseg"
    assert first["rounds"][1]["scores"] == [0.9] and first["rounds"][2]["masks"] == []

    # every metric comes back from the prediction files alone, through the CLI
    rescored = tmp_path / "rescored"
    rc = eval_cli.run(eval_args(["mrseg", "--data", str(data), "--output", str(rescored), "--no-progress",
                                 "--predictions", str(out / "predictions-own.jsonl"), str(out / "predictions-gt.jsonl")]))
    assert rc == 0
    assert json.loads((rescored / "metrics.json").read_text())["modes"] == saved["modes"]
    assert not (rescored / "predictions-own.jsonl").exists()


def assert_nothing_written(folder):
    assert not folder.exists() or list(folder.iterdir()) == []


def test_missing_image_names_the_record(mrseg_set, tmp_path):
    data, images = mrseg_set
    (images / "conv-b.png").unlink()
    with pytest.raises(EvalInputError, match="image not found") as info:
        run_round_task("mrseg", data, tmp_path / "out", predictor=FakePredictor(MRSEG_SCRIPT), images=images, progress=False)
    assert info.value.record_id == "conv-b"
    assert_nothing_written(tmp_path / "out")


def test_wrong_mask_size_from_model(mrseg_set, tmp_path):
    data, images = mrseg_set
    script = dict(MRSEG_SCRIPT, **{"Is there a giraffe?": ("masks", [np.zeros((H, W + 1), bool)])})
    with pytest.raises(EvalInputError, match=r"record 'conv-a', round 2: predicted mask 0 has shape \(48, 65\)"):
        run_round_task("mrseg", data, tmp_path / "out", predictor=FakePredictor(script), images=images, progress=False)
    assert_nothing_written(tmp_path / "out")


def test_bad_prediction_files_through_cli(mrseg_set, tmp_path, capsys):
    data, images = mrseg_set
    out = tmp_path / "out"
    run_round_task("mrseg", data, out, predictor=FakePredictor(MRSEG_SCRIPT), images=images, modes=("own",), progress=False)
    lines = (out / "predictions-own.jsonl").read_text().splitlines()

    bad_ids = write_jsonl(tmp_path / "ids.jsonl", [json.loads(lines[0])])
    nan_record = json.loads(lines[1])
    nan_record["rounds"][0]["scores"] = [float("nan"), 0.5]
    nan_scores = tmp_path / "nan.jsonl"
    nan_scores.write_text(lines[0] + "\n" + json.dumps(nan_record) + "\n")  # json writes the NaN literal
    for path, message in ((bad_ids, "ids do not match"), (nan_scores, "record 'conv-b', round 0: score 0")):
        target = tmp_path / f"out-{path.stem}"
        rc = eval_cli.run(eval_args(["mrseg", "--data", str(data), "--output", str(target), "--predictions", str(path)]))
        assert rc == 2
        assert message in capsys.readouterr().err
        assert_nothing_written(target)
    # a run that fails leaves an older metrics.json as it was, and no temporary files
    before = (out / "metrics.json").read_bytes()
    assert eval_cli.run(eval_args(["mrseg", "--data", str(data), "--output", str(out), "--predictions", str(bad_ids)])) == 2
    assert (out / "metrics.json").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- GCG

R1, R2 = rect(H, W, 5, 15, 5, 25), rect(H, W, 30, 40, 30, 50)
R2_MOVED = np.roll(R2, 9, axis=1)  # IoU with R2: 11/29
G1, EXTRA = rect(H, W, 10, 30, 10, 30), rect(H, W, 40, 48, 0, 8)


@pytest.fixture()
def gcg_set(tmp_path):
    records = [
        {"id": "g1", "image": "g1.png", "height": H, "width": W, "question": "Describe image one.",
         "caption": "A red box next to a blue box.",
         "phrases": [{"text": "A red box", "span": [0, 9], "rle": rle(R1)},
                     {"text": "a blue box", "span": [18, 28], "rle": rle(R2)}]},
        {"id": "g2", "image": "g2.png", "height": H, "width": W, "question": "Describe image two.",
         "caption": "A green ball on the floor.",
         "phrases": [{"text": "A green ball", "span": [0, 12], "rle": rle(G1)}]},
    ]
    for i, r in enumerate(records):
        write_image(tmp_path / "images" / r["image"], H, W, seed=10 + i)
    script = {
        "Describe image one.": ("masks", [R1, R2_MOVED], "<p>A red box</p> [SEG] next to <p>a blue box</p> [SEG]."),
        # two masks, one phrase: the second mask has no phrase
        "Describe image two.": ("masks", [G1, EXTRA], "<p>A green ball</p> [SEG] [SEG] on the floor."),
    }
    return write_jsonl(tmp_path / "gcg.jsonl", records), tmp_path / "images", FakePredictor(script)


@pytest.mark.slow  # two JVM starts (PTB tokenizer, METEOR) and the MiniLM
def test_gcg_runner_end_to_end(gcg_set, tmp_path):
    data, images, predictor = gcg_set
    out = tmp_path / "gcg-out"
    lowercase_equal = FunctionSimilarity(lambda a, b: float(a.lower() == b.lower()), "lower-case equality")
    metrics = run_gcg(data, out, predictor=predictor, images=images, similarity=lowercase_equal, progress=False)

    assert metrics["text_similarity_model"] == "lower-case equality"
    greedy = metrics["matching"]["greedy"]
    assert greedy["true_positives"] == 2 and greedy["mask_recall"] == pytest.approx(2 / 3)
    assert greedy["miou"] == pytest.approx(((1 + 11 / 29) / 2 + 1) / 2)
    assert metrics["matching"]["hungarian"]["mask_recall"] == pytest.approx(2 / 3)
    # detections in file order, all score 1.0: TP, FP, TP, FP over 3 ground-truth masks
    assert metrics["ap50"] == pytest.approx(56 / 101)
    assert metrics["n_images_phrase_mask_mismatch"] == 1
    # the cleaned captions equal the references after PTB tokenisation
    assert metrics["meteor"] == pytest.approx(1.0)
    assert metrics["cider"] == pytest.approx(10.0)

    assert sorted(p.name for p in out.iterdir()) == ["gcg.png", "metrics.json", "metrics.md", "predictions.jsonl"]
    pred = json.loads((out / "predictions.jsonl").read_text().splitlines()[1])
    assert pred["phrases"] == ["A green ball"] and pred["caption"] == "A green ball on the floor."
    assert len(pred["masks"]) == 2 and pred["scores"] == [0.9, 0.9]
    md = (out / "metrics.md").read_text()
    assert "| greedy (GLaMM) | 66.7 | 84.5 | 55.4 | 100.0 | 10.000 |" in md
    assert "Text similarity: lower-case equality" in md

    # rescoring the file through the CLI with the default, packaged MiniLM similarity
    rescored = tmp_path / "gcg-rescored"
    rc = eval_cli.run(eval_args(["gcg", "--data", str(data), "--output", str(rescored), "--no-captions",
                                 "--no-progress", "--predictions", str(out / "predictions.jsonl")]))
    assert rc == 0
    again = json.loads((rescored / "metrics.json").read_text())
    assert again["text_similarity_model"] == MINILM_NAME
    assert again["matching"]["greedy"]["mask_recall"] == pytest.approx(2 / 3)
    assert again["ap50"] == pytest.approx(56 / 101)
    assert again["meteor"] is None


def test_gcg_prediction_ids_must_match(gcg_set, tmp_path):
    data, _, _ = gcg_set
    preds = write_jsonl(tmp_path / "p.jsonl", [{"id": "g1", "task": "gcg", "caption": "", "phrases": [], "masks": []}])
    with pytest.raises(EvalInputError, match="ids do not match") as info:
        run_gcg(data, tmp_path / "out", prediction_file=preds, similarity=FunctionSimilarity(lambda a, b: 1.0, "one"),
                captions=False, progress=False)
    assert info.value.record_id == "g2"
    assert_nothing_written(tmp_path / "out")
