"""Did the answer name the right object? A diagnosis beside cIoU for data whose targets carry labels.

cIoU mixes two failures: writing about the wrong object, and drawing the right one badly. For
rounds with a single labelled target (the synthetic scenes: "red circle", "blue square with a
hole"), this reads the generated answer and splits them: a round is *named right* when the
answer's naming words (:func:`naming_words`, not an echo of the question) hold the target's
label as whole words, not only inside a longer label of the data set (so "blue square" does
not count for "blue square with a hole"), and the round was answered with a mask (a refusal
such as "I cannot find a red circle in this image." writes the label but names nothing). Per
round type it reports how often the answer named the target, the mean IoU of the mask when it
did and when it did not, and how often it answered without a mask though the target is there
(``refused``: the other side of the "no such object" rate). Where the reference answer names
its target in more words than the label (the synthetic scenes' grid cell: "the red circle at
the top left"), it also reports how often the answer's naming words are the reference's
(``named_as_reference``: label and place both right).

    python -m segllm.eval.naming PREDICTIONS.jsonl DATA.jsonl [--output naming.json]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict

import numpy as np

from segllm import masks as rle_ops
from segllm.tokens import SEG_TOKEN

from .errors import EvalInputError
from .predictions import parse_round_ground_truth, parse_round_predictions, read_jsonl
from .report import print_report


def names_label(text: str, label: str, other_labels: set[str]) -> bool:
    """``label`` occurs in ``text`` as whole words, not only inside a longer label."""
    lowered = text.lower()
    longer = [o for o in other_labels if o != label and label in o and o in lowered]
    if any(re.search(rf"\b{re.escape(o)}\b", lowered) for o in longer):
        stripped = lowered
        for o in longer:
            stripped = re.sub(rf"\b{re.escape(o)}\b", " ", stripped)
        lowered = stripped
    return re.search(rf"\b{re.escape(label.lower())}\b", lowered) is not None


def naming_words(answer: str) -> str | None:
    """The words naming the first ``[SEG]``'s target: from the last "the" before it
    ("Sure, it is the red circle at the top left [SEG]." -> "red circle at the top left"), or,
    in an echoed answer, after it ("The red shape [SEG] is the red circle at the top left.")."""
    if SEG_TOKEN not in answer:
        return None
    after = re.match(r"\s*(?::\s*it\s+)?is the ([^.,\[]+)", answer.split(SEG_TOKEN, 1)[1].lower())
    if after:
        return " ".join(after.group(1).split())
    words = answer.split(SEG_TOKEN)[0].lower().replace(",", " ").split()
    starts = [i for i, w in enumerate(words) if w == "the" and i + 1 < len(words)
              and words[i + 1] not in ("top", "bottom", "left", "right", "middle")]
    return " ".join(words[starts[-1] + 1:] if starts else words)


def _iou(pred: dict | None, target: dict) -> float:
    truth = rle_ops.decode_rle(target["rle"]).astype(bool)
    if pred is None:
        return 0.0
    mask = rle_ops.decode_rle(pred).astype(bool)
    union = np.logical_or(mask, truth).sum()
    return float(np.logical_and(mask, truth).sum() / union) if union else 1.0


def naming_report(predictions: list[dict], data: list[dict]) -> dict:
    """Per round type: rounds, share named right, mean IoU when named right / wrong, and the
    share answered without a mask although the target is there (``refused``).

    Both files are first checked as ``segllm eval mrseg`` checks them, so a bad record is an
    ``EvalInputError`` naming its id and round."""
    parse_round_predictions(parse_round_ground_truth(data), predictions, "mrseg")
    by_id = {p["id"]: p for p in predictions}
    labels = {t.get("label", "").lower() for record in data for r in record["rounds"]
              for t in r["targets"]} - {""}
    rows: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    refused: dict[str, list[bool]] = defaultdict(list)
    as_reference: dict[str, list[bool]] = defaultdict(list)
    for record in data:
        pred = by_id.get(record["id"])
        if pred is None:
            raise EvalInputError(f"record {record['id']!r}: no prediction in the predictions file")
        for index, rnd in enumerate(record["rounds"]):
            if len(rnd["targets"]) != 1 or not rnd["targets"][0].get("label"):
                continue
            if index >= len(pred["rounds"]):
                raise EvalInputError(f"record {record['id']!r} round {index}: missing from the "
                                     "predictions file")
            answer = pred["rounds"][index]
            target = rnd["targets"][0]
            masks = answer.get("masks") or []
            text = answer.get("text", "")
            # the naming words only: an echoed answer repeats the question, which may hold
            # the label ("the red circle inside the blue square [SEG] is the ...")
            named = bool(masks) and names_label(naming_words(text) or text, target["label"], labels)
            kind = rnd.get("type", "unknown")
            rows[kind].append((named, _iou(masks[0] if masks else None, target)))
            refused[kind].append(not masks)
            reference = naming_words(rnd.get("answer") or "")
            if reference and reference != target["label"].lower():
                as_reference[kind].append(bool(masks) and
                                          naming_words(answer.get("text", "")) == reference)
    report = {}
    for kind, values in sorted(rows.items()):
        named = [iou for ok, iou in values if ok]
        missed = [iou for ok, iou in values if not ok]
        report[kind] = {"rounds": len(values), "named_right": len(named) / len(values),
                        "mean_iou_named_right": float(np.mean(named)) if named else None,
                        "mean_iou_named_wrong": float(np.mean(missed)) if missed else None,
                        "refused": float(np.mean(refused[kind]))}
        if as_reference[kind]:
            report[kind]["named_as_reference"] = float(np.mean(as_reference[kind]))
    every = [v for values in rows.values() for v in values]
    if every:
        report["all"] = {"rounds": len(every),
                         "named_right": sum(ok for ok, _ in every) / len(every),
                         "refused": float(np.mean([r for v in refused.values() for r in v]))}
        matched = [ok for values in as_reference.values() for ok in values]
        if matched:
            report["all"]["named_as_reference"] = float(np.mean(matched))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segllm.eval.naming", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", help="predictions-own.jsonl or predictions-gt.jsonl")
    parser.add_argument("data", help="the ground-truth JSONL the predictions were made on")
    parser.add_argument("--output", help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    try:
        report = naming_report(read_jsonl(args.predictions), read_jsonl(args.data))
    except EvalInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_report(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
