"""``segllm eval TASK --model DIR``: a decoder-only QueryMeld model (what ``segllm train``
writes for a ``kind: decoder`` recipe) answers unified records per task, its predictions are
written and scored in one command; the per-task post-processing on hand-made query outputs;
a folder that is not such a model, or records without the task, exit 2 naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segllm import cli
from segllm.config import SegLLMConfig
from segllm.data_builders.synthetic_multitask import write_synthetic_multitask
from segllm.eval.unified_inference import (
    Decoded,
    InferenceSettings,
    box_pixels,
    instance_annotations,
    paired_annotations,
    panoptic_annotations,
    semantic_annotations,
)
from segllm.masks import decode
from segllm.modeling.decoders import build_decoder
from segllm.train.cli import main as train_main

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "train" / "querymeld-synthetic.yaml"
TASKS = ("panoptic", "instance", "semantic", "referring")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder of a 2-step decoder training, held-out records of every task)."""
    folder = tmp_path_factory.mktemp("querymeld-eval")
    write_synthetic_multitask(folder / "train", num=4, seed=0, tasks=TASKS)
    write_synthetic_multitask(folder / "val", num=3, seed=1, tasks=TASKS)
    data = folder / "val" / "synthetic_multitask.jsonl"
    assert train_main(["--config", str(RECIPE), f"output_dir={folder / 'run'}", "max_steps=2",
                       "logging.progress=false", f"evaluation.path={data}",
                       f"data.sources.0.path={folder / 'train' / 'synthetic_multitask.jsonl'}"]) == 0
    return folder / "run", data


def run_eval(task: str, data: Path, model: Path, out: Path) -> int:
    return cli.main(["eval", task, "--data", str(data), "--model", str(model),
                     "--output", str(out), "--no-progress"])


HEADLINE = {"instance": "ap", "detection": "ap", "panoptic": "pq", "semantic": "miou",
            "referring": "ciou"}


@pytest.mark.parametrize("task", list(HEADLINE))
def test_a_decoder_model_predicts_and_scores_a_task_in_one_command(trained, tmp_path, task):
    model, data = trained
    assert run_eval(task, data, model, tmp_path / "out") == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in data.read_text().splitlines()]
    scored = {"instance": {"instance", "panoptic"}, "detection": {"instance", "panoptic"},
              "panoptic": {"panoptic"}, "semantic": {"semantic", "panoptic"},
              "referring": {"referring"}}[task]
    assert [r["id"] for r in rows] == [r["id"] for r in records if r["task"] in scored]
    by_id = {r["id"]: r for r in records}
    for row in rows:
        assert row["task"] == task
        gt = by_id[row["id"]]
        if task == "referring":  # one answer per expression, in order
            assert [a["text"] for a in row["annotations"]] == [a["text"] for a in gt["annotations"]]
        for ann in row["annotations"]:
            assert 0.0 <= ann["score"] <= 1.0 and len(ann["bbox"]) == 4
            if task != "detection":
                assert ann["rle"]["size"] == [gt["height"], gt["width"]]
        if task in ("panoptic", "semantic"):  # segments never overlap
            masks = [decode(a["rle"]) for a in row["annotations"]]
            assert not masks or np.sum(masks, axis=0).max() <= 1
        if task == "semantic":  # the per-pixel argmax over the class texts covers every pixel
            assert np.sum(masks, axis=0).min() == 1
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"] == str(model) and metrics["n_images"] == len(rows)
    assert 0.0 <= metrics[HEADLINE[task]] <= 1.0


def test_a_folder_that_is_not_a_decoder_model_exits_2_naming_it(trained, tmp_path, capsys):
    model, data = trained
    not_decoder = tmp_path / "segllm-model"
    not_decoder.mkdir()
    (not_decoder / "config.json").write_text("{}")
    assert run_eval("instance", data, not_decoder, tmp_path / "a") == 2
    assert "no querymeld.json" in capsys.readouterr().err

    other = tmp_path / "other"
    shutil.copytree(model, other)
    summary = json.loads((other / "querymeld.json").read_text())
    (other / "querymeld.json").write_text(json.dumps(summary | {"decoder": "hipie"}))
    assert run_eval("instance", data, other, tmp_path / "b") == 2
    assert "querymeld.json: 'decoder' must be 'querymeld', got 'hipie'" in capsys.readouterr().err

    (other / "querymeld.json").write_text(json.dumps(
        summary | {"decoder_config": summary["decoder_config"] | {"hidden_dim": 48}}))
    assert run_eval("instance", data, other, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "decoder.safetensors does not fit QueryMeldDecoder" in err and "Traceback" not in err

    (other / "querymeld.json").write_text(json.dumps(summary))
    (other / "text_encoder.safetensors").unlink()
    assert run_eval("instance", data, other, tmp_path / "d") == 2
    assert "text_encoder.safetensors: missing" in capsys.readouterr().err


def test_records_without_the_task_exit_2_before_the_model_loads(trained, tmp_path, capsys):
    model, data = trained
    assert run_eval("foreground", data, model, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no foreground records to score for 'foreground'" in err
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


# ------------------------------------------------------------------ post-processing by hand


@pytest.fixture(scope="module")
def tiny_decoder():
    """The querymeld-tiny decoder (64 px input, 16 x 16 mask logits): its upsampling and
    mask threshold are what the post-processing uses."""
    return build_decoder(SegLLMConfig.from_name("querymeld-tiny", mask_aware_decoding=False))


def stripe(x0: int, x1: int) -> torch.Tensor:
    """Mask logits on the 16 x 16 grid: +10 on columns x0:x1, else -10. At 64 px the mask is
    columns 4 x0 : 4 x1 exactly (a vertical stripe has no inner corner for the bilinear
    upsampling to round off)."""
    logits = torch.full((16, 16), -10.0)
    logits[:, x0:x1] = 10.0
    return logits


def decoded(probs, masks, boxes=None) -> Decoded:
    probs = torch.tensor(probs)
    return Decoded(probs=probs, mask_logits=torch.stack(masks),
                   boxes=torch.tensor(boxes) if boxes is not None else torch.zeros(len(probs), 4),
                   input_size=(64, 64), original_size=(64, 64), side=64)


def columns(x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, x0:x1] = True
    return mask


def test_panoptic_segments_do_not_overlap_drop_duplicates_and_merge_stuff(tiny_decoder):
    texts = ["sky", "circle", "grass"]
    out = decoded(
        probs=[[0.9, 0.0, 0.0],   # q0: sky, the first quarter of the columns
               [0.8, 0.0, 0.0],   # q1: sky, the second (merged with q0: one stuff segment)
               [0.0, 0.7, 0.0],   # q2: circle, the third
               [0.0, 0.6, 0.0],   # q3: a weaker duplicate of q2: loses its pixels, dropped
               [0.0, 0.0, 0.2]],  # q4: grass below the object threshold: not a segment
        masks=[stripe(0, 4), stripe(4, 8), stripe(8, 12), stripe(8, 12), stripe(12, 16)])
    anns = panoptic_annotations(tiny_decoder, out, texts, frozenset({"sky", "grass"}),
                                InferenceSettings())
    assert [(a["text"], a["score"]) for a in anns] == [("sky", pytest.approx(0.9)),
                                                     ("circle", pytest.approx(0.7))]
    assert np.array_equal(decode(anns[0]["rle"]), columns(0, 32))
    assert np.array_equal(decode(anns[1]["rle"]), columns(32, 48))
    # a thing text is never merged: two circles stay two segments
    anns = panoptic_annotations(tiny_decoder, out, texts, frozenset(), InferenceSettings())
    assert [a["text"] for a in anns] == ["sky", "sky", "circle"]


def test_semantic_argmax_instance_pairs_paired_answers_and_boxes(tiny_decoder):
    texts = ["sky", "circle"]
    out = decoded(probs=[[0.9, 0.1], [0.2, 0.6]],
                  masks=[stripe(0, 16), stripe(8, 16)],
                  boxes=[[0.5, 0.5, 1.0, 1.0], [0.75, 0.75, 0.5, 0.5]])
    # semantic, per pixel and text: the sum over queries of class x mask probability; on the
    # right half sky has 0.9 + 0.2 and circle 0.1 + 0.6, so sky wins everywhere
    sem = semantic_annotations(tiny_decoder, out, texts, InferenceSettings())
    assert [a["text"] for a in sem] == ["sky"] and decode(sem[0]["rle"]).all()
    out.probs = torch.tensor([[0.9, 0.1], [0.0, 0.95]])  # now circle: 0.1 + 0.95 > sky 0.9
    sem = semantic_annotations(tiny_decoder, out, texts, InferenceSettings())
    assert [a["text"] for a in sem] == ["sky", "circle"]
    assert np.array_equal(decode(sem[0]["rle"]), columns(0, 32))
    assert np.array_equal(decode(sem[1]["rle"]), columns(32, 64))
    # instance: the best (query, text) pairs, scored by class probability x mask score
    inst = instance_annotations(tiny_decoder, out, texts, InferenceSettings(top_k=3))
    assert [(a["text"], round(a["score"], 2)) for a in inst] == [("circle", 0.95), ("sky", 0.9),
                                                                 ("circle", 0.1)]
    assert np.array_equal(decode(inst[0]["rle"]), columns(32, 64))
    assert inst[0]["bbox"] == [32.0, 0.0, 32.0, 64.0]
    # referring: each expression's best query, in the order asked (one asked twice)
    ref = paired_annotations(tiny_decoder, out, texts, [1, 0, 1], InferenceSettings())
    assert [a["text"] for a in ref] == ["circle", "sky", "circle"]
    assert decode(ref[1]["rle"]).all() and np.array_equal(decode(ref[0]["rle"]), columns(32, 64))
    # detection boxes: fractions of the padded square -> pixels of the original image
    # (a 100 x 200 image fills the top 32 x 64 of the 64 px square)
    wide = Decoded(probs=out.probs, mask_logits=out.mask_logits,
                   boxes=torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.125, 0.5, 0.25]]),
                   input_size=(32, 64), original_size=(100, 200), side=64)
    assert box_pixels(wide, 1) == pytest.approx([0.0, 0.0, 100.0, 50.0])
    assert box_pixels(wide, 0) == pytest.approx([0.0, 0.0, 200.0, 100.0])  # clipped to the image
