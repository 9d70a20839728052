"""Speed of the data builders.

    python bench/bench_data.py                      # both benchmarks
    python bench/bench_data.py --only synthetic --num 5000

1. Synthetic: conversations/s written by ``write_synthetic`` (64 px scenes, 3 to 8 rounds,
   PNG + MRSeg JSONL + GCG JSONL), with 1 and 2 worker processes. Target: >= 500/s.
2. RefCOCO: seconds for the RefCOCO builder (load + build + validate + write) over a
   refer-format data set of ``--expressions`` referring expressions (default 50 000, made up
   here: 640x480 images, 8 polygon annotations each, 4 referred with 2 sentences). Target: < 60 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import random
import tempfile
import time

from segllm.data_builders.refcoco import RefCocoBuilder
from segllm.data_builders.synthetic import write_synthetic


def bench_synthetic(num: int, workers: int, workdir: str | None) -> float:
    with tempfile.TemporaryDirectory(dir=workdir) as out:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        stats = write_synthetic(out, num=num, seed=0, image_size=64, min_rounds=3, max_rounds=8, workers=workers)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    rate = stats.written / elapsed
    rounds = sum(stats.rounds_per_type.values())
    # CPU seconds too: the 2 cores are shared, and wall time alone says more about the neighbours
    print(f"synthetic  workers={workers}: {stats.written} conversations ({rounds} rounds) in {elapsed:.2f} s "
          f"= {rate:.0f} conversations/s (CPU {cpu:.2f} s = {stats.written / cpu:.0f} conversations per CPU-second, "
          f"load average {os.getloadavg()[0]:.1f})")
    return rate


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _polygon(rng: random.Random, cx: float, cy: float, r: float, points: int = 16) -> list[float]:
    coords = []
    for i in range(points):
        angle = 2 * math.pi * i / points
        radius = r * rng.uniform(0.7, 1.0)
        coords += [round(cx + radius * math.cos(angle), 2), round(cy + radius * math.sin(angle), 2)]
    return coords


def make_refer_folder(folder: str, expressions: int, seed: int = 0) -> None:
    """A refer-layout folder (refs(unc).p + instances.json) with ``expressions`` sentences."""
    rng = random.Random(seed)
    refs_per_image, sentences_per_ref, anns_per_image = 4, 2, 8
    n_images = math.ceil(expressions / (refs_per_image * sentences_per_ref))
    images, anns, refs = [], [], []
    ann_id = ref_id = sent_id = 0
    for image_id in range(1, n_images + 1):
        images.append({"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": 480, "width": 640})
        split = "train" if image_id % 10 else "val"
        for a in range(anns_per_image):
            ann_id += 1
            cx, cy, r = rng.uniform(60, 580), rng.uniform(60, 420), rng.uniform(20, 55)
            poly = _polygon(rng, cx, cy, r)
            xs, ys = poly[0::2], poly[1::2]
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1 + a % 4, "iscrowd": 0,
                         "segmentation": [poly], "area": 3.0 * r * r,
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
            if a < refs_per_image:
                ref_id += 1
                sentences = []
                for _ in range(sentences_per_ref):
                    sent_id += 1
                    text = rng.choice(["man on the left", "blue car", "the dog near the door", "woman in red"])
                    sentences.append({"sent": text, "raw": text, "tokens": text.split(), "sent_id": sent_id})
                refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": 1 + a % 4,
                             "split": split, "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                             "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"})
    categories = [{"id": i, "name": n} for i, n in enumerate(["person", "car", "dog", "chair"], start=1)]
    with open(os.path.join(folder, "refs(unc).p"), "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    with open(os.path.join(folder, "instances.json"), "w") as handle:
        json.dump({"images": images, "annotations": anns, "categories": categories}, handle)


def bench_refcoco(expressions: int, workdir: str | None) -> float:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = os.path.join(tmp, "refcoco")
        os.makedirs(folder)
        make_refer_folder(folder, expressions)
        for split in ("train", "val"):
            start = time.perf_counter()
            builder = RefCocoBuilder(folder, dataset="refcoco", split=split, rounds=4, seed=0)
            in_split = sum(len(r["sentences"]) for r in builder.refs if r["split"] == split)
            stats = builder.build(os.path.join(tmp, f"{split}.jsonl"))
            elapsed = time.perf_counter() - start
            print(f"refcoco {split:5s}: {in_split} of {expressions} expressions -> {stats.written} conversations, "
                  f"{sum(stats.rounds_per_type.values())} rounds in {elapsed:.2f} s")
        # the whole file: train and val expressions together, as the 50 000 target means
        start = time.perf_counter()
        for split in ("train", "val"):
            RefCocoBuilder(folder, dataset="refcoco", split=split, rounds=4, seed=0).build(
                os.path.join(tmp, f"{split}.jsonl"))
        total = time.perf_counter() - start
    print(f"refcoco all  : {expressions} expressions in {total:.2f} s (target < 60 s)")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["synthetic", "refcoco"], default=None)
    parser.add_argument("--num", type=int, default=3000, help="synthetic conversations")
    parser.add_argument("--expressions", type=int, default=50_000, help="RefCOCO expressions")
    parser.add_argument("--workdir", default=os.path.expanduser("~/.cache/segllm-bench"),
                        help="where the temporary outputs go (creating files under /tmp was 10-20x "
                             "slower than under ~/.cache on the project machine)")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.only in (None, "synthetic"):
        bench_synthetic(args.num, workers=1, workdir=args.workdir)
        bench_synthetic(args.num, workers=2, workdir=args.workdir)
    if args.only in (None, "refcoco"):
        bench_refcoco(args.expressions, workdir=args.workdir)


if __name__ == "__main__":
    main()
