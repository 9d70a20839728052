"""``segllm train`` on unified records (``kind: decoder``): the synthetic multi-task scenes,
records to decoder examples, the step-decay schedule, a few training steps through the CLI,
and bad input as one line with exit code 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from segllm.data_builders.base import BuildError
from segllm.data_builders.synthetic_multitask import (
    generate_multitask,
    task_annotations,
    write_synthetic_multitask,
)
from segllm.masks import decode
from segllm.modeling.decoders.querymeld import QueryMeldConfig, QueryMeldDecoder
from segllm.records import read_jsonl
from segllm.train.args import OptimArgs, SourceArgs
from segllm.train.cli import main as train_main
from segllm.train.decoder_training import load_decoder_config
from segllm.train.optim import lr_multiplier
from segllm.train.tracking import read_metrics
from segllm.train.unified_data import UnifiedSource, make_example

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "train" / "querymeld-synthetic.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def multitask_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multitask")
    write_synthetic_multitask(folder / "train", num=6, seed=0,
                              tasks=("panoptic", "instance", "semantic", "referring"))
    write_synthetic_multitask(folder / "val", num=3, seed=1, tasks=("panoptic",))
    return folder


def test_synthetic_scenes_are_exact_things_and_stuff_with_referring_texts(multitask_dir):
    records = list(read_jsonl(multitask_dir / "train" / "synthetic_multitask.jsonl",
                              kind="unified"))
    by_task = {r["task"] for r in records}
    assert by_task == {"panoptic", "instance", "semantic", "referring"}
    for record in records:
        if record["task"] != "panoptic":
            continue
        masks = np.stack([decode(a["rle"]) for a in record["annotations"]])
        assert masks.sum(0).max() == 1  # a panoptic segmentation: no pixel twice
        assert {a["isthing"] for a in record["annotations"]} == {True, False}
    referring = [a["text"] for r in records if r["task"] == "referring"
                 for a in r["annotations"]]
    assert any(t.startswith("the ") and len(t.split()) == 3 for t in referring)  # the red circle
    # scene i depends only on (seed, i)
    (first, _), = generate_multitask(1, seed=0, start=2)
    assert first == [r for r in records if r["id"].startswith("synthetic-multitask-0-000002")
                     and r["task"] in ("panoptic", "referring")]


def test_semantic_merges_a_class_and_unknown_tasks_are_refused(tmp_path):
    (records, _), = generate_multitask(1, seed=3, tasks=("panoptic", "semantic"))
    panoptic, semantic = records
    assert len({a["text"] for a in panoptic["annotations"]}) == len(semantic["annotations"])
    with pytest.raises(BuildError, match="--tasks"):
        write_synthetic_multitask(tmp_path / "x", num=1, seed=0, tasks=("caption",))
    with pytest.raises(BuildError):
        task_annotations(None, "caption")


def test_records_become_decoder_examples_with_texts_as_classes(multitask_dir):
    source = UnifiedSource.from_args(
        SourceArgs(path=str(multitask_dir / "train" / "synthetic_multitask.jsonl")))
    assert source.vocabulary == sorted(source.vocabulary) and "sky" in source.vocabulary or \
        len(source.vocabulary) >= 4
    config = QueryMeldConfig(image_size=128)
    for index, record in enumerate(source.records):
        example = make_example(source, index, QueryMeldDecoder, config)
        assert example.pixels.shape == (3, 128, 128) and example.input_size == (128, 128)
        target = example.target
        assert target.masks.shape == (len(record["annotations"]), 128, 128)
        texts = [example.texts[k] for k in target.labels.tolist()]
        assert texts == [a["text"] for a in record["annotations"]]
        if record["task"] == "referring":
            assert example.texts == list(dict.fromkeys(texts))
        else:
            assert example.texts == source.vocabulary
        assert ((target.boxes >= 0) & (target.boxes <= 1)).all() and example.has_masks


def test_box_only_annotations_are_trained_on_class_and_box(tmp_path, multitask_dir):
    records = list(read_jsonl(multitask_dir / "train" / "synthetic_multitask.jsonl"))
    detection = dict(records[0], task="detection", id="det-0",
                     annotations=[{"text": "circle", "bbox": [8, 16, 32, 16], "rle": None},
                                  {"text": "sky", "bbox": [0, 0, 64, 64], "rle": None,
                                   "iscrowd": True}])
    path = tmp_path / "det.jsonl"
    path.write_text(json.dumps(detection) + "\n")
    source = UnifiedSource.from_args(SourceArgs(path=str(path),
                                                image_root=str(multitask_dir / "train")))
    example = make_example(source, 0, QueryMeldDecoder, QueryMeldConfig(image_size=128))
    assert not example.has_masks and example.target.labels.tolist() == [0]  # crowd left out
    assert torch.allclose(example.target.boxes, torch.tensor([[0.375, 0.375, 0.5, 0.25]]))


def test_step_decay_at_nine_tenths_and_nineteen_twentieths():
    args = OptimArgs(schedule="step", warmup_steps=10)
    factors = [lr_multiplier(s, args, 1000) for s in (0, 9, 10, 899, 900, 949, 950, 999)]
    assert factors[:2] == [0.1, 1.0]
    assert factors[2:] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_the_recipe_loads_and_names_the_querymeld_decoder():
    config = load_decoder_config(RECIPE)
    assert config.kind == "decoder" and config.optim.schedule == "step"
    assert config.decoder.preset == "querymeld-tiny"


def test_the_recipe_data_files_are_what_its_header_commands_write(tmp_path, monkeypatch):
    from segllm.data_builders.synthetic_multitask import main as build_main

    monkeypatch.chdir(tmp_path)
    commands = [line.split("synthetic_multitask", 1)[1].split() for line in
                RECIPE.read_text().splitlines() if "-m segllm.data_builders.synthetic_multitask" in line]
    assert len(commands) == 2
    for argv in commands:
        argv[argv.index("--num") + 1] = "2"  # the recipe's sizes, made small
        assert build_main(argv) == 0
    config = load_decoder_config(RECIPE)
    for path in [s.path for s in config.data.sources] + [config.evaluation.path]:
        assert not Path(path).is_absolute() and Path(path).is_file(), path
        assert UnifiedSource.from_args(SourceArgs(path=path)).records


def recipe_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), f"output_dir={out}", "max_steps=3", "logging.every=1",
            "logging.progress=false",
            f"data.sources.0.path={folder / 'train' / 'synthetic_multitask.jsonl'}",
            f"evaluation.path={folder / 'val' / 'synthetic_multitask.jsonl'}", *extra]


def test_segllm_train_runs_a_decoder_recipe_and_writes_its_outputs(multitask_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main(recipe_args(multitask_dir, out)) == 0
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
    assert {"mask_ap", "query_type/things_by_conditional"} <= set(metrics[-1])
    summary = json.loads((out / "querymeld.json").read_text())
    assert summary["decoder_config"]["query_strategy"] == "meld"
    assert "circle" in next(iter(summary["vocabularies"].values()))
    state = QueryMeldDecoder.read_checkpoint(out / "decoder.safetensors")
    assert "predictor.layers.0.dual_attn.norm_learnable.weight" in state
    assert (out / "text_encoder.safetensors").is_file()
    # a used folder is refused without --overwrite, replaced with it
    assert train_main(recipe_args(multitask_dir, out)) == 2
    assert train_main([*recipe_args(multitask_dir, out), "--overwrite"]) == 0


@pytest.mark.parametrize(("override", "message"), [
    ("decoder.overrides.query_strategy=both", "query_strategy"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("decoder.preset=tiny", "needs 'querymeld'"),
    ("decoder.overrides.prompt_dim=7", "differs from the text encoder's width"),
    ("optim.lr=-1", "optim.lr must be >= 0"),
])
def test_bad_decoder_recipes_fail_in_one_line(multitask_dir, tmp_path, capsys, override,
                                              message):
    assert train_main(recipe_args(multitask_dir, tmp_path / "r", override)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_missing_image_is_named_before_step_one(multitask_dir, tmp_path, capsys):
    records = (multitask_dir / "train" / "synthetic_multitask.jsonl").read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([records[0], records[1].replace("images/", "missing/")]) + "\n")
    args = recipe_args(multitask_dir, tmp_path / "r", f"data.sources.0.path={broken}",
                       f"data.sources.0.image_root={multitask_dir / 'train'}")
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert f"{broken}:2" in err and "missing/" in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_a_run_stopped_mid_way_resumes_exactly(multitask_dir, tmp_path, monkeypatch):
    """Four steps straight, against two steps, a crash in step three and a resume: the same
    weights, the same metrics, and the crash loses nothing that was checkpointed."""
    from safetensors.torch import load_file

    import segllm.train.decoder_training as decoder_training

    every = ["max_steps=4", "checkpoint.every=2", "evaluation.every=2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train_main(recipe_args(multitask_dir, straight, *every)) == 0
    real_step, calls = decoder_training.train_step, []

    def crash_in_step_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(decoder_training, "train_step", crash_in_step_three)
    with pytest.raises(RuntimeError, match="killed"):
        train_main(recipe_args(multitask_dir, stopped, *every))
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-0000002"]
    monkeypatch.setattr(decoder_training, "train_step", real_step)
    assert train_main([*recipe_args(multitask_dir, stopped, *every), "--resume"]) == 0
    a = load_file(str(straight / "decoder.safetensors"))
    b = load_file(str(stopped / "decoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("images_per_s",)
    lines = [[{k: v for k, v in m.items() if k not in drop}
              for m in read_metrics(run / "metrics.jsonl")] for run in (straight, stopped)]
    assert lines[0] == lines[1] and [m["step"] for m in lines[1]] == [1, 2, 3, 4]
    # --overwrite removes the checkpoints with the rest of the run
    assert train_main([*recipe_args(multitask_dir, stopped, *every), "--overwrite"]) == 0
    assert sorted(p.name for p in stopped.glob("checkpoint-*")) == ["checkpoint-0000002",
                                                                    "checkpoint-0000004"]


def test_a_resume_of_another_run_or_of_nothing_fails_in_one_line(multitask_dir, tmp_path,
                                                                 capsys):
    out = tmp_path / "r"
    assert train_main(recipe_args(multitask_dir, out, "checkpoint.every=3")) == 0
    capsys.readouterr()
    cases = [
        (["optim.lr=0.5", "max_steps=5", "--resume"], "optim.lr (0.001 then, 0.5 now)"),
        (["--resume", "--overwrite"], "give one of them"),
        (["--resume"], "at step 3; raise max_steps"),
    ]
    for extra, message in cases:
        assert train_main([*recipe_args(multitask_dir, out, "checkpoint.every=3"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    plain = tmp_path / "plain"  # a finished run without checkpoints is not restarted silently
    assert train_main(recipe_args(multitask_dir, plain, "checkpoint.every=0")) == 0
    capsys.readouterr()
    assert train_main([*recipe_args(multitask_dir, plain, "checkpoint.every=0"), "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert (plain / "decoder.safetensors").is_file()
