"""Every training recipe's data list names files the builders write: the fixtures (each in its
source's real layout) are built with the commands the recipes' headers give, into the
recipes' own relative paths, and every source and validation file of every recipe loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segllm import cli
from segllm.train.args import SourceArgs, load_train_config
from segllm.train.data import ConversationSource
from segllm.train.decoder_training import is_decoder_recipe

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
# decoder recipes (kind: decoder) read unified records: tests/train/test_decoder_training.py
RECIPES = [r for r in sorted((ROOT / "configs" / "train").glob("*.yaml"))
           if not is_decoder_recipe(r)]
LEAKAGE = ["--exclude-refs", str(FIX / "refcoco" / "refs(unc).p"),
           "--coco-val2017", str(FIX / "coco" / "instances_val2017.json")]


def _sources(folder: str, refer: list[str]) -> list[list[str]]:
    """build-data argument lists that write the eight MRSeg sources (and ReasonSeg) to folder."""
    out = ["--output", folder, "--no-progress"]
    refs = [[name, "--input", str(FIX / "refcoco"), "--split-by", "unc", *LEAKAGE, *refer, *out]
            for name in ("refcoco", "refcoco+", "refcocog")]
    return refs + [
        ["coco", "--input", str(FIX / "coco" / "instances_train2017.json"), *LEAKAGE, *out],
        ["lvis", "--input", str(FIX / "lvis" / "lvis_v1_train.json"), *LEAKAGE, *out],
        ["paco-lvis", "--input", str(FIX / "paco" / "paco_lvis_v1_train.json"), *LEAKAGE, *out],
        ["coco-stuff", "--input", str(FIX / "coco_stuff" / "stuffthingmaps" / "train2017"),
         str(FIX / "coco_stuff" / "labels.txt"), *LEAKAGE, *out],
        ["visual-genome", "--input", str(FIX / "visual_genome" / "relationships.json"),
         str(FIX / "visual_genome" / "image_data.json"), *LEAKAGE, *out],
        ["pascal-panoptic-parts", "--input", str(FIX / "pascal_parts" / "labels"),
         str(FIX / "pascal_parts" / "ppp_datasetspec.yaml"), *out],
        ["ade20k", "--input", str(FIX / "ade20k" / "ADEChallengeData2016"), *out],
        ["reasonseg", "--input", str(FIX / "reasonseg" / "train"), *out],
    ]


BUILDS = (
    _sources("data/mrseg", [])
    + _sources("data/lisa", ["--protocol", "standard"])
    + [["refcocog", "--input", str(FIX / "refcoco"), "--split-by", "unc", "--split", "val",
        "--protocol", "standard", "--output", "data/eval", "--no-progress"]]
    + [["synthetic", "--output", folder, "--num", "3", "--image-size", "32", "--no-progress"]
       for folder in ("data/synthetic", "data/shapes/train", "data/shapes/val")]
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The fixtures built into a working directory laid out as the recipes expect."""
    work = tmp_path_factory.mktemp("recipes")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for argv in BUILDS:
            assert cli.main(["build-data", *argv]) == 0, argv
    finally:
        os.chdir(cwd)
    return work


def _data_files(recipe: Path) -> list[str]:
    config = load_train_config(recipe)
    files = [s.path for s in config.data.sources]
    files += [config.vision_aux.labels] if config.vision_aux.labels else []
    return files + ([config.validation.path] if config.validation.path else [])


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_data_file_is_a_builder_output_and_loads(built, recipe):
    for rel in _data_files(recipe):
        assert not Path(rel).is_absolute(), f"{recipe.name}: {rel}"
        path = built / rel
        assert path.is_file(), f"{recipe.name}: no builder writes {rel}"
        source = ConversationSource.from_args(SourceArgs(path=str(path)))
        assert len(source) >= 1


def test_the_paper_recipe_is_the_papers_and_the_lora_one_a_labelled_variant():
    paper = load_train_config(ROOT / "configs" / "train" / "segllm-7b.yaml")
    assert paper.optim.lr == 2e-5 and paper.model.overrides["trainable"]["llm"] == "full"
    assert paper.micro_batch_size * paper.gradient_accumulation_steps * 8 == 16  # 2 per device, 8 GPUs
    names = {Path(s.path).stem for s in paper.data.sources}
    assert names == {"refcoco", "refcoco+", "refcocog", "visual-genome", "paco-lvis", "lvis",
                     "pascal-panoptic-parts", "ade20k", "coco-stuff", "coco"}
    assert "bf16" in (ROOT / "configs" / "ds_zero2.json").read_text()
    lora = (ROOT / "configs" / "train" / "segllm-7b-lora.yaml").read_text()
    assert lora.startswith("# A VARIANT of SegLLM-7B, not the paper's recipe")
