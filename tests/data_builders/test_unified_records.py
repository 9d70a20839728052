"""Unified (c, b, m) records from each builder that has them, on its fixture (tests/fixtures/),
through `segllm build-data --records unified`, and Table 11's mixture over them."""

import json
import os

import numpy as np
import pytest
import yaml

from segllm import cli
from segllm.data_builders.ade20k import Ade20kBuilder
from segllm.data_builders.base import BuildError
from segllm.data_builders.coco_instances import CocoInstancesBuilder, LvisBuilder
from segllm.data_builders.coco_panoptic import CocoPanopticBuilder, segment_ids
from segllm.data_builders.coco_stuff import CocoStuffBuilder
from segllm.data_builders.foreground import ForegroundBuilder
from segllm.data_builders.mixing import TABLE_11_RATIOS, table11_data_section
from segllm.data_builders.mixing import main as mixing_main
from segllm.data_builders.refcoco import RefCocoBuilder
from segllm.data_builders.visual_genome import VisualGenomeBuilder
from segllm.masks import decode_rle
from segllm.records import RecordError, read_jsonl, validate_unified
from segllm.train.args import SourceArgs
from segllm.train.data import mixture_probabilities

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REFS = os.path.join(FIX, "refcoco", "refs(unc).p")


def fx(*parts):
    return os.path.join(FIX, *parts)


def unified(builder, tmp_path):
    stats = builder.build(tmp_path / "out.jsonl", unified=True)
    return list(read_jsonl(tmp_path / "out.jsonl", kind="unified")), stats


def texts(record):
    return [a["text"] for a in record["annotations"]]


def test_coco_instances_train_leaves_out_crowds_and_refcoco_val_images(tmp_path):
    builder = CocoInstancesBuilder(fx("coco", "instances_train2017.json"), excluded_image_ids=[200])
    records, stats = unified(builder, tmp_path)
    assert [r["id"] for r in records] == ["coco-train-500"]
    (record,) = records
    assert record["task"] == "instance" and texts(record) == ["person", "person", "dog"]
    assert record["annotations"][2]["bbox"] == [24.0, 28.0, 14.0, 14.0]
    assert decode_rle(record["annotations"][2]["rle"]).sum() == 14 * 14
    assert stats.skipped["crowd_annotation"] == 1 and stats.skipped["out_of_bounds_box"] == 1
    assert stats.leakage_by_rule["refcoco_eval_images"] == 1
    assert stats.to_dict()["annotations_per_task"] == {"instance": 3}


def test_coco_instances_eval_split_keeps_crowds_flagged(tmp_path):
    records, _ = unified(CocoInstancesBuilder(fx("coco", "instances_train2017.json"), split="val"), tmp_path)
    crowd = [a for r in records for a in r["annotations"] if a.get("iscrowd")]
    assert len(crowd) == 1 and crowd[0]["text"] == "person"
    assert decode_rle(crowd[0]["rle"]).sum() == 16  # the uncompressed crowd RLE, two 8-pixel runs


def test_lvis_instances(tmp_path):
    records, _ = unified(LvisBuilder(fx("lvis", "lvis_v1_train.json")), tmp_path)
    assert {r["id"]: texts(r) for r in records} == {"lvis-train-200": ["banana"],
                                                    "lvis-train-600": ["apple", "apple", "banana"]}
    assert records[1]["image"] == "train2017/000000000600.jpg"


def test_coco_panoptic_things_stuff_and_skips(tmp_path):
    builder = CocoPanopticBuilder(fx("coco_panoptic", "panoptic_train2017.json"),
                                  fx("coco_panoptic", "panoptic_train2017"), excluded_image_ids=[200])
    records, stats = unified(builder, tmp_path)
    (record,) = records
    assert record["task"] == "panoptic" and record["id"] == "coco-panoptic-train-500"
    assert [(a["text"], a["isthing"]) for a in record["annotations"]] == [
        ("person", True), ("dog", True), ("sky-other-merged", False)]
    assert record["annotations"][1]["bbox"] == [24.0, 28.0, 14.0, 14.0]
    assert stats.skipped == {"crowd_annotation": 1, "unknown_category": 1}
    with pytest.raises(BuildError, match="unified records only"):
        builder.build(tmp_path / "mrseg.jsonl")


def test_panoptic_png_ids_decode_as_panopticapi():
    rgb = np.array([[[5, 0, 2], [0, 1, 0]]], dtype=np.uint8)
    assert segment_ids(rgb).tolist() == [[5 + 2 * 65536, 256]]


def test_ade20k_semantic_keeps_every_pixel_of_every_class(tmp_path):
    records, stats = unified(Ade20kBuilder(fx("ade20k", "ADEChallengeData2016")), tmp_path)
    (record,) = records
    assert record["task"] == "semantic" and texts(record) == ["wall", "floor", "person"]
    assert decode_rle(record["annotations"][2]["rle"]).sum() == 9  # under min_area, kept here
    assert not stats.skipped


def test_coco_stuff_semantic(tmp_path):
    builder = CocoStuffBuilder(fx("coco_stuff", "stuffthingmaps", "train2017"), fx("coco_stuff", "labels.txt"),
                               excluded_image_ids=[200])
    records, stats = unified(builder, tmp_path)
    assert [r["id"] for r in records] == ["coco-stuff-train-train2017_000000000800"]
    assert texts(records[0]) == ["person", "sky-other"]
    assert stats.leakage_by_rule["refcoco_eval_images"] == 1


def test_refcoco_one_annotation_per_expression(tmp_path):
    builder = RefCocoBuilder(fx("refcoco"), coco_val2017_ids=[300])
    records, stats = unified(builder, tmp_path)
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"refcoco-train-100", "refcoco-train-400"}  # 200 val, 300 COCO-2017 val
    first = by_id["refcoco-train-100"]
    assert first["task"] == "referring"
    assert texts(first) == ["man on the left", "left guy", "man on right", "empty chair in the middle"]
    assert first["annotations"][0]["rle"] == first["annotations"][1]["rle"]  # one object, two expressions
    assert stats.leakage_by_rule["coco_val2017_images"] == 1


def test_refcoco_val_split(tmp_path):
    records, _ = unified(RefCocoBuilder(fx("refcoco"), split="val"), tmp_path)
    assert [(r["id"], texts(r)) for r in records] == [("refcoco-val-200", ["brown dog"])]


def test_visual_genome_detection_is_box_only(tmp_path):
    records, stats = unified(VisualGenomeBuilder(fx("visual_genome", "relationships.json"),
                                                 fx("visual_genome", "image_data.json"), excluded_image_ids=[200]),
                             tmp_path)
    (record,) = records
    assert record["task"] == "detection" and texts(record) == ["man", "cup", "man"]
    assert all(a["rle"] is None for a in record["annotations"])
    assert record["annotations"][1]["bbox"] == [20.0, 20.0, 8.0, 8.0]
    assert stats.skipped["zero_area_mask"] == 1 and stats.leakage_by_rule["refcoco_eval_images"] == 1


def test_visual_genome_detection_from_objects_json_takes_every_object(tmp_path):
    records, stats = unified(VisualGenomeBuilder(fx("visual_genome", "objects.json"),
                                                 fx("visual_genome", "image_data.json")), tmp_path)
    (record,) = records
    assert texts(record) == ["man", "cup", "table"]  # the table is in no relationship
    assert stats.skipped["out_of_bounds_box"] == 1


def test_foreground_pairs_threshold_and_skips(tmp_path):
    folder = fx("foreground", "DUTS-TR")
    builder = ForegroundBuilder(os.path.join(folder, "DUTS-TR-Image"), os.path.join(folder, "DUTS-TR-Mask"),
                                image_prefix="duts/DUTS-TR-Image")
    records, stats = unified(builder, tmp_path)
    (record,) = records
    assert record["image"] == "duts/DUTS-TR-Image/a.jpg" and texts(record) == ["foreground"]
    mask = decode_rle(record["annotations"][0]["rle"])
    assert mask.sum() == 20 * 20  # the grey edge row (100) is below the threshold
    assert stats.skipped == {"empty_mask": 1, "missing_image": 1}


def test_cli_writes_unified_files_and_refuses_sources_without_them(tmp_path, capsys):
    out = tmp_path / "unified"
    assert cli.main(["build-data", "coco-panoptic", "--records", "unified", "--no-progress", "--input",
                     fx("coco_panoptic", "panoptic_train2017.json"), fx("coco_panoptic", "panoptic_train2017"),
                     "--exclude-refs", REFS, "--output", str(out)]) == 0
    summary = json.loads((out / "coco-panoptic.unified.summary.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    assert summary["records_written"] == 1 and summary["annotations_per_task"] == {"panoptic": 3}
    assert len(list(read_jsonl(out / "coco-panoptic.unified.jsonl", kind="unified"))) == 1
    # a training build of COCO pictures still needs the leakage files
    assert cli.main(["build-data", "coco-panoptic", "--records", "unified", "--input", "a.json", "b",
                     "--output", str(out)]) == 2
    assert "leak" in capsys.readouterr().err
    assert cli.main(["build-data", "reasonseg", "--records", "unified", "--input", fx("reasonseg", "train"),
                     "--output", str(out)]) == 2
    assert "has no unified records" in capsys.readouterr().err
    assert cli.main(["build-data", "foreground", "--input", fx("foreground", "DUTS-TR", "DUTS-TR-Image"),
                     fx("foreground", "DUTS-TR", "DUTS-TR-Mask"), "--output", str(out)]) == 2
    assert "--records unified" in capsys.readouterr().err


def test_table11_mixture_draws_sources_by_ratio_times_size(tmp_path):
    for name, n in (("ade20k", 2), ("coco", 5), ("refcocog", 3)):
        (tmp_path / f"{name}.unified.jsonl").write_text("{}\n" * n)
    section = table11_data_section(tmp_path, image_root="data/images")
    assert section["mixing"] == "size"
    sources = [SourceArgs(**s) for s in section["sources"]]
    assert [(s.name, s.weight, s.image_root) for s in sources] == [
        ("ade20k", 30.0, "data/images"), ("coco", 3.0, "data/images"), ("refcocog", 6.0, "data/images")]
    probs = mixture_probabilities([2, 5, 3], [s.weight for s in sources], section["mixing"])
    # upsampling: ADE20K repeated 30 times, COCO 3, RefCOCOg 6, then concatenated
    assert probs.tolist() == pytest.approx([60 / 93, 15 / 93, 18 / 93])
    assert TABLE_11_RATIOS["visual-genome"] == 9 and TABLE_11_RATIOS["foreground"] == 9
    (tmp_path / "coco-stuff.unified.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="coco-stuff.*no Table 11 ratio"):
        table11_data_section(tmp_path)
    assert table11_data_section(tmp_path, extra_ratios={"coco-stuff": 3})["sources"][1]["weight"] == 3.0


def test_mixing_command_prints_the_data_section(tmp_path, capsys):
    (tmp_path / "visual-genome-syn-m.unified.jsonl").write_text("{}\n")
    assert mixing_main([str(tmp_path), "--image-root", "data/images"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    assert data["mixing"] == "size" and data["sources"][0]["weight"] == 9.0
    (tmp_path / "coco-stuff.unified.jsonl").write_text("{}\n")
    assert mixing_main([str(tmp_path)]) == 2 and "coco-stuff" in capsys.readouterr().err
    assert mixing_main([str(tmp_path), "--ratio", "coco-stuff=3"]) == 0


@pytest.mark.parametrize("field, value, words", [
    ("iscrowd", 1, "expected a bool"), ("isthing", "yes", "expected a bool"),
    ("texts", [], "non-empty list"), ("synthetic", ["mask", "mask"], "distinct names"),
    ("synthetic", ["caption"], "distinct names"),
])
def test_unified_optional_fields_are_checked(field, value, words):
    record = {"id": "r", "image": "a.jpg", "height": 4, "width": 4, "task": "detection",
              "annotations": [{"text": "cup", "bbox": [0, 0, 2, 2], "rle": None, field: value}]}
    with pytest.raises(RecordError, match=words) as info:
        validate_unified(record)
    assert info.value.field == f"annotations[0].{field}"
