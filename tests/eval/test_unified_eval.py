"""`segllm eval instance|detection|panoptic|semantic|referring|foreground`: hand-made predictions
of known AP (checked against pycocotools' own COCOeval), PQ, mIoU and cIoU against unified records."""

import json

import numpy as np
import pytest

from segllm import cli
from segllm.eval.errors import EvalInputError
from segllm.eval.unified import (
    load_ground_truth,
    load_predictions,
    predictions_from_model,
    score,
)

from .helpers import rect, reference_cocoeval_stats, rle, write_image, write_jsonl

H, W = 10, 100


def cols(a, b):
    return rect(H, W, 0, H, a, b)


def box(a, b):
    return [float(a), 0.0, float(b - a), float(H)]


def gt_record(rid, task, annotations, source="test"):
    """annotations: (text, mask or None, extra fields); box-only ones give their box in extra."""
    anns = []
    for text, mask, extra in annotations:
        ann = {"text": text, "rle": None if mask is None else rle(mask)}
        if mask is not None:
            ys, xs = np.nonzero(mask)
            ann["bbox"] = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        anns.append(ann | extra)
    return {"id": rid, "image": f"{rid}.png", "height": H, "width": W, "source": source, "split": "val",
            "task": task, "annotations": anns}


def pred(rid, annotations, task=None):
    out = {"id": rid, "annotations": [{"text": t, "rle": rle(m), "score": s} for t, m, s in annotations]}
    return out | ({"task": task} if task else {})


def evaluate(tmp_path, task, gt, preds):
    write_jsonl(tmp_path / "gt.jsonl", gt)
    write_jsonl(tmp_path / "pred.jsonl", preds)
    ground_truth, _, unscored = load_ground_truth(tmp_path / "gt.jsonl", task)
    return score(task, ground_truth, load_predictions(tmp_path / "pred.jsonl", task, ground_truth, unscored))


def test_instance_ap_equals_pycocotools_and_ignores_crowd_hits(tmp_path):
    rng = np.random.default_rng(3)
    gt, preds, results = [], [], []
    dataset = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "cat"}]}
    for i in range(3):
        a, c = rng.integers(0, 30), rng.integers(50, 70)
        objects = [("apple", cols(a, a + 20)), ("cat", cols(c, c + 25))]
        guesses = [("apple", cols(a + 3, a + 23), 0.9 - 0.1 * i), ("cat", cols(c - 8, c + 20), 0.5 + 0.1 * i),
                   ("cat", cols(0, 15), 0.6)]
        gt.append(gt_record(f"i{i}", "instance", [(n, m, {}) for n, m in objects]))
        preds.append(pred(f"i{i}", guesses))
        dataset["images"].append({"id": i + 1, "height": H, "width": W})
        for n, m in objects:
            dataset["annotations"].append({"id": len(dataset["annotations"]) + 1, "image_id": i + 1,
                                           "category_id": 1 if n == "apple" else 2, "iscrowd": 0,
                                           "segmentation": rle(m), "area": float(m.sum()), "bbox": [0, 0, 1, 1]})
        results += [{"image_id": i + 1, "category_id": 1 if n == "apple" else 2, "segmentation": rle(m), "score": s}
                    for n, m, s in guesses]
    stats = reference_cocoeval_stats(dataset, results)
    got = evaluate(tmp_path, "instance", gt, preds)
    assert (got["ap"], got["ap50"], got["ap75"]) == pytest.approx(tuple(stats[:3]), abs=1e-12)
    assert 0 < got["ap"] < 1 and len(got["pr_curve"]["recall"]) == 101
    # a crowd region: a detection on it is neither a hit nor a false positive
    crowd = [gt_record("c", "instance", [("cat", cols(0, 40), {}), ("cat", cols(60, 100), {"iscrowd": True})])]
    hits = [pred("c", [("cat", cols(0, 40), 0.9), ("cat", cols(60, 100), 0.95)])]
    assert evaluate(tmp_path, "instance", crowd, hits)["ap"] == pytest.approx(1.0)


def test_detection_box_ap_by_hand_with_box_only_ground_truth(tmp_path):
    gt = [gt_record("d", "detection", [("cup", None, {"bbox": box(0, 20)}), ("cup", None, {"bbox": box(50, 70)})])]
    preds = [{"id": "d", "annotations": [{"text": "cup", "bbox": box(0, 20), "score": 0.9},
                                         {"text": "cup", "bbox": box(80, 95), "score": 0.8}]}]
    got = evaluate(tmp_path, "detection", gt, preds)
    # recall reaches 0.5 at precision 1 and never more: 51 of COCO's 101 recall points
    assert (got["ap"], got["ap50"], got["ap75"]) == pytest.approx((51 / 101,) * 3)
    # instance records score for detection too, a prediction's box taken from its mask
    inst = [gt_record("m", "instance", [("cup", cols(10, 30), {})])]
    assert evaluate(tmp_path, "detection", inst, [pred("m", [("cup", cols(10, 30), 0.7)])])["ap"] == pytest.approx(1.0)


def panoptic_gt():
    return [gt_record("p", "panoptic", [("a", cols(0, 40), {"isthing": True}), ("b", cols(40, 90), {"isthing": False})])]


def test_panoptic_quality_by_hand_with_void(tmp_path):
    preds = [pred("p", [("a", cols(0, 30), 1.0),     # IoU 30/40: TP
                        ("b", cols(50, 95), 1.0),    # 5 px on void: IoU 40 / (45 + 50 - 40 - 5) = 0.8
                        ("c", cols(95, 100), 1.0)])]  # all on void (no ground truth there): ignored
    got = evaluate(tmp_path, "panoptic", panoptic_gt(), preds)
    assert got["per_category"]["a"]["pq"] == pytest.approx(0.75)
    assert got["per_category"]["b"]["pq"] == pytest.approx(0.8)
    assert "c" not in got["per_category"]
    assert (got["pq"], got["pq_things"], got["pq_stuff"]) == pytest.approx(((0.75 + 0.8) / 2, 0.75, 0.8))
    assert got["rq"] == 1.0


def test_panoptic_and_instance_views_of_one_panoptic_record(tmp_path):
    preds = [pred("p", [("a", cols(0, 40), 0.9), ("b", cols(40, 90), 0.8)])]
    assert evaluate(tmp_path, "instance", panoptic_gt(), preds)["n_annotations"] == 1  # stuff left out
    assert evaluate(tmp_path, "semantic", panoptic_gt(), preds)["miou"] == 1.0


def test_semantic_miou_by_hand(tmp_path):
    gt = [gt_record("s", "semantic", [("sky", cols(0, 50), {}), ("road", cols(50, 100), {})])]
    preds = [pred("s", [("tree", cols(0, 10), 0.5), ("sky", cols(0, 60), 1.0), ("road", cols(60, 90), 1.0)])]
    got = evaluate(tmp_path, "semantic", gt, preds)
    # sky: I 50, U 60; road: I 30, U 50 (its last 10 columns unpredicted: wrong); tree: covered
    # by the higher-scoring sky, so it has no pixels and no union (left out of the mean)
    assert got["per_class_iou"]["sky"] == pytest.approx(5 / 6)
    assert got["per_class_iou"]["road"] == pytest.approx(0.6)
    assert got["per_class_iou"]["tree"] is None or np.isnan(got["per_class_iou"]["tree"])
    assert got["miou"] == pytest.approx((5 / 6 + 0.6) / 2)
    assert got["pixel_accuracy"] == pytest.approx(0.8)
    preds[0]["annotations"][0]["score"] = 2.0  # now the tree wins its 10 columns: IoU 0, counted
    got = evaluate(tmp_path, "semantic", gt, preds)
    assert got["per_class_iou"]["sky"] == pytest.approx(40 / 60)
    assert got["miou"] == pytest.approx((40 / 60 + 0.6 + 0.0) / 3)


def test_referring_ciou_giou_per_source(tmp_path):
    gt = [gt_record("r1", "referring", [("the left one", cols(0, 40), {}), ("the right one", cols(60, 100), {})],
                    source="refcoco"),
          gt_record("r2", "referring", [("the middle", cols(30, 70), {})], source="refcocog")]
    preds = [{"id": "r1", "annotations": [{"rle": rle(cols(0, 30))}, {"text": "the right one", "rle": rle(cols(60, 100))}]},
             {"id": "r2", "annotations": [{"rle": rle(cols(50, 90))}]}]
    got = evaluate(tmp_path, "referring", gt, preds)
    inter, union = np.array([300, 400, 200]), np.array([400, 400, 600])
    assert got["ciou"] == pytest.approx(inter.sum() / union.sum())
    assert got["giou"] == pytest.approx(np.mean(inter / union))
    assert got["per_source"]["refcocog"]["ciou"] == pytest.approx(1 / 3)
    assert got["per_expression_iou"] == pytest.approx([0.75, 1.0, 1 / 3])


def test_cli_writes_metrics_json_markdown_and_picture(tmp_path, capsys):
    gt = panoptic_gt() + [gt_record("s", "semantic", [("sky", cols(0, 50), {})])]
    write_jsonl(tmp_path / "gt.jsonl", gt)
    write_jsonl(tmp_path / "pred.jsonl", [pred("p", [("a", cols(0, 30), 1.0), ("b", cols(50, 95), 1.0)], task="panoptic")])
    out = tmp_path / "out"
    assert cli.main(["eval", "panoptic", "--data", str(tmp_path / "gt.jsonl"), "--predictions",
                     str(tmp_path / "pred.jsonl"), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pq"] == pytest.approx(0.775) and metrics["n_records_other_tasks"] == {"semantic": 1}
    # --limit: predictions of records past it (and of other tasks) are passed over
    write_jsonl(tmp_path / "gt2.jsonl", gt + [dict(panoptic_gt()[0], id="p2")])
    write_jsonl(tmp_path / "pred2.jsonl", [pred("s", []), pred("p2", []),
                                           pred("p", [("a", cols(0, 40), 1.0)])])
    assert cli.main(["eval", "panoptic", "--data", str(tmp_path / "gt2.jsonl"), "--predictions",
                     str(tmp_path / "pred2.jsonl"), "--output", str(tmp_path / "out2"), "--limit", "1"]) == 0
    assert json.loads((tmp_path / "out2" / "metrics.json").read_text())["n_images"] == 1
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 77.5 |" in (out / "metrics.md").read_text() and "77.5" in capsys.readouterr().out


@pytest.mark.parametrize("task, preds, words", [
    ("panoptic", [pred("p", [("a", cols(0, 50), 1.0), ("b", cols(40, 90), 1.0)])], "overlap"),
    ("panoptic", [], "1 ground-truth ids have no prediction"),
    ("panoptic", [pred("p", []), pred("q", [])], "not among the scored records"),
    ("panoptic", [pred("p", [], task="semantic")], "scored as 'panoptic'"),
    ("instance", [{"id": "p", "annotations": [{"text": "a", "rle": rle(cols(0, 5))}]}], "score must be a finite"),
    ("semantic", [{"id": "p", "annotations": [{"text": "a", "rle": rle(np.ones((4, 4), bool))}]}], "the image is 10x100"),
    ("referring", [], "no referring records"),
])
def test_bad_predictions_are_named_and_exit_2(tmp_path, capsys, task, preds, words):
    write_jsonl(tmp_path / "gt.jsonl", panoptic_gt())
    write_jsonl(tmp_path / "pred.jsonl", preds)
    assert cli.main(["eval", task, "--data", str(tmp_path / "gt.jsonl"), "--predictions",
                     str(tmp_path / "pred.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert words in capsys.readouterr().err


def test_unified_tasks_take_a_predictions_file_or_a_decoder_model(tmp_path, capsys):
    write_jsonl(tmp_path / "gt.jsonl", panoptic_gt())
    assert cli.main(["eval", "instance", "--data", str(tmp_path / "gt.jsonl"), "--output", str(tmp_path / "out")]) == 2
    assert "scores one --predictions file" in capsys.readouterr().err
    # a folder without querymeld.json is no decoder model (tests/eval/test_unified_inference.py runs one)
    assert cli.main(["eval", "instance", "--data", str(tmp_path / "gt.jsonl"), "--model", str(tmp_path),
                     "--output", str(tmp_path / "out")]) == 2
    assert "no querymeld.json" in capsys.readouterr().err


def test_referring_needs_one_prediction_per_expression_in_order(tmp_path):
    gt = [gt_record("r", "referring", [("left", cols(0, 40), {}), ("right", cols(60, 100), {})])]
    with pytest.raises(EvalInputError, match="1 predicted annotations for 2 expressions"):
        evaluate(tmp_path, "referring", gt, [{"id": "r", "annotations": [{"rle": rle(cols(0, 40))}]}])
    with pytest.raises(EvalInputError, match="is not expression 0"):
        evaluate(tmp_path, "referring", gt, [{"id": "r", "annotations": [
            {"text": "right", "rle": rle(cols(0, 40))}, {"rle": rle(cols(60, 100))}]}])


class Oracle:
    """A model that answers every text with its ground-truth mask (by text)."""

    def __init__(self, gt):
        self.masks = {a["text"]: a["rle"] for r in gt for a in r["annotations"]}

    def predict(self, image, texts, task, *, stuff=frozenset()):
        assert image.shape == (H, W, 3)
        return [{"text": t, "rle": self.masks[t], "score": 1.0} for t in texts if t in self.masks]


def test_predictions_from_a_model_score_like_a_file(tmp_path):
    gt = [gt_record("f", "foreground", [("foreground", cols(20, 60), {})])]
    write_image(tmp_path / "f.png", H, W)
    write_jsonl(tmp_path / "gt.jsonl", gt)
    ground_truth, _, _ = load_ground_truth(tmp_path / "gt.jsonl", "foreground")
    records = predictions_from_model(Oracle(gt), "foreground", ground_truth, {r["id"]: r for r in gt}, tmp_path)
    write_jsonl(tmp_path / "pred.jsonl", records)
    got = score("foreground", ground_truth, load_predictions(tmp_path / "pred.jsonl", "foreground", ground_truth))
    assert (got["ciou"], got["giou"], got["n_expressions"]) == (1.0, 1.0, 1)
