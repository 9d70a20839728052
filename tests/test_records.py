"""segllm.records: schemas, error messages that say where, JSONL reading and atomic writing."""

import copy
import json
import os

import numpy as np
import pytest

from segllm.masks import encode_rle
from segllm.records import (
    AtomicWriter,
    RecordError,
    read_jsonl,
    record_kind,
    validate_conversation,
    validate_gcg,
    validate_record,
    validate_unified,
    write_jsonl,
)

H, W = 20, 30


def _target(x=2, y=3, s=5):
    m = np.zeros((H, W), np.uint8)
    m[y:y + s, x:x + s] = 1
    return {"rle": encode_rle(m), "bbox": [x, y, s, s]}


def conversation():
    return {"id": "conv-1", "image": "coco/train2014/a.jpg", "height": H, "width": W, "source": "test",
            "split": "train", "rounds": [
                {"question": "Segment the cat.", "answer": "Sure, [SEG].", "targets": [_target()], "refs": [],
                 "type": "referring"},
                {"question": "Segment the dogs left of <ref:0>.", "answer": "[SEG] and [SEG].",
                 "targets": [_target(10), _target(20)], "refs": [0], "type": "positional"},
                {"question": "Segment the bird.", "answer": "There is no bird in the image.", "targets": [],
                 "refs": [], "type": "referring"}]}


def gcg():
    caption = "A cat sits near a dog."
    return {"id": "gcg-1", "image": "a.jpg", "height": H, "width": W, "caption": caption,
            "phrases": [{"text": "A cat", "span": [0, 5], "rle": _target()["rle"]},
                        {"text": "a dog", "span": [16, 21], "rle": _target(10)["rle"]}]}


def unified():
    return {"image": "a.jpg", "task": "instance", "annotations": [
        {"text": "cat", "bbox": [2, 3, 5, 5], "rle": _target()["rle"]}, {"text": "dog", "bbox": [1, 1, 2, 2], "rle": None}]}


def test_valid_records_pass_and_kinds_are_recognised():
    assert validate_conversation(conversation())["id"] == "conv-1"
    validate_gcg(gcg())
    validate_unified(unified())
    assert [record_kind(r) for r in (conversation(), gcg(), unified())] == ["conversation", "gcg", "unified"]


def _error(record, validator=validate_record) -> RecordError:
    with pytest.raises(RecordError) as info:
        validator(record)
    return info.value


def test_seg_count_mismatch_names_record_round_and_field():
    record = conversation()
    record["rounds"][1]["answer"] = "[SEG]."
    err = _error(record)
    assert (err.record_id, err.round_index, err.field) == ("conv-1", 1, "answer")
    assert "conv-1" in str(err) and "round 1" in str(err) and "answer" in str(err)


@pytest.mark.parametrize("edit, field, words", [
    (lambda r: r["rounds"][1].update(refs=[1], question="Segment left of <ref:1>."), "refs", "not an earlier round"),
    (lambda r: r["rounds"][1].update(refs=[2], question="Left of <ref:2>."), "refs", "not an earlier round"),
    (lambda r: r["rounds"].append({"question": "Near <ref:2>.", "answer": "[SEG].", "targets": [_target()],
                                   "refs": [2], "type": "positional"}), "refs", "has no target"),
    (lambda r: r["rounds"][1].update(refs=[]), "refs", "question references rounds [0]"),
    (lambda r: r["rounds"][0]["targets"][0].update(bbox=[2, 3, 0, 5]), "targets[0].bbox", "zero-area"),
    (lambda r: r["rounds"][0]["targets"][0].update(bbox=[20, 3, 15, 5]), "targets[0].bbox", "outside"),
    (lambda r: r["rounds"][0]["targets"][0].update(rle=encode_rle(np.zeros((H, W), np.uint8))), "targets[0].rle",
     "zero-area mask"),
    (lambda r: r["rounds"][0]["targets"][0].update(rle=encode_rle(np.ones((H + 5, W), np.uint8))),
     "targets[0].rle.size", "does not match"),
    (lambda r: r["rounds"][0]["targets"][0].update(bbox=[0, 0, 9, 9]), "targets[0].bbox", "does not match its mask"),
    (lambda r: r["rounds"][0].update(type="chitchat"), "type", "unknown round type"),
    (lambda r: r["rounds"][0].pop("question"), "question", "missing"),
    (lambda r: r["rounds"][0]["targets"][0]["rle"].update(counts=[1, 2]), "targets[0].rle.counts", "str"),
])
def test_round_errors_name_the_field(edit, field, words):
    record = conversation()
    edit(record)
    err = _error(record)
    assert err.field == field and words in str(err) and err.record_id == "conv-1"


@pytest.mark.parametrize("edit, field", [
    (lambda r: r.update(image="/abs/a.jpg"), "image"), (lambda r: r.update(height=0), "height/width"),
    (lambda r: r.update(rounds=[]), "rounds"), (lambda r: r.update(height=True), "height"),
])
def test_record_level_errors(edit, field):
    record = conversation()
    edit(record)
    assert _error(record, validate_conversation).field == field


def test_gcg_errors():
    record = gcg()
    record["phrases"][1]["span"] = [15, 21]
    assert "differs from caption" in str(_error(record, validate_gcg))
    record = gcg()
    record["phrases"].reverse()
    assert "caption order" in str(_error(record, validate_gcg))
    record = gcg()
    record["phrases"][0]["span"] = [0, 99]
    assert _error(record, validate_gcg).field == "phrases[0].span"


def test_unified_errors():
    record = unified()
    record["task"] = "captioning"
    assert _error(record, validate_unified).field == "task"
    record = unified()
    del record["annotations"][0]["bbox"]
    assert _error(record, validate_unified).field == "annotations[0].bbox"


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    bad = copy.deepcopy(conversation())
    bad["rounds"][0]["answer"] = "no seg here"
    path.write_text(json.dumps(conversation()) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as info:
        list(read_jsonl(path))
    assert info.value.line == 3 and str(path) in str(info.value) and "round 0" in str(info.value)
    path.write_text(json.dumps(conversation()) + "\n{not json\n")
    reader = read_jsonl(path)
    assert next(reader)["id"] == "conv-1"
    with pytest.raises(RecordError, match=r"data.jsonl:2: malformed JSON"):
        next(reader)


def test_write_jsonl_round_trip_and_byte_identical(tmp_path):
    records = [conversation(), gcg(), unified()]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(a, records) == 3
    write_jsonl(b, records)
    assert a.read_bytes() == b.read_bytes()
    assert [r.get("id") for r in read_jsonl(a)] == ["conv-1", "gcg-1", None]
    assert oct(a.stat().st_mode & 0o777) == "0o644"


def test_write_jsonl_leaves_no_truncated_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [conversation()])
    before = path.read_bytes()
    bad = conversation()
    bad["rounds"][0]["refs"] = [0]
    with pytest.raises(RecordError) as info:
        write_jsonl(path, [conversation(), bad])
    assert info.value.line == 2
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temporary file left behind


def test_atomic_writer_on_crash_keeps_nothing_new(tmp_path):
    path = tmp_path / "new.jsonl"
    with pytest.raises(RuntimeError), AtomicWriter(path) as out:
        out.write_record({"a": 1})
        raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
