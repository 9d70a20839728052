"""eval/naming.py: did the answer name the right object."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segllm.eval.naming import main, names_label, naming_report, naming_words
from segllm.masks import encode_rle


def test_a_label_counts_only_as_whole_words_outside_longer_labels():
    labels = {"blue square", "blue square with a hole", "red circle"}
    assert names_label("It is the blue square [SEG].", "blue square", labels)
    assert not names_label("It is the blue square with a hole [SEG].", "blue square", labels)
    assert names_label("It is the blue square with a hole [SEG].", "blue square with a hole",
                       labels)
    assert not names_label("the blue squares", "blue square", labels)


def _mask(size, rows):
    m = np.zeros((size, size), bool)
    m[rows] = True
    return encode_rle(m)


def _round(kind, label, rows, refs=()):
    return {"question": "q", "answer": f"the {label} [SEG].", "refs": list(refs), "type": kind,
            "targets": [{"label": label, "rle": _mask(8, rows), "bbox": [0, 0, 1, 1]}]}


def test_report_per_type_with_the_iou_when_named_right_and_wrong(tmp_path):
    scene = {"image": "x.png", "height": 8, "width": 8}
    data = [{"id": "a", **scene, "rounds": [_round("referring", "red circle", slice(0, 4)),
                                   _round("positional", "blue square", slice(4, 8))]},
            {"id": "b", **scene, "rounds": [_round("referring", "blue square", slice(0, 2))]}]
    preds = [{"id": "a", "task": "mrseg", "mode": "own", "rounds": [
                {"index": 0, "text": "It is the red circle [SEG].", "masks": [_mask(8, slice(0, 2))]},
                {"index": 1, "text": "It is the red circle [SEG].", "masks": [_mask(8, slice(0, 4))]}]},
             {"id": "b", "task": "mrseg", "mode": "own", "rounds": [{"index": 0, "text": "No blue square is visible here.",
                                     "masks": []}]}]
    report = naming_report(preds, data)
    # 'b' answered "not visible" though its blue square is there: refused
    assert report["referring"] == {"rounds": 2, "named_right": 0.5, "mean_iou_named_right": 0.5,
                                   "mean_iou_named_wrong": 0.0, "refused": 0.5}
    assert report["positional"]["named_right"] == 0 and report["positional"]["mean_iou_named_wrong"] == 0
    assert report["positional"]["refused"] == 0
    assert report["all"] == {"rounds": 3, "named_right": pytest.approx(1 / 3),
                             "refused": pytest.approx(1 / 3)}

    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in preds[:1]))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(d) for d in data))
    assert main([str(tmp_path / "p.jsonl"), str(tmp_path / "d.jsonl")]) == 2  # 'b' is missing
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in preds))
    assert main([str(tmp_path / "p.jsonl"), str(tmp_path / "d.jsonl"),
                 "--output", str(tmp_path / "n.json")]) == 0
    assert json.loads((tmp_path / "n.json").read_text())["all"]["rounds"] == 3


def test_naming_words_are_those_before_the_first_seg():
    assert naming_words("Sure, it is the red circle at the top left [SEG].") == \
        "red circle at the top left"
    assert naming_words("The blue square with a hole in the middle [SEG].") == \
        "blue square with a hole in the middle"
    assert naming_words("They are the green square at the bottom right [SEG] and the red "
                        "circle [SEG].") == "green square at the bottom right"
    assert naming_words("There is no red circle in the image.") is None


def test_an_echoed_answer_is_named_after_its_seg_not_by_its_echo():
    """"The red circle inside the blue square [SEG] is the red circle on the left.": the echo
    repeats the question, which may hold another label; the naming is after [SEG]."""
    assert naming_words("The red shape [SEG] is the red circle at the top left.") == \
        "red circle at the top left"
    assert naming_words("Sure, the shape closest to the left of it [SEG]: it is the blue square "
                        "with a hole in the middle.") == "blue square with a hole in the middle"
    labels = {"red circle", "blue square"}
    echoed = "The blue square inside the red circle [SEG] is the red circle on the left."
    assert names_label(naming_words(echoed), "red circle", labels)
    assert not names_label(naming_words(echoed), "blue square", labels)


def test_named_as_reference_needs_the_place_too_when_the_reference_names_one():
    scene = {"image": "x.png", "height": 8, "width": 8}
    placed = [_round("referring", "red circle", slice(0, 4)), _round("attribute", "blue square",
                                                                      slice(4, 8))]
    placed[0]["answer"] = "It is the red circle at the top left [SEG]."
    placed[1]["answer"] = "The blue square on the right [SEG]."
    data = [{"id": "a", **scene, "rounds": placed}]
    texts = ["Sure, the red circle at the top left [SEG].", "It is the blue square on the left [SEG]."]
    preds = [{"id": "a", "task": "mrseg", "mode": "own", "rounds": [
        {"index": i, "text": t, "masks": [_mask(8, slice(0, 4))]} for i, t in enumerate(texts)]}]
    report = naming_report(preds, data)
    assert report["referring"]["named_right"] == 1 and report["referring"]["named_as_reference"] == 1
    assert report["attribute"]["named_right"] == 1 and report["attribute"]["named_as_reference"] == 0
    assert report["all"]["named_as_reference"] == 0.5
    # references that name only the label report no such share
    plain = [{"id": "a", **scene, "rounds": [_round("referring", "red circle", slice(0, 4)),
                                             _round("attribute", "blue square", slice(4, 8))]}]
    assert "named_as_reference" not in naming_report(preds, plain)["referring"]
