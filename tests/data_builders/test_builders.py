"""Each source builder on its fixture (tests/fixtures/<source>/, the source's own layout),
the bad inputs each must report, leakage exclusion, determinism and the CLI."""

import json
import os
import shutil

import numpy as np
import pytest

from segllm import cli
from segllm.data_builders.ade20k import Ade20kBuilder
from segllm.data_builders.coco_format import SourceError
from segllm.data_builders.coco_instances import CocoInstancesBuilder, LvisBuilder
from segllm.data_builders.coco_stuff import CocoStuffBuilder
from segllm.data_builders.geometry import Obj, satisfies
from segllm.data_builders.grandf import GrandfBuilder
from segllm.data_builders.leakage import coco_id_from_file_name, load_heldout_image_ids
from segllm.data_builders.paco import PacoBuilder
from segllm.data_builders.pascal_parts import PascalPartsBuilder, decode_uids
from segllm.data_builders.reasonseg import ReasonSegBuilder
from segllm.data_builders.refcoco import RefCocoBuilder
from segllm.data_builders.visual_genome import VisualGenomeBuilder
from segllm.masks import decode_rle, mask_to_bbox
from segllm.records import read_jsonl

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
REFS = os.path.join(FIX, "refcoco", "refs(unc).p")
VAL2017 = os.path.join(FIX, "coco", "instances_val2017.json")


def fx(*parts):
    return os.path.join(FIX, *parts)


def build(builder, tmp_path, name="out.jsonl", allow_empty=False):
    stats = builder.build(tmp_path / name, allow_empty=allow_empty)
    return list(read_jsonl(tmp_path / name, kind=builder.kind)), stats


def _excluded():
    return load_heldout_image_ids([REFS])


def test_leakage_helpers():
    assert _excluded() == {200}
    assert coco_id_from_file_name("COCO_train2014_000000581857.jpg") == 581857
    assert coco_id_from_file_name("train2017/000000000200.png") == 200
    assert coco_id_from_file_name("1000092795.jpg") is None


def test_refcoco_rounds_skips_and_positional_geometry(tmp_path):
    builder = RefCocoBuilder(fx("refcoco"), dataset="refcoco", image_root=fx("coco_images"),
                             image_prefix="train2014", rounds=4, seed=1)
    records, stats = build(builder, tmp_path)
    assert {r["image"] for r in records} == {"train2014/COCO_train2014_000000000100.jpg",
                                              "train2014/COCO_train2014_000000000300.jpg"}
    assert not any("000000000200" in r["image"] for r in records)  # val image never in train
    assert stats.skipped["missing_image"] == 1 and stats.skipped["polygon_too_few_points"] == 1
    assert any("refcoco-train-400" in m and "missing_image" in m for m in stats.skip_examples)
    questions = [rnd["question"] for r in records for rnd in r["rounds"] if rnd["type"] == "referring"]
    # every expression of every usable train ref is asked once: 2 + 1 + 1 on image 100, 1 on 300
    assert len(questions) == 5 and any("left guy" in q for q in questions)
    for r in records:
        for rnd in r["rounds"]:
            if rnd["type"] == "positional":
                relation = next(w for w in ("left", "right", "above", "below", "nearest", "largest")
                                if w in rnd["question"])
                anchor = r["rounds"][rnd["refs"][0]]["targets"][0]
                found = rnd["targets"][0]
                a = Obj("a", "", mask_to_bbox(decode_rle(anchor["rle"])), 1)
                b = Obj("b", "", mask_to_bbox(decode_rle(found["rle"])), 1)
                assert satisfies(b, a, relation)
    assert stats.rounds_per_type["referring"] == 5


def test_refcoco_same_seed_same_bytes(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        RefCocoBuilder(fx("refcoco"), dataset="refcoco", seed=3).build(tmp_path / name)
    RefCocoBuilder(fx("refcoco"), dataset="refcoco", seed=4).build(tmp_path / "c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()


def test_refcoco_val_split_builds_the_held_out_image(tmp_path):
    records, _ = build(RefCocoBuilder(fx("refcoco"), dataset="refcoco", split="val"), tmp_path)
    assert [r["id"] for r in records] == ["refcoco-val-200-0"] and records[0]["split"] == "val"


def test_coco_excludes_refcoco_val_images_and_counts_crowd_and_out_of_bounds(tmp_path):
    builder = CocoInstancesBuilder(fx("coco", "instances_train2017.json"), excluded_image_ids=_excluded(),
                                   image_prefix="coco/train2017", rounds=6, seed=0)
    records, stats = build(builder, tmp_path)
    assert [r["id"] for r in records] == ["coco-train-500"]
    assert stats.leakage_excluded_images == 1
    assert stats.skipped["crowd_annotation"] == 1 and stats.skipped["out_of_bounds_box"] == 1
    rounds = records[0]["rounds"]
    people = [rnd for rnd in rounds if len(rnd["targets"]) == 2]
    assert people and all(t["label"] == "person" for t in people[0]["targets"])
    assert records[0]["image"] == "coco/train2017/000000000500.jpg"


def test_lvis_uses_coco_url_and_negative_categories(tmp_path):
    builder = LvisBuilder(fx("lvis", "lvis_v1_train.json"), excluded_image_ids=_excluded(), rounds=8)
    found_negative = False
    for seed in range(12):  # the absent-class round is a random choice; some seed makes one
        records, stats = build(LvisBuilder(fx("lvis", "lvis_v1_train.json"), excluded_image_ids=_excluded(),
                                           rounds=8, seed=seed), tmp_path)
        assert stats.leakage_excluded_images == 1 and len(records) == 1
        assert records[0]["image"] == "train2017/000000000600.jpg"
        empty = [rnd for rnd in records[0]["rounds"] if not rnd["targets"]]
        assert all("traffic light" in rnd["question"] for rnd in empty)  # only verified negatives
        found_negative |= bool(empty)
    assert found_negative and builder.absent_categories({"neg_category_ids": [3]}, set()) == [3]


def test_paco_parts_belong_to_their_object(tmp_path):
    records, stats = build(PacoBuilder(fx("paco", "paco_lvis_v1_train.json"), rounds=4, seed=2), tmp_path)
    assert stats.skipped["part_without_object"] == 1
    rounds = records[0]["rounds"]
    hierarchical = [rnd for rnd in rounds if rnd["type"] == "hierarchical"]
    assert hierarchical
    mug = decode_rle(next(t for rnd in rounds for t in rnd["targets"] if t["label"] == "mug")["rle"])
    for rnd in hierarchical:
        for t in rnd["targets"]:
            assert t["label"] in ("mug", "handle", "body")
            if t["label"] != "mug":
                assert not (decode_rle(t["rle"]) & ~mug).any()


PPP = fx("pascal_parts")
PPP_AREAS = {"head": {60}, "left eye": {20}, "neck": {20}, "torso": {200}, "body": {140}, "engine": {48},
             "person": {340, 336}, "aeroplane": {188}}


def _ppp_targets(records):
    return [t for r in records for rnd in r["rounds"] for t in rnd["targets"]]


def test_pascal_parts_decoding_and_rounds(tmp_path):
    sid, iid, pid = decode_uids(np.array([84, 15002, 1500101, 1500100]))
    assert sid.tolist() == [84, 15, 15, 15] and iid.tolist() == [-1, 2, 1, 1] and pid.tolist() == [-1, -1, 1, 0]
    builder = PascalPartsBuilder(fx("pascal_parts", "labels"), fx("pascal_parts", "ppp_datasetspec.yaml"),
                                 image_prefix="VOC2010/JPEGImages", rounds=4, seed=0)
    records, _ = build(builder, tmp_path)
    record = records[0]
    assert record["image"] == "VOC2010/JPEGImages/2008_000001.jpg" and (record["height"], record["width"]) == (48, 64)
    person = next(t for t in _ppp_targets(records) if t["bbox"][0] == 5.0 and t["label"] == "person")
    assert person["bbox"] == [5.0, 10.0, 10.0, 34.0]  # the whole includes its unlabelled-part pixels


def test_pascal_parts_dataset_spec_ids_by_order_and_countable_pids_folded(tmp_path):
    """ppp_datasetspec.yaml: sid 1 is aeroplane, 15 person (order of scene_class2part_classes);
    aeroplane file pids 7 and 8 are both its 6th part, the engine (countable_pids_groupings)."""
    builder = PascalPartsBuilder(fx("pascal_parts", "labels"), fx("pascal_parts", "ppp_datasetspec.yaml"))
    spec = builder.spec
    assert spec.sid2name[1] == "aeroplane" and spec.sid2name[15] == "person" and spec.sid2name[84] == "sky"
    assert [spec.part_name(1, p) for p in (1, 6, 7, 15, 16)] == ["body", "engine", "engine", "engine", "wheel"]
    assert [spec.part_name(15, p) for p in (1, 2, 11, 12, 20)] == ["head", "left eye", "torso", "neck",
                                                                   "left upper leg"]
    labels = set()
    for seed in range(6):
        records, stats = build(PascalPartsBuilder(fx("pascal_parts", "labels"), fx("pascal_parts", "ppp_datasetspec.yaml"),
                                                  rounds=8, seed=seed), tmp_path)
        assert len(records) == 1 and not stats.skipped
        for t in _ppp_targets(records):
            assert decode_rle(t["rle"]).sum() in PPP_AREAS[t["label"]]  # both engines in one mask
            labels.add(t["label"])
    assert labels >= {"person", "aeroplane"} and labels & {"head", "left eye", "neck", "torso", "body", "engine"}


@pytest.mark.parametrize("grouping", ["ppp_100_72.yaml", "part_groupings.yaml"])
def test_pascal_parts_groupings_merge_pascal_part_ids(tmp_path, grouping):
    """ppp_100_72.yaml's sid2pids_groups put person pids 1-10 and 12 into one part (the head);
    the named part_groupings put the neck with the torso instead."""
    builder = PascalPartsBuilder(fx("pascal_parts", "labels"), fx("pascal_parts", "ppp_datasetspec.yaml"),
                                 fx("pascal_parts", grouping), rounds=8, seed=0)
    head = 100 if grouping == "ppp_100_72.yaml" else 80
    areas = dict(PPP_AREAS, head={head}, torso={300 - head})
    assert builder.spec.part_name(15, 12) == ("head" if grouping == "ppp_100_72.yaml" else "torso")
    assert builder.spec.part_name(15, 2) == "head" and builder.spec.part_name(1, 3) == "wing"
    seen = set()
    for seed in range(6):
        builder.seed = seed
        records, stats = build(builder, tmp_path)
        assert len(records) == 1 and not stats.skipped
        for t in _ppp_targets(records):
            assert t["label"] in areas and decode_rle(t["rle"]).sum() in areas[t["label"]]
            seen.add(t["label"])
    assert seen & {"head", "torso"}


def test_pascal_parts_unnamed_groups_get_the_name_their_parts_share():
    from segllm.data_builders.pascal_parts import group_name, part_words

    def name(*abbreviations):
        return group_name([part_words(a) for a in abbreviations])

    # groups of ppp_100_72.yaml's sid2pids_groups, by their PASCAL-Part names
    assert name("head", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth", "hair", "neck") == "head"
    assert name("llarm", "lhand", "rlarm", "rhand") == "lower arm and hand"
    assert name("luarm", "ruarm") == "upper arm" and name("lwing", "rwing") == "wing"
    assert name("lfuleg", "lflleg", "rfuleg", "rflleg", "lbuleg", "lblleg", "rbuleg", "rblleg") == "leg"
    assert name("frontside", "leftside", "rightside", "backside", "roofside", "leftmirror", "rightmirror",
                "door") == "body"
    assert name("fliplate", "bliplate") == "license plate" and name("coach", "cfrontside", "croofside") == "coach"


def test_pascal_parts_v1_spec_alone_is_a_clear_error():
    with pytest.raises(SourceError, match="no part names"):
        PascalPartsBuilder(fx("pascal_parts", "labels"), fx("pascal_parts", "ppp_100_72.yaml"))


def test_visual_genome_box_masks_flagged_and_grouped_subjects(tmp_path):
    builder = VisualGenomeBuilder(fx("visual_genome", "relationships.json"), fx("visual_genome", "image_data.json"),
                                  excluded_image_ids=_excluded(), rounds=4)
    records, stats = build(builder, tmp_path)
    assert stats.leakage_excluded_images == 1 and stats.skipped["zero_area_mask"] == 1
    record = records[0]
    assert record["image"] == "VG_100K/1.jpg"
    interaction = next(rnd for rnd in record["rounds"] if rnd["type"] == "interactional")
    assert "holding <ref:" in interaction["question"] and len(interaction["targets"]) == 2  # HOLDING == holding
    assert all(t["box_derived"] is True for rnd in record["rounds"] for t in rnd["targets"])
    assert interaction["targets"][0]["bbox"] == [2.0, 5.0, 14.0, 40.0]
    assert interaction["targets"][0]["ann_bbox"] == [2.0, 5.0, 14.0, 40.0]  # the box REC Acc@0.5 scores


def test_ade20k_semantic_rounds(tmp_path):
    records, stats = build(Ade20kBuilder(fx("ade20k", "ADEChallengeData2016"), rounds=6, seed=0), tmp_path)
    assert stats.skipped["region_too_small"] == 1  # the 9-pixel person
    rounds = records[0]["rounds"]
    by_label = {t["label"]: t for rnd in rounds for t in rnd["targets"]}
    assert set(by_label) == {"wall", "floor"}  # "floor;flooring" -> first name
    assert by_label["wall"]["bbox"] == [0.0, 0.0, 64.0, 20.0]
    assert records[0]["image"] == "training/ADE_train_00000001.jpg"


def test_coco_stuff_offsets_ids_and_excludes_leaked_images(tmp_path):
    builder = CocoStuffBuilder(fx("coco_stuff", "stuffthingmaps", "train2017"), fx("coco_stuff", "labels.txt"),
                               excluded_image_ids=_excluded(), rounds=4)
    records, stats = build(builder, tmp_path)
    assert stats.leakage_excluded_images == 1 and len(records) == 1
    labels = {t["label"]: t["bbox"] for rnd in records[0]["rounds"] for t in rnd["targets"]}
    assert labels == {"sky-other": [0.0, 0.0, 64.0, 16.0], "person": [10.0, 20.0, 20.0, 24.0]}


def test_reasonseg_ignore_polygon_and_bad_files(tmp_path):
    records, stats = build(ReasonSegBuilder(fx("reasonseg", "train"), image_prefix="reason_seg/train"), tmp_path)
    assert dict(stats.skipped) == {"malformed_json": 1, "missing_image": 1, "polygon_too_few_points": 1}
    assert any("reasonseg-train-malformed" in m for m in stats.skip_examples)
    (record,) = records
    target = record["rounds"][0]["targets"][0]
    mask, ignore = decode_rle(target["rle"]), decode_rle(target["ignore_rle"])
    assert mask[15, 15] == 1 and mask[25, 25] == 0 and ignore[25, 25] == 1 and not (mask & ignore).any()
    assert record["rounds"][0]["type"] == "reasoning" and record["image"] == "reason_seg/train/good.jpg"


def test_grandf_three_layouts(tmp_path):
    ha, stats = build(GrandfBuilder(fx("grandf", "GranDf_HA_GCG_train.json")), tmp_path, "ha.jsonl")
    assert stats.skipped["overlapping_phrase"] == 1
    assert [p["text"] for p in ha[0]["phrases"]] == ["A man in a red shirt", "a bag"]
    assert ha[0]["phrases"][0]["bbox"] == [2.0, 2.0, 24.0, 40.0]  # two rle_masks merged
    ref, stats = build(GrandfBuilder(fx("grandf", "RefCOCOg_GCG_train.json"), image_root=fx("coco_images"),
                                     image_prefix="train2014"), tmp_path, "ref.jsonl")
    assert stats.skipped["phrase_not_in_caption"] == 1
    assert [p["text"] for p in ref[0]["phrases"]] == ["a man on the left", "an empty chair"]
    flickr, _ = build(GrandfBuilder(fx("grandf", "flickr_mergedGT_GCG_train.json")), tmp_path, "fl.jsonl")
    assert [p["text"] for p in flickr[0]["phrases"]] == ["Two dogs", "grass"]
    assert decode_rle(flickr[0]["phrases"][0]["rle"]).sum() == 200  # both dogs in one mask


def test_grandf_refcocog_without_images_reports_missing_image(tmp_path):
    # no usable record: an error by default (test_reliability_builders), an empty file if asked
    _, stats = build(GrandfBuilder(fx("grandf", "RefCOCOg_GCG_train.json")), tmp_path, allow_empty=True)
    assert stats.skipped["missing_image"] == 1 and stats.written == 0


def test_malformed_source_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    with pytest.raises(SourceError, match="instances.json: malformed JSON"):
        CocoInstancesBuilder(str(bad))


def test_invalid_record_is_counted_not_written(tmp_path, monkeypatch):
    builder = CocoInstancesBuilder(fx("coco", "instances_train2017.json"))
    original = builder.iter_records

    def with_a_bad_one(stats):
        for record in original(stats):
            yield record
            broken = json.loads(json.dumps(record))
            broken["id"] = "broken"
            broken["rounds"][0]["answer"] = "nothing"
            yield broken

    monkeypatch.setattr(builder, "iter_records", with_a_bad_one)
    records, stats = build(builder, tmp_path)
    assert "broken" not in [r["id"] for r in records] and stats.skipped["invalid_record"] == len(records) == 2
    assert any(m.startswith("broken: invalid_record") for m in stats.skip_examples)


def test_cli_builds_and_writes_a_summary(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["build-data", "refcocog", "--input", fx("refcoco"), "--output", str(out), "--split-by", "unc",
                     "--seed", "2", "--rounds", "3", "--no-progress", "--exclude-refs", REFS,
                     "--coco-val2017", VAL2017])
    assert code == 0
    summary = json.loads((out / "refcocog.summary.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    # image 300: a RefCOCO training image that is a COCO-2017 val image (the reverse rule)
    assert summary["leakage_excluded_by_rule"] == {"coco_val2017_images": 1}
    assert summary["images_excluded_for_leakage"] == 1
    assert {r["image"] for r in read_jsonl(out / "refcocog.jsonl")} == {"COCO_train2014_000000000100.jpg",
                                                                         "COCO_train2014_000000000400.jpg"}
    assert summary["records_written"] == len(list(read_jsonl(out / "refcocog.jsonl")))
    assert "polygon_too_few_points" not in summary["skipped_by_reason"]  # on image 300, left out first
    assert all(len(r["rounds"]) <= 3 for r in read_jsonl(out / "refcocog.jsonl"))


def test_cli_synthetic_and_bad_input_exit_code(tmp_path, capsys):
    assert cli.main(["build-data", "synthetic", "--output", str(tmp_path / "s"), "--num", "5", "--seed", "1",
                     "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["records_written"] == 5
    assert (tmp_path / "s" / "images" / "000004.png").exists()
    code = cli.main(["build-data", "visual-genome", "--input", fx("visual_genome", "relationships.json"),
                     "--output", str(tmp_path / "v"), "--no-progress", "--no-leakage-filter"])
    assert code == 2 and "needs --input" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(fx("refcoco"), broken / "refcoco")
    (broken / "refcoco" / "instances.json").write_text("{")
    code = cli.main(["build-data", "refcoco", "--input", str(broken / "refcoco"), "--output", str(tmp_path / "r"),
                     "--no-progress", "--no-leakage-filter"])
    assert code == 2 and "malformed JSON" in capsys.readouterr().err
    assert not (tmp_path / "r" / "refcoco.jsonl").exists()


@pytest.mark.parametrize("source,inputs", [
    ("coco", [fx("coco", "instances_train2017.json")]),
    ("grandf", [fx("grandf", "RefCOCOg_GCG_train.json"), "--image-root", fx("coco_images"),
                "--image-prefix", "train2014"]),  # COCO pictures, told by GLaMM's file name
    ("visual-genome", [fx("visual_genome", "relationships.json"), fx("visual_genome", "image_data.json")]),
    ("refcoco", [fx("refcoco")]),
])
def test_cli_leakage_filter_is_the_default(tmp_path, capsys, source, inputs):
    """A training build of COCO pictures without the leakage files is an error that names
    them; --no-leakage-filter is the named opt-out (and then image 200, RefCOCO val, stays)."""
    out = tmp_path / "out"
    assert cli.main(["build-data", source, "--input", *inputs, "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--exclude-refs" in err and "--no-leakage-filter" in err
    assert ("--coco-val2017" in err) == (source == "refcoco")
    assert not out.exists() or not any(out.iterdir())
    assert cli.main(["build-data", source, "--input", *inputs, "--output", str(out), "--no-progress",
                     "--no-leakage-filter"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["leakage_excluded_by_rule"] == {} and summary["records_written"] >= 1
    # evaluation splits are not filtered, so they need no files
    if source == "refcoco":
        assert cli.main(["build-data", source, "--input", *inputs, "--output", str(tmp_path / "v"),
                         "--split", "val", "--no-progress"]) == 0


def test_refcoco_reverse_rule_drops_coco_val2017_training_images(tmp_path):
    from segllm.data_builders.leakage import load_coco_image_ids

    builder = RefCocoBuilder(fx("refcoco"), dataset="refcoco", coco_val2017_ids=load_coco_image_ids(VAL2017))
    records, stats = build(builder, tmp_path)
    assert not any("000000000300" in r["image"] for r in records)
    assert stats.leakage_by_rule == {"coco_val2017_images": 1} and stats.leakage_excluded_images == 1
    assert stats.to_dict()["leakage_excluded_by_rule"] == {"coco_val2017_images": 1}
    coco, coco_stats = build(CocoInstancesBuilder(fx("coco", "instances_train2017.json"),
                                                  excluded_image_ids=_excluded()), tmp_path, "coco.jsonl")
    assert coco_stats.to_dict()["leakage_excluded_by_rule"] == {"refcoco_eval_images": 1}


def test_refcoco_standard_protocol_one_expression_per_record(tmp_path):
    """--protocol standard: every expression of the split, one round each, no synthetic rounds,
    and the annotation's own box for REC Acc@0.5."""
    default, _ = build(RefCocoBuilder(fx("refcoco"), dataset="refcoco", rounds=4, seed=0), tmp_path, "d.jsonl")
    assert any(len(r["rounds"]) > 1 for r in default)  # the MRSeg default: multi-round
    records, _ = build(RefCocoBuilder(fx("refcoco"), dataset="refcoco", protocol="standard"), tmp_path)
    assert [r["id"] for r in records] == ["refcoco-train-1-10", "refcoco-train-1-11", "refcoco-train-2-20",
                                          "refcoco-train-3-30", "refcoco-train-6-60", "refcoco-train-7-70"]
    assert all(len(r["rounds"]) == 1 and r["rounds"][0]["type"] == "referring" for r in records)
    assert "left guy" in records[1]["rounds"][0]["question"]
    assert records[0]["rounds"][0]["targets"][0]["ann_bbox"] == [2.0, 10.0, 12.0, 30.0]
    val, _ = build(RefCocoBuilder(fx("refcoco"), dataset="refcoco", split="val", protocol="standard"), tmp_path)
    assert [r["id"] for r in val] == ["refcoco-val-4-40"]
    with pytest.raises(SourceError, match="unknown protocol"):
        RefCocoBuilder(fx("refcoco"), dataset="refcoco", protocol="lisa")


def test_build_data_writes_mrseg_statistics_table_and_plot(tmp_path, capsys):
    """SegLLM's Table A1 / Fig. A1: per source, images, conversations, max rounds and the
    histogram of rounds, for every MRSeg file in the output folder."""
    out = tmp_path / "mrseg"
    base = ["--output", str(out), "--no-progress", "--no-leakage-filter", "--rounds", "3"]
    assert cli.main(["build-data", "refcoco", "--input", fx("refcoco"), *base]) == 0
    assert cli.main(["build-data", "ade20k", "--input", fx("ade20k", "ADEChallengeData2016"), *base]) == 0
    stats = json.loads((out / "mrseg_statistics.json").read_text())
    assert set(stats["sources"]) == {"refcoco", "ade20k"}
    for name in ("refcoco", "ade20k"):
        records = list(read_jsonl(out / f"{name}.jsonl"))
        s = stats["sources"][name]
        rounds = [len(r["rounds"]) for r in records]
        assert s["conversations"] == len(records) and s["images"] == len({r["image"] for r in records})
        assert s["max_rounds"] == max(rounds) <= 3
        assert s["rounds_histogram"] == {str(k): rounds.count(k) for k in sorted(set(rounds))}
    assert stats["total"]["conversations"] == sum(s["conversations"] for s in stats["sources"].values())
    assert (out / "mrseg_statistics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
