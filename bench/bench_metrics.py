"""Speed of the mask metrics: cIoU / gIoU over N mask pairs of S x S (default 10 000 of 512 x 512).

    .venv/bin/python bench/bench_metrics.py [--n 10000] [--size 512] [--dense]

Masks are random ellipses; each prediction is its target's ellipse jittered, so pairs overlap
the way real predictions do. RLEs go through a JSON round trip first (``str`` counts, as in a
predictions file). Printed figures (seconds, wall clock, best of ``--repeat``):

- rle: ``intersection_union_rle`` + ``ciou`` + ``giou`` on the N pairs (pycocotools, no pixels);
- evaluate_rounds: the whole MRSeg path on N one-target rounds (parsing, pairing, boxes,
  per-round and per-type groups);
- dense (``--dense``): ``intersection_union_dense`` on already decoded bool arrays, in chunks,
  and separately the time to decode the RLEs to arrays.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pycocotools import mask as mask_utils

from segllm.eval import mask_metrics as mm
from segllm.eval import predictions as pio
from segllm.eval import rle as rle_ops
from segllm.eval.mrseg import evaluate_rounds


def ellipse_rle(cy: float, cx: float, ry: float, rx: float, size: int) -> dict:
    """A filled ellipse as compressed COCO RLE, built column by column (no pixel array)."""
    xs = np.arange(size, dtype=np.float64)
    dx = (xs - cx) / rx
    inside = np.abs(dx) < 1
    half = ry * np.sqrt(np.clip(1 - dx**2, 0, None))
    y0 = np.clip(np.ceil(cy - half), 0, size).astype(np.int64)
    y1 = np.clip(np.floor(cy + half) + 1, 0, size).astype(np.int64)
    keep = inside & (y1 > y0)
    cols = np.nonzero(keep)[0]
    # Column-major run boundaries: each kept column x contributes [x*size + y0, x*size + y1).
    edges = np.column_stack([cols * size + y0[keep], cols * size + y1[keep]]).ravel()
    counts = np.diff(np.concatenate([[0], edges, [size * size]])).tolist()
    rle = mask_utils.frPyObjects({"size": [size, size], "counts": counts}, size, size)
    return {"size": [size, size], "counts": rle["counts"].decode("ascii")}


def random_ellipse_rles(n: int, size: int, seed: int, jitter_of: np.ndarray | None = None):
    """``n`` ellipse masks as JSON-form RLEs, and their ``(n, 4)`` parameters (cy, cx, ry, rx)."""
    rng = np.random.default_rng(seed)
    if jitter_of is None:
        params = np.column_stack([
            rng.uniform(0.2, 0.8, n) * size, rng.uniform(0.2, 0.8, n) * size,
            rng.uniform(0.05, 0.25, n) * size, rng.uniform(0.05, 0.25, n) * size])
    else:
        params = jitter_of * rng.uniform(0.9, 1.1, jitter_of.shape)
    rles = [ellipse_rle(*p, size) for p in params.tolist()]
    return json.loads(json.dumps(rles)), params


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dense", action="store_true", help="also time the dense numpy path")
    args = parser.parse_args()
    n, size = args.n, args.size

    start = time.perf_counter()
    targets, params = random_ellipse_rles(n, size, seed=0)
    preds, _ = random_ellipse_rles(n, size, seed=1, jitter_of=params)
    print(f"generated {n} target and {n} predicted masks of {size}x{size} in {time.perf_counter() - start:.1f} s")

    def rle_metrics():
        p = [rle_ops.to_pycoco(r) for r in preds]
        t = [rle_ops.to_pycoco(r) for r in targets]
        inter, union = mm.intersection_union_rle(p, t)
        return mm.ciou(inter, union), mm.giou(inter, union)

    seconds, (c, g) = best_of(args.repeat, rle_metrics)
    print(f"rle: cIoU/gIoU over {n} pairs: {seconds:.3f} s (cIoU {c:.4f}, gIoU {g:.4f})")

    gt_records = [{"id": f"r{i}", "image": "x.jpg", "height": size, "width": size,
                   "rounds": [{"question": "q", "answer": "[SEG]", "refs": [], "type": ("referring", "semantic")[i % 2],
                               "targets": [{"rle": targets[i]}]}]} for i in range(n)]
    pred_records = [{"id": f"r{i}", "task": "mrseg", "mode": "own",
                     "rounds": [{"index": 0, "text": "[SEG]", "masks": [preds[i]], "scores": [1.0]}]} for i in range(n)]

    def full_path():
        gt = pio.parse_round_ground_truth(gt_records)
        _, parsed = pio.parse_round_predictions(gt, pred_records, "mrseg")
        return evaluate_rounds(gt, parsed)

    seconds, result = best_of(args.repeat, full_path)
    o = result["overall"]
    print(f"evaluate_rounds (parse + pair + IoU + boxes + groups) over {n} rounds: {seconds:.3f} s "
          f"(cIoU {o['ciou']:.4f}, gIoU {o['giou']:.4f}, Acc@0.5 {o['rec_acc50']:.4f})")

    if args.dense:
        chunk = 500
        decode_s = dense_s = 0.0
        inter_all, union_all = [], []
        for s in range(0, n, chunk):
            t0 = time.perf_counter()
            # decode gives Fortran-ordered (H, W, N); (N, W, H) is its C-contiguous view, and IoU
            # does not care about the transpose.
            p = mask_utils.decode([rle_ops.to_pycoco(r) for r in preds[s : s + chunk]]).transpose(2, 1, 0).view(bool)
            t = mask_utils.decode([rle_ops.to_pycoco(r) for r in targets[s : s + chunk]]).transpose(2, 1, 0)
            t1 = time.perf_counter()
            i, u = mm.intersection_union_dense(p, t)
            dense_s += time.perf_counter() - t1
            decode_s += t1 - t0
            inter_all.append(i)
            union_all.append(u)
        inter, union = np.concatenate(inter_all), np.concatenate(union_all)
        print(f"dense: cIoU/gIoU over {n} decoded pairs: {dense_s:.3f} s (+ {decode_s:.3f} s decoding RLE) "
              f"(cIoU {mm.ciou(inter, union):.4f}, gIoU {mm.giou(inter, union):.4f})")


if __name__ == "__main__":
    main()
