"""Training-step throughput and MFU for the tiny and small presets on this machine.

    .venv/bin/python bench/bench_train.py [--presets tiny small] [--steps 3] [--threads N]

One step = forward + backward + AdamW over the trainable parameters, with the mixed precision of
DeepSpeed's bf16 engine (without its bookkeeping): the module in bf16, fp32 master weights in a
fused AdamW, gradients copied up and weights copied back each step; synthetic conversations. FLOPs of a step are counted by ``torch.utils.flop_counter`` over the real ops;
the peak is a large bf16 matmul timed in the same run; MFU = achieved / peak.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from segllm.batching import build_batch
from segllm.config import SegLLMConfig
from segllm.data_builders.synthetic import generate_conversations
from segllm.modeling.model import SegLLMModel
from segllm.train.objective import compute_objective


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n x n x n bf16 matmul."""
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def make_batch(model: SegLLMModel, batch_size: int, image_size: int):
    items = list(generate_conversations(batch_size, seed=0, image_size=image_size, min_rounds=2,
                                        max_rounds=3))
    return build_batch(items, model.tokenizer, model.config)


class MasterWeights:
    """fp32 copies of a bf16 module's trainable weights and a fused AdamW over them."""

    def __init__(self, model, lr: float = 1e-4):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        self.optimizer = torch.optim.AdamW(self.master, lr=lr, fused=True)

    def step(self) -> None:
        for p, m in zip(self.params, self.master, strict=True):
            m.grad = p.grad.float()
            p.grad = None
        self.optimizer.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master, strict=True):
                p.copy_(m)


def train_step(model, optimizer: MasterWeights, batch) -> None:
    compute_objective(model, batch).loss.backward()
    optimizer.step()


def bench_preset(name: str, batch_size: int, steps: int, image_size: int) -> dict:
    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name(name)).to(torch.bfloat16)
    optimizer = MasterWeights(model)
    batch = make_batch(model, batch_size, image_size).to("cpu", torch.bfloat16)
    counter = FlopCounterMode(display=False)
    with counter:
        train_step(model, optimizer, batch)
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(model, optimizer, batch)
        times.append(time.perf_counter() - start)
    step = min(times)
    return {"preset": name, "params": model.parameter_counts()["all"]["total"],
            "tokens": int(batch.attention_mask.sum()), "flops": flops, "step_s": step,
            "samples_per_s": batch_size / step, "flops_per_s": flops / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_peak()
    print(f"threads {torch.get_num_threads()}, bf16 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'preset':7} {'params':>9} {'tokens':>6} {'GFLOP/step':>10} {'step s':>7} "
          f"{'samples/s':>9} {'GFLOP/s':>8} {'MFU':>6}")
    for name in args.presets:
        r = bench_preset(name, args.batch_size, args.steps, args.image_size)
        print(f"{name:7} {r['params'] / 1e6:>8.1f}M {r['tokens']:>6} {r['flops'] / 1e9:>10.2f} "
              f"{r['step_s']:>7.3f} {r['samples_per_s']:>9.2f} {r['flops_per_s'] / 1e9:>8.1f} "
              f"{r['flops_per_s'] / peak:>6.3f}")


if __name__ == "__main__":
    main()
