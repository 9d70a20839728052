"""Helpers for the eval tests: masks, records in the formats of docs/architecture.md, and a deterministic fake predictor."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segllm.eval.predictor import SimpleReply


def rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(h, w)`` bool mask, True on rows y0:y1 and columns x0:x1."""
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    """JSON-form COCO RLE of a mask."""
    r = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")}


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_image(path: Path, h: int, w: int, seed: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def mrseg_record(rid: str, h: int, w: int, rounds: list[dict], image: str | None = None) -> dict:
    """An MRSeg record; each round ``{"q", "targets": [mask], "refs", "type"}``."""
    return {
        "id": rid, "image": image or f"{rid}.png", "height": h, "width": w, "source": "test", "split": "val",
        "rounds": [{"question": r["q"], "answer": " ".join(["[SEG]"] * len(r["targets"])) or "There is none.",
                    "targets": [{"rle": rle(m)} for m in r["targets"]], "refs": r.get("refs", []),
                    "type": r.get("type", "referring")} for r in rounds],
    }


def round_prediction(rid: str, rounds: list[list[np.ndarray]], mode: str = "own", task: str = "mrseg",
                     scores=None, boxes=None) -> dict:
    """A predictions-file record with the given masks per round."""
    out = []
    for k, masks in enumerate(rounds):
        rnd = {"index": k, "text": "[SEG]" * len(masks), "masks": [rle(m) for m in masks],
               "scores": scores[k] if scores else [1.0] * len(masks)}
        if boxes:
            rnd["boxes"] = boxes[k]
        out.append(rnd)
    return {"id": rid, "task": task, "mode": mode, "rounds": out}


class FakeSession:
    """Answers from a script keyed by question.

    Script values: ``("masks", [mask, ...])`` returns those masks; ``("shift", k, dx)`` returns
    round k's masks moved ``dx`` columns right, taken from ``ref_masks`` when the runner gives
    them (ground-truth mode) and from this session's own earlier answers otherwise.
    """

    def __init__(self, script: dict, image):
        self.script = script
        self.image_size = (image.size[1], image.size[0])
        self.history: list[list[np.ndarray]] = []
        self.ref_masks_seen: list = []

    def ask(self, text: str, *, ref_masks=None):
        self.ref_masks_seen.append(ref_masks)
        action = self.script[text]
        if action[0] == "masks":
            masks = [np.asarray(m, dtype=bool) for m in action[1]]
        else:
            _, k, dx = action
            source = ref_masks[k] if ref_masks is not None else self.history[k]
            masks = [np.roll(m, dx, axis=1) for m in source]
        self.history.append(masks)
        text_out = action[2] if action[0] == "masks" and len(action) > 2 else "Sure, " + " ".join(["[SEG]"] * len(masks))
        return SimpleReply(text=text_out, masks=masks, scores=[0.9] * len(masks), boxes=None)


class FakePredictor:
    """Deterministic ``Predictor``: one ``FakeSession`` per image, all sharing one script."""

    name = "fake-predictor"

    def __init__(self, script: dict):
        self.script = script
        self.sessions: list[FakeSession] = []

    def start(self, image):
        session = FakeSession(self.script, image)
        self.sessions.append(session)
        return session


def reference_cocoeval_stats(dataset: dict, results: list[dict]) -> list[float]:
    """pycocotools' own segm COCOeval on a hand-built COCO dataset and results: the 12 stats
    (AP, AP50, AP75, ...), the reference our metrics are compared with."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


# A two-conversation MRSeg set on 48x64 images, scored by the runner and adapter tests.
H, W = 48, 64
T0 = rect(H, W, 8, 24, 8, 24)  # 256 px
T1 = rect(H, W, 8, 24, 32, 48)  # T0 moved 24 columns right
S1, S2 = rect(H, W, 30, 40, 0, 10), rect(H, W, 30, 38, 50, 58)

MRSEG_SCRIPT = {
    "Segment the box.": ("masks", [rect(H, W, 8, 24, 12, 28)]),  # IoU with T0: 192/320 = 0.6
    "Segment the box right of <ref:0>.": ("shift", 0, 24),  # round 0's masks moved 24 columns right
    "Is there a giraffe?": ("masks", []),
    "Segment both squares.": ("masks", [S1, S2]),
}


def write_mrseg_set(folder: Path) -> tuple[Path, Path]:
    """The set's JSONL and image root under ``folder``: (``mrseg.jsonl``, ``images/``)."""
    records = [
        mrseg_record("conv-a", H, W, [
            {"q": "Segment the box.", "targets": [T0], "type": "referring"},
            {"q": "Segment the box right of <ref:0>.", "targets": [T1], "refs": [0], "type": "positional"},
            {"q": "Is there a giraffe?", "targets": [], "type": "reasoning"},
        ]),
        mrseg_record("conv-b", H, W, [{"q": "Segment both squares.", "targets": [S1, S2], "type": "semantic"}]),
    ]
    for i, r in enumerate(records):
        write_image(folder / "images" / r["image"], H, W, seed=i)
    return write_jsonl(folder / "mrseg.jsonl", records), folder / "images"


def eval_args(argv: list[str]):
    """``segllm eval`` arguments parsed as the command line would."""
    import argparse

    from segllm.eval import cli as eval_cli

    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    return parser.parse_args(argv)
