"""The synthetic set: determinism, coverage of round types, and masks that match the words."""

import collections
import json
import re

import numpy as np
import pytest
from PIL import Image

from segllm.data_builders import synthetic
from segllm.data_builders.geometry import Obj, satisfies
from segllm.data_builders.rounds import POSITIONAL_QUESTIONS
from segllm.masks import decode_rle, mask_to_bbox
from segllm.records import read_jsonl, validate_conversation, validate_gcg
from segllm.tokens import SEG_TOKEN

N = 150


@pytest.fixture(scope="module")
def sample():
    return [synthetic.conversation_at(7, i, min_rounds=3, max_rounds=8) for i in range(N)]


def test_present_and_absent_shapes_are_asked_in_the_same_words(sample):
    """A wording used only for absent shapes would let a model refuse from the words alone
    (the first shipped model did: "Segment the X." was absent 3 times in 4)."""
    by_wording = collections.defaultdict(lambda: [0, 0])
    for record, _ in sample:
        for r in record["rounds"]:
            if r["type"] == "referring":
                wording = re.sub(r"the [a-z ]+", "the X", r["question"])
                by_wording[wording][bool(r["targets"])] += 1
    assert set(by_wording) == {t.format(d="X") for t in synthetic.REFERRING_QUESTIONS}
    for absent, present in by_wording.values():
        assert 0.25 < absent / (absent + present) < 0.75, dict(by_wording)


def _obj(rle, key) -> Obj:
    m = decode_rle(rle)
    return Obj(key=key, name="", bbox=mask_to_bbox(m), area=float(m.sum()))


def test_records_are_valid_and_rounds_within_limits(sample):
    for record, scene in sample:
        validate_conversation(record)
        assert 3 <= len(record["rounds"]) <= 8
        assert record["image"].startswith("images/") and scene.image.shape == (64, 64, 3)
        assert not record["rounds"][0]["refs"]


def test_every_round_type_multi_target_and_no_target_occur(sample):
    rounds = [r for record, _ in sample for r in record["rounds"]]
    types = collections.Counter(r["type"] for r in rounds)
    assert set(types) == {"referring", "semantic", "positional", "interactional", "hierarchical",
                          "attribute", "reasoning"}
    assert any(len(r["targets"]) >= 2 and r["answer"].count(SEG_TOKEN) >= 2 for r in rounds)
    empty = [r for r in rounds if not r["targets"]]
    assert empty and all(SEG_TOKEN not in r["answer"] and r["answer"] for r in empty)
    assert any(r["refs"] for r in rounds)
    lengths = collections.Counter(len(record["rounds"]) for record, _ in sample)
    assert min(lengths) == 3 and max(lengths) == 8


def test_same_seed_same_output_other_seed_other_output():
    first = [json.dumps(r) for r, _ in synthetic.generate_conversations(20, seed=3)]
    again = [json.dumps(r) for r, _ in synthetic.generate_conversations(20, seed=3)]
    other = [json.dumps(r) for r, _ in synthetic.generate_conversations(20, seed=4)]
    assert first == again and first != other
    sliced = [json.dumps(r) for r, _ in synthetic.generate_conversations(5, seed=3, start=10)]
    assert sliced == first[10:15]


POSITIONAL_PATTERNS = {
    rel: re.compile("^" + re.escape(t).replace(r"\{name\}", "shape").replace(r"\{ref\}", r"<ref:(\d+)>") + "$")
    for rel, t in POSITIONAL_QUESTIONS.items()
}


def test_positional_targets_stand_where_the_question_says(sample):
    checked = collections.Counter()
    for record, scene in sample:
        rounds = record["rounds"]
        for rnd in rounds:
            for relation, pattern in POSITIONAL_PATTERNS.items():
                match = pattern.match(rnd["question"])
                if not match:
                    continue
                k = int(match.group(1))
                anchor = _obj(rounds[k]["targets"][0]["rle"], "anchor")
                found = _obj(rnd["targets"][0]["rle"], "target")
                assert satisfies(found, anchor, relation), (record["id"], rnd["question"])
                if relation == "left":
                    assert found.center[0] < anchor.center[0]
                if relation == "largest":
                    assert found.area > 0 and found.bbox != anchor.bbox
                # the closest one: no other top-level shape in that relation is nearer
                if relation in ("left", "right", "above", "below", "nearest"):
                    others = [s.as_obj() for s in scene.top_level]
                    nearer = [o for o in others if satisfies(o, anchor, relation) and o.bbox != anchor.bbox
                              and np.hypot(*np.subtract(o.center, anchor.center))
                              < np.hypot(*np.subtract(found.center, anchor.center)) - 1e-9]
                    assert not nearer, (record["id"], rnd["question"])
                checked[relation] += 1
    assert set(checked) == set(POSITIONAL_QUESTIONS)


def test_parts_lie_inside_their_wholes(sample):
    checked = 0
    for record, _ in sample:
        rounds = record["rounds"]
        for rnd in rounds:
            if rnd["type"] != "hierarchical" or not rnd["refs"]:
                continue
            ref_mask = decode_rle(rounds[rnd["refs"][0]]["targets"][0]["rle"]).astype(bool)
            got = decode_rle(rnd["targets"][0]["rle"]).astype(bool)
            if "inside" in rnd["question"]:  # part of the referenced whole
                assert not (got & ~ref_mask).any()
            else:  # the whole that the referenced part belongs to
                assert not (ref_mask & ~got).any() and got.sum() > ref_mask.sum()
            checked += 1
    assert checked >= 10


def test_square_with_a_hole_has_a_hole():
    m = synthetic.shape_mask("ring", 32, 32, 12, 64)
    assert not m[32, 32] and m[32, 23] and m.sum() > 100


def test_colours_and_links_match_the_image(sample):
    seen = collections.Counter()
    for record, scene in sample:
        rounds = record["rounds"]
        for rnd in rounds:
            colour = re.match(r"^Segment the (\w+) shape\.$", rnd["question"])
            if colour:
                mask = decode_rle(rnd["targets"][0]["rle"]).astype(bool)
                pixels = scene.image[mask].reshape(-1, 3)
                values, counts = np.unique(pixels, axis=0, return_counts=True)
                assert tuple(values[counts.argmax()]) == synthetic.COLOURS[colour.group(1)]
                seen["colour"] += 1
            if rnd["question"].startswith("Segment the shape linked to") and rnd["targets"]:
                a = decode_rle(rounds[rnd["refs"][0]]["targets"][0]["rle"]).astype(bool)
                b = decode_rle(rnd["targets"][0]["rle"]).astype(bool)
                line = (scene.image == synthetic.LINE_COLOUR).all(axis=2)
                ys, xs = np.nonzero(a | b)
                box = line[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                assert box.any(), record["id"]
                seen["link"] += 1
            if rnd["question"] == "Which shape has the most corners? Segment it.":
                corners = {s.description: synthetic.CORNERS[s.kind] for s in scene.top_level}
                best = corners.pop(rnd["targets"][0]["label"])
                assert all(best > c for c in corners.values())
                seen["corners"] += 1
    assert seen["colour"] and seen["link"] and seen["corners"]


def test_gcg_records_are_grounded(sample):
    for record, scene in sample[:40]:
        gcg = synthetic.scene_to_gcg(scene, "g", record["image"])
        validate_gcg(gcg)
        assert len(gcg["phrases"]) >= len(scene.top_level)
        for phrase in gcg["phrases"]:
            assert gcg["caption"][phrase["span"][0]:phrase["span"][1]] == phrase["text"]


def test_write_synthetic_writes_images_jsonl_and_summary(tmp_path):
    stats = synthetic.write_synthetic(tmp_path / "a", num=12, seed=5, min_rounds=2)
    synthetic.write_synthetic(tmp_path / "b", num=12, seed=5, min_rounds=2, workers=2)
    for name in ("synthetic.jsonl", "synthetic_gcg.jsonl", "synthetic.summary.json", "images/000011.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    records = list(read_jsonl(tmp_path / "a" / "synthetic.jsonl"))
    assert len(records) == 12 and stats.written == 12
    image = Image.open(tmp_path / "a" / records[3]["image"])
    assert image.size == (64, 64)
    expected = synthetic.conversation_at(5, 3, min_rounds=2)[1].image
    assert np.array_equal(np.asarray(image), expected)
    summary = json.loads((tmp_path / "a" / "synthetic.summary.json").read_text())
    assert summary["records_written"] == 12
    assert sum(summary["rounds_per_type"].values()) == sum(len(r["rounds"]) for r in records)
    assert len(list(read_jsonl(tmp_path / "a" / "synthetic_gcg.jsonl"))) == 12


def test_bad_round_limits_are_rejected():
    with pytest.raises(ValueError):
        next(synthetic.generate_conversations(1, 0, min_rounds=4, max_rounds=2))


def _cell(mask: np.ndarray) -> tuple[int, int]:
    """(row, column) of the 3x3 grid cell that holds a mask's box centre."""
    x, y, w, h = mask_to_bbox(mask)
    cell = mask.shape[0] / synthetic.GRID
    return int((y + h / 2) // cell), int((x + w / 2) // cell)


_PLACE = r"(at the [a-z ]+|on the [a-z]+|in the middle)"


def _namings(answer: str, targets: int) -> list[tuple[str, str]]:
    """(label, place) of each target as the answer names it: after the one [SEG] of an echoed
    answer ("The red shape [SEG] is the red circle at the top left."), before each [SEG] of an
    answer with several ("... are the red circle at the top left [SEG] and the ...")."""
    if targets == 1:
        return re.findall(re.escape(SEG_TOKEN) + r"(?:: it)? is the ([a-z ]+?) " + _PLACE + r"\.",
                          answer)
    found = re.findall(r"[Tt]he ([a-z ]+?) " + _PLACE + " " + re.escape(SEG_TOKEN), answer)
    return [(label.rsplit(" the ", 1)[-1], place) for label, place in found]


def test_answers_name_each_target_with_its_grid_cell(sample):
    """Each target is named by its label then the place of its own cell, and a place picks one
    top-level shape."""
    checked = 0
    for record, scene in sample:
        cells = collections.Counter(_cell(s.mask) for s in scene.top_level)
        assert max(cells.values()) == 1, record["id"]  # one top-level shape a cell
        for rnd in record["rounds"]:
            spans = _namings(rnd["answer"], len(rnd["targets"]))
            assert len(spans) == len(rnd["targets"]), (record["id"], rnd["answer"])
            assert rnd["answer"].count(SEG_TOKEN) == len(rnd["targets"]), rnd["answer"]
            for (label, place), tgt in zip(spans, rnd["targets"], strict=True):
                row, col = _cell(decode_rle(tgt["rle"]).astype(bool))
                assert label == tgt["label"] and place == synthetic.PLACES[row][col], rnd["answer"]
                checked += 1
    assert checked > 300


def _echo(answer: str) -> str:
    """The words an echoed answer opens with: up to its [SEG], or up to the verb that says the
    target is not there."""
    head = re.split(re.escape(SEG_TOKEN) + r"| (?:is|are) not | cannot be found| are the |: the ",
                    answer)[0]
    return head.removeprefix("Sure, ").strip()


def test_echoed_answers_repeat_the_question_before_segmenting(sample):
    """With one target or none, the answer first repeats the question's phrase for it, so what
    comes right before [SEG] (or before "is not in the image") is copied from the question
    (<ref:k> read as "it"), never the model's own reading of the picture."""
    kinds = collections.Counter()
    for record, _ in sample:
        for rnd in record["rounds"]:
            echo = _echo(rnd["answer"]).lower()
            question = re.sub(r"<ref:\d+>", "it", rnd["question"]).lower()
            words = set(re.findall(r"[a-z]+", question)) | {"the", "with", "of", "its", "shape", "shapes", "that"}
            assert echo.startswith("the "), rnd["answer"]
            assert set(re.findall(r"[a-z]+", echo)) <= words, (rnd["question"], rnd["answer"])
            if len(rnd["targets"]) == 1:
                assert rnd["answer"].split(SEG_TOKEN)[0].removeprefix("Sure, ").lower().strip() == echo
            kinds[rnd["type"], min(len(rnd["targets"]), 2)] += 1
    for kind in ("referring", "attribute", "positional", "interactional", "hierarchical",
                 "reasoning"):
        assert kinds[kind, 1], kind
    assert kinds["referring", 0] and kinds["semantic", 2]


def test_named_answers_keep_the_older_style_and_the_same_rounds(sample):
    """--named-answers: every target named before its [SEG] ("It is the red circle at the top
    left [SEG]."), with the same scenes, questions and targets as the echoed answers."""
    record, _ = synthetic.conversation_at(7, 0, min_rounds=3, max_rounds=8, echo=False)
    echoed, _ = sample[0]
    for named, with_echo in zip(record["rounds"], echoed["rounds"], strict=True):
        assert named["question"] == with_echo["question"]
        assert named["targets"] == with_echo["targets"]
        spans = re.findall(r"[Tt]he ([a-z ]+?) " + _PLACE + " " + re.escape(SEG_TOKEN),
                           named["answer"])
        assert len(spans) == len(named["targets"]), named["answer"]
        assert [label.rsplit(" the ", 1)[-1] for label, _ in spans] == [
            t["label"] for t in named["targets"]]
    assert [r["question"] for r in record["rounds"]] == [r["question"] for r in echoed["rounds"]]


def test_places_can_be_left_out(sample):
    """--no-places: answers and caption phrases as before places were added (the same scenes,
    questions and targets)."""
    record, scene = synthetic.conversation_at(7, 0, min_rounds=3, max_rounds=8, places=False)
    placed, _ = sample[0]
    assert [r["question"] for r in record["rounds"]] == [r["question"] for r in placed["rounds"]]
    for plain, with_place in zip(record["rounds"], placed["rounds"], strict=True):
        assert plain["targets"] == with_place["targets"]
        assert not re.search(r"\b(top|bottom|middle|left|right) \[SEG\]", plain["answer"])
    caption = synthetic.scene_to_gcg(scene, "g", record["image"], places=False)
    assert all(p["text"].lower().removeprefix("a ").removeprefix("an ") in
               {s.description for s in scene.shapes} for p in caption["phrases"])


def test_gcg_phrases_of_top_level_shapes_carry_their_place(sample):
    for record, scene in sample[:40]:
        gcg = synthetic.scene_to_gcg(scene, "g", record["image"])
        for phrase in gcg["phrases"]:
            mask = decode_rle(phrase["rle"]).astype(bool)
            shape = next(s for s in scene.shapes if np.array_equal(s.mask, mask))
            row, col = _cell(mask)
            assert phrase["text"].endswith(synthetic.PLACES[row][col]) == (shape.parent is None)
