"""Forward+backward time of one 3-round conversation (with references) per preset, on this CPU.

    .venv/bin/python bench/bench_model.py [--presets tiny small] [--steps 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segllm.batching import build_batch  # noqa: E402
from segllm.config import SegLLMConfig  # noqa: E402
from segllm.modeling.model import SegLLMModel  # noqa: E402
from segllm.train.objective import compute_objective
from tests.conftest import make_conversation  # noqa: E402


def bench(preset: str, steps: int, image: int) -> dict:
    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name(preset))
    model.train()
    batch = build_batch([make_conversation("bench", image, image, seed=0)], model.tokenizer,
                        model.config)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        t0 = time.perf_counter()
        out = compute_objective(model, batch)
        out.loss.backward()
        for p in params:
            p.grad = None
        if step:
            times.append(time.perf_counter() - t0)
    return {"preset": preset, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "tokens": batch.input_ids.shape[1], "median_s": statistics.median(times),
            "min_s": min(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--image", type=int, default=64, help="original image side in pixels")
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, numpy {np.__version__}")
    print(f"{'preset':<8}{'params':>10}{'tokens':>8}{'fwd+bwd median':>16}{'min':>10}")
    for preset in args.presets:
        r = bench(preset, args.steps, args.image)
        print(f"{r['preset']:<8}{r['params_M']:>9.1f}M{r['tokens']:>8}"
              f"{r['median_s'] * 1e3:>14.1f}ms{r['min_s'] * 1e3:>8.1f}ms")


if __name__ == "__main__":
    main()
