"""ReVOS and MeViS loaders on fixtures in their released layouts, and scoring a predictions file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segllm import masks as rle_ops
from segllm.data_builders.video import VideoDataError, load_video_set
from segllm.eval.errors import EvalInputError
from segllm.eval.video import read_predictions, score_video_set, summarize

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REVOS_META = FIXTURES / "revos" / "meta_expressions_valid_.json"
MEVIS_META = FIXTURES / "mevis" / "valid_u" / "meta_expressions.json"


def revos():
    return load_video_set("revos", REVOS_META)


def test_revos_expressions_types_and_frames():
    data = revos()
    assert len(data.expressions) == 5
    kinds = {(e.video, e.expression_id): e.type for e in data.expressions}
    assert kinds[("MOSE/vid_a", "0")] == "referring"
    assert kinds[("MOSE/vid_a", "1")] == "reasoning"
    assert kinds[("MOSE/vid_a", "3")] == "other"
    assert data.videos["vid_b"] == ("00000", "00001", "00002", "00003")
    assert all(p.is_file() for p in data.frame_paths("MOSE/vid_a"))
    assert data.frame_size("MOSE/vid_a") == (24, 32)
    assert data.foreground_source == "mask_dict_foreground.json"


def test_multi_object_expression_is_the_union_of_its_masks():
    data = revos()
    both = next(e for e in data.expressions if e.key == ("MOSE/vid_a", "2"))
    one = next(e for e in data.expressions if e.key == ("MOSE/vid_a", "0"))
    union = [rle_ops.decode(r) for r in data.target_masks(both)]
    single = [rle_ops.decode(r) for r in data.target_masks(one)]
    assert union[0].sum() == 36 + 48                  # 6x6 and 8x6 boxes, apart
    assert union[3].sum() == 36                       # the second object left in frame 3
    assert all((s <= u).all() for s, u in zip(single, union, strict=True))


def test_expression_without_objects_has_empty_masks():
    data = revos()
    none = next(e for e in data.expressions if e.key == ("MOSE/vid_a", "3"))
    assert all(not rle_ops.decode(r).any() for r in data.target_masks(none))


def test_mevis_layout_and_derived_foreground():
    data = load_video_set("mevis", MEVIS_META)
    assert [e.type for e in data.expressions] == ["referring", "referring"]
    assert data.foreground_dict is None
    fg = rle_ops.decode(data.foreground_masks("vid_a")[0])
    assert fg.sum() == 36 + 48                        # every annotated object of the video


def _perfect_predictions(data, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in data.expressions:
            f.write(json.dumps({"video": e.video, "expression": e.expression_id,
                                "frames": list(e.frames), "masks": data.target_masks(e)}) + "\n")


def test_perfect_predictions_score_100_everywhere(tmp_path):
    data = revos()
    _perfect_predictions(data, tmp_path / "pred.jsonl")
    summary = summarize(score_video_set(data, read_predictions(tmp_path / "pred.jsonl")))
    assert set(summary) == {"referring", "reasoning", "other", "overall"}
    for row in summary.values():
        assert (row["J"], row["F"], row["J&F"], row["R"]) == (100.0, 100.0, 100.0, pytest.approx(100.0))
    assert summary["overall"]["expressions"] == 4     # type 2 stays out, as in VISA


def test_empty_predictions_score_the_no_object_expression_only(tmp_path):
    data = load_video_set("mevis", MEVIS_META)
    with open(tmp_path / "pred.jsonl", "w", encoding="utf-8") as f:
        for e in data.expressions:
            empty = rle_ops.normalize_rle(rle_ops.empty_rle(24, 32))
            f.write(json.dumps({"video": e.video, "expression": e.expression_id,
                                "frames": list(e.frames), "masks": [empty] * 4}) + "\n")
    scores = score_video_set(data, read_predictions(tmp_path / "pred.jsonl"))
    assert [s.j for s in scores] == [0.0, 0.0]
    assert [s.r for s in scores] == [pytest.approx(1.0)] * 2  # no false positives


def test_missing_prediction_and_wrong_size_are_named(tmp_path):
    data = load_video_set("mevis", MEVIS_META)
    first = data.expressions[0]
    path = tmp_path / "pred.jsonl"
    path.write_text(json.dumps({"video": "vid_a", "expression": "0", "frames": list(first.frames),
                                "masks": data.target_masks(first)}) + "\n")
    with pytest.raises(EvalInputError, match="no prediction for video 'vid_a', expression '1'"):
        score_video_set(data, read_predictions(path))
    small = rle_ops.normalize_rle(rle_ops.empty_rle(5, 5))
    path.write_text("".join(json.dumps({"video": "vid_a", "expression": e.expression_id,
                                        "frames": list(e.frames), "masks": [small] * 4}) + "\n"
                            for e in data.expressions))
    with pytest.raises(EvalInputError, match="expression '0', frame 0"):
        score_video_set(data, read_predictions(path))


@pytest.mark.parametrize("edit, message", [
    (lambda meta, masks: meta["videos"]["vid_a"]["expressions"]["0"].update(anno_id=[9]),
     "anno_id '9'.*missing"),
    (lambda meta, masks: masks["1"].pop(), "anno_id '1'.*3 masks for 4 frames"),
    (lambda meta, masks: meta["videos"]["vid_a"].update(frames=[]), "'frames' must be"),
    (lambda meta, masks: masks["2"].__setitem__(0, {"size": [24], "counts": "x"}),
     "anno_id '2'.*frame 0"),
])
def test_bad_files_are_named(tmp_path, edit, message):
    folder = tmp_path / "valid_u"
    shutil.copytree(MEVIS_META.parent, folder)
    meta = json.loads((folder / "meta_expressions.json").read_text())
    masks = json.loads((folder / "mask_dict.json").read_text())
    edit(meta, masks)
    (folder / "meta_expressions.json").write_text(json.dumps(meta))
    (folder / "mask_dict.json").write_text(json.dumps(masks))
    with pytest.raises(VideoDataError, match=message):
        load_video_set("mevis", folder / "meta_expressions.json")


def test_revos_needs_a_known_type_id(tmp_path):
    meta = json.loads(REVOS_META.read_text())
    meta["videos"]["vid_b"]["expressions"]["0"]["type_id"] = 7
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(VideoDataError, match="expression '0': 'type_id'"):
        load_video_set("revos", tmp_path / "meta.json",
                       mask_dict_path=REVOS_META.parent / "mask_dict.json")


def test_masks_decode_at_the_frame_size():
    data = revos()
    for e in data.expressions:
        for r in data.target_masks(e):
            assert rle_ops.decode(r).shape == (24, 32)
    only = next(e for e in data.expressions if e.video == "vid_b")
    assert np.array_equal(rle_ops.decode(data.foreground_masks("vid_b")[1]),
                          rle_ops.decode(data.target_masks(only)[1]))
