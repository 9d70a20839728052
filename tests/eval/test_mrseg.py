"""Round-task evaluation: pairing rules, breakdowns, REC accuracy and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segllm.eval import predictions as pio
from segllm.eval.errors import EvalInputError
from segllm.eval.mrseg import evaluate_rounds

from .helpers import mrseg_record, rect, rle, round_prediction

H, W = 20, 30
A = rect(H, W, 0, 10, 0, 10)  # 100 px
B = rect(H, W, 10, 20, 20, 30)  # 100 px, disjoint from A
A_SHIFTED = rect(H, W, 0, 10, 5, 15)  # overlaps A on 50 px: IoU 50/150
EMPTY = np.zeros((H, W), bool)


def evaluate(gt_records, pred_records, task="mrseg", **kw):
    gt = pio.parse_round_ground_truth(gt_records)
    mode, preds = pio.parse_round_predictions(gt, pred_records, task)
    return mode, evaluate_rounds(gt, preds, **kw)


def one_round(targets, preds, **kw):
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": targets}])]
    return evaluate(gt, [round_prediction("r", [preds])], **kw)[1]["overall"]


def test_exact_prediction():
    o = one_round([A], [A])
    assert (o["ciou"], o["giou"], o["miou"], o["rec_acc50"], o["n_targets"]) == (1.0, 1.0, 1.0, 1.0, 1)


def test_empty_prediction_scores_zero():
    o = one_round([A], [])
    assert (o["ciou"], o["giou"], o["rec_acc50"], o["n_pairs"]) == (0.0, 0.0, 0.0, 1)


def test_no_target_round():
    correct = one_round([], [])  # "no such object", nothing predicted: LISA's no-object case
    assert correct["giou"] == 1.0 and correct["ciou"] == 0.0 and math.isnan(correct["miou"])
    assert correct["n_targets"] == 0 and math.isnan(correct["rec_acc50"])
    wrong = one_round([], [A])  # a mask where there is nothing
    assert (wrong["giou"], wrong["ciou"], wrong["miou"]) == (0.0, 0.0, 0.0)


def test_no_target_rounds_answered_without_a_mask_are_counted():
    gt = [mrseg_record("r", H, W, [{"q": "a", "targets": [A]}, {"q": "b", "targets": []},
                                   {"q": "c", "targets": []}, {"q": "d", "targets": []}])]
    _, result = evaluate(gt, [round_prediction("r", [[A], [], [B], []])])
    assert result["no_target"] == {"rounds": 3, "without_mask": 2, "rate": pytest.approx(2 / 3)}
    _, none = evaluate([mrseg_record("s", H, W, [{"q": "a", "targets": [A]}])],
                       [round_prediction("s", [[A]])])
    assert none["no_target"]["rounds"] == 0 and math.isnan(none["no_target"]["rate"])


def test_duplicate_predictions_count_against():
    # The second copy pairs with an empty target: IoU 0, and its 100 px join the union.
    o = one_round([A], [A, A])
    assert o["n_pairs"] == 2 and o["n_targets"] == 1
    assert o["giou"] == pytest.approx(0.5)
    assert o["ciou"] == pytest.approx(100 / 200)
    assert o["rec_acc50"] == 1.0


def test_more_predictions_than_targets_and_fewer():
    more = one_round([A], [A_SHIFTED, B])
    assert more["giou"] == pytest.approx((50 / 150 + 0) / 2)
    assert more["ciou"] == pytest.approx(50 / (150 + 100))
    fewer = one_round([A, B], [A])
    assert fewer["giou"] == pytest.approx(0.5)
    assert fewer["ciou"] == pytest.approx(100 / 200)
    assert fewer["rec_acc50"] == pytest.approx(0.5)


def test_hungarian_pairing_ignores_order():
    assert one_round([A, B], [B, A])["giou"] == 0.0
    assert one_round([A, B], [B, A], pairing="hungarian")["giou"] == 1.0
    assert one_round([A, B], [B], pairing="hungarian")["giou"] == pytest.approx(0.5)


def test_breakdown_per_round_and_type():
    gt = [
        mrseg_record("c1", H, W, [{"q": "a", "targets": [A], "type": "referring"},
                                  {"q": "b", "targets": [B], "refs": [0], "type": "positional"}]),
        mrseg_record("c2", H, W, [{"q": "a", "targets": [A], "type": "referring"}]),
    ]
    preds = [round_prediction("c1", [[A_SHIFTED], [B]]), round_prediction("c2", [[A]])]
    mode, result = evaluate(gt, preds)
    assert mode == "own"
    r0, r1 = result["per_round"]["0"], result["per_round"]["1"]
    assert r0["ciou"] == pytest.approx((50 + 100) / (150 + 100))
    assert r0["giou"] == pytest.approx((50 / 150 + 1) / 2)
    assert r1["ciou"] == 1.0 and r1["n_targets"] == 1
    assert result["per_type"]["referring"] == r0
    assert result["per_type"]["positional"] == r1
    assert result["overall"]["ciou"] == pytest.approx(250 / 350)


def test_ignore_rle_in_ground_truth():
    # Target A, with its right half of the image (cols 15+) marked 255; prediction: all of rows 0-9.
    pred = rect(H, W, 0, 10, 0, 30)
    ignore = rect(H, W, 0, 20, 15, 30)
    record = mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])
    record["rounds"][0]["targets"][0]["ignore_rle"] = rle(ignore)
    o = evaluate([record], [round_prediction("r", [[pred]])])[1]["overall"]
    # prediction counts only cols 0-14: 150 px; intersection 100; union 150
    assert o["ciou"] == pytest.approx(100 / 150)


def test_rec_accuracy_uses_decoder_boxes_when_given():
    # The mask is wrong (IoU 1/3) but the decoder box is right: boxes win unless turned off.
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])]
    preds = [round_prediction("r", [[A_SHIFTED]], boxes=[[[0, 0, 10, 10]]])]
    assert evaluate(gt, preds)[1]["overall"]["rec_acc50"] == 1.0
    assert evaluate(gt, preds, use_decoder_boxes=False)[1]["overall"]["rec_acc50"] == 0.0
    # a given target bbox is used as is
    gt[0]["rounds"][0]["targets"][0]["bbox"] = [5, 0, 10, 10]
    assert evaluate(gt, preds, use_decoder_boxes=False)[1]["overall"]["rec_acc50"] == 1.0


# ------------------------------------------------------------------ bad input


def expect_error(gt_records, pred_records, match, record_id="r", round_index=None):
    with pytest.raises(EvalInputError, match=match) as info:
        evaluate(gt_records, pred_records)
    assert isinstance(info.value, ValueError)
    assert info.value.record_id == record_id
    assert info.value.round_index == round_index
    assert f"record {record_id!r}" in str(info.value)
    if round_index is not None:
        assert f"round {round_index}" in str(info.value)


def test_ids_must_match():
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])]
    expect_error(gt, [round_prediction("other", [[A]])], "ids do not match")
    expect_error(gt, [round_prediction("r", [[A]]), round_prediction("r", [[A]])], "twice")


def test_mask_of_wrong_size():
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": [A]}, {"q": "q2", "targets": [B]}])]
    expect_error(gt, [round_prediction("r", [[A], [np.zeros((H, W + 1), bool)]])], r"20x31 \(h x w\), the image is 20x30", round_index=1)


def test_nan_score():
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])]
    pred = round_prediction("r", [[A]])
    pred["rounds"][0]["scores"] = [float("nan")]
    expect_error(gt, [pred], "finite", round_index=0)
    pred["rounds"][0]["scores"] = [0.5, 0.5]
    expect_error(gt, [pred], "one per mask", round_index=0)


def test_round_count_modes_and_refs():
    gt = [mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])]
    expect_error(gt, [round_prediction("r", [[A], [B]])], "2 rounds")
    gt2 = gt + [mrseg_record("s", H, W, [{"q": "q", "targets": [A]}])]
    with pytest.raises(EvalInputError, match="mixes"):
        evaluate(gt2, [round_prediction("r", [[A]]), round_prediction("s", [[A]], mode="gt")])
    bad_refs = mrseg_record("r", H, W, [{"q": "q", "targets": [A], "refs": [0]}])
    with pytest.raises(EvalInputError, match="refs"):
        pio.parse_round_ground_truth([bad_refs])
    wrong_gt = mrseg_record("r", H, W, [{"q": "q", "targets": [A]}])
    wrong_gt["rounds"][0]["targets"][0]["rle"] = rle(np.zeros((4, 4), bool))
    with pytest.raises(EvalInputError, match="target 0 mask is 4x4"):
        pio.parse_round_ground_truth([wrong_gt])


def test_box_derived_target_is_not_scored_as_a_mask_but_its_box_counts():
    """A Visual Genome target (a filled box) leaves cIoU/gIoU alone; REC Acc@0.5 still counts it."""
    gt = [mrseg_record("r", H, W, [{"q": "a", "targets": [A]}, {"q": "b", "targets": [B]}])]
    gt[0]["rounds"][1]["targets"][0]["box_derived"] = True
    half_of_b = rect(H, W, 10, 20, 20, 25)  # IoU 0.5 with B: a bad mask, a passing box
    _, result = evaluate(gt, [round_prediction("r", [[A], [half_of_b]])])
    o = result["overall"]
    assert (o["ciou"], o["giou"], o["n_pairs"], o["n_box_only"]) == (1.0, 1.0, 1, 1)
    assert o["n_targets"] == 2 and o["rec_acc50"] == 1.0
    assert math.isnan(result["per_round"]["1"]["giou"]) and result["per_round"]["1"]["rec_acc50"] == 1.0


def test_rec_accuracy_uses_the_annotated_box_not_the_masks_tight_box():
    """RefCOCO's annotation box can be wider than its polygon's tight box; Acc@0.5 uses it."""
    gt = [mrseg_record("r", H, W, [{"q": "a", "targets": [A]}])]
    gt[0]["rounds"][0]["targets"][0]["ann_bbox"] = [0, 0, 30, 20]  # the whole image
    tight = one_round([A], [A])
    _, wide = evaluate(gt, [round_prediction("r", [[A]])])
    assert tight["rec_acc50"] == 1.0 and wide["overall"]["rec_acc50"] == 0.0  # 100 / 600 < 0.5
    assert wide["overall"]["ciou"] == 1.0  # the mask is scored as before


def test_refer_metrics_say_which_protocol_the_data_follows(tmp_path):
    """Published RefCOCO numbers come from one-round records (build-data --protocol standard);
    multi-round MRSeg-style records are labelled as such."""
    import json

    from segllm.eval.runners import run_round_task

    def run(records, name):
        data, preds = tmp_path / f"{name}.jsonl", tmp_path / f"{name}_pred.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        rounds = [[A] * len(r["rounds"][k]["targets"]) for r in records for k in range(len(r["rounds"]))]
        preds.write_text(json.dumps(round_prediction(records[0]["id"], rounds, task="refer")) + "\n")
        return run_round_task("refer", data, tmp_path / name, prediction_files=[preds], progress=False)

    standard = run([mrseg_record("s", H, W, [{"q": "a", "targets": [A]}])], "standard")
    multi = run([mrseg_record("m", H, W, [{"q": "a", "targets": [A]}, {"q": "b", "targets": [A]}])], "multi")
    assert standard["protocol"] == "standard" and multi["protocol"] == "multi-round"
