"""Training-step throughput and MFU for the tiny and small presets on this machine, and on a
training recipe's own data: padding fraction, MFU and the share of time spent waiting for data,
plain order against length bucketing (``data.bucket_steps``).

    .venv/bin/python bench/bench_train.py [--presets tiny small] [--steps 3] [--threads N]
        [--recipe configs/train/segllm-shapes.yaml] [--bucket-steps 16] [--recipe-steps 4]

One step = forward + backward + AdamW over the trainable parameters, with the mixed precision of
DeepSpeed's bf16 engine (without its bookkeeping): the module in bf16, fp32 master weights in a
fused AdamW, gradients copied up and weights copied back each step; synthetic conversations.
FLOPs of a step are counted by ``torch.utils.flop_counter`` over the real ops; the peak is a
large matmul timed in the same run; MFU = achieved / peak. The recipe table trains in the
recipe's dtype (fp32 for segllm-shapes: this CPU has no bf16 units) against that dtype's peak.
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


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.bfloat16) -> float:
    """Best FLOP/s of an n x n x n matmul in ``dtype``."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
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


def matmul_peaks() -> dict[torch.dtype, float]:
    """The fp32 and bf16 matmul peaks of this run: MFU is taken against the trained dtype's."""
    return {torch.float32: matmul_peak(dtype=torch.float32),
            torch.bfloat16: matmul_peak(dtype=torch.bfloat16)}


def recipe_data(config_path: str):
    """The recipe's model (random weights) and its training stream, as ``segllm train`` builds
    them (records read and checked, images read when a batch is encoded)."""
    from segllm.train.args import load_train_config
    from segllm.train.data import MixedConversations
    from segllm.train.model_setup import build_model

    config = load_train_config(config_path)
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    data = MixedConversations.from_args(config.data, config.seed, model.tokenizer, model.config)
    return config, model, data


def step_positions(config, data, steps: int, bucket_steps: int) -> list[list[int]]:
    """Stream positions of the first ``steps`` micro-batches (one process, no accumulation
    beyond the recipe's), in the plain order or bucketed."""
    from segllm.train.data import bucketed_positions, micro_batch_positions

    out = []
    for step in range(steps):
        for micro in range(config.gradient_accumulation_steps):
            args = (step, micro, 0, 1, config.micro_batch_size, config.gradient_accumulation_steps)
            out.append(bucketed_positions(data.length, *args, bucket_steps, data.seed)
                       if bucket_steps else micro_batch_positions(*args))
    return out


def padding_of(data, batches: list[list[int]]) -> float:
    """Share of token slots that are padding over ``batches`` (right-padded to each batch's
    longest sequence)."""
    slots = sum(len(b) * max(data.length(p) for p in b) for b in batches)
    return 1.0 - sum(data.length(p) for b in batches for p in b) / slots


def recipe_steps(model, data, batches: list[list[int]], dtype: torch.dtype) -> dict:
    """Train on ``batches`` (fp32 AdamW, or bf16 module + fp32 master weights); per batch the
    seconds to build it (reading images, encoding: what a step waits for with no DataLoader
    workers) and to train on it, and the FLOPs counted in a first, untimed pass."""
    from segllm.batching import collate

    model = model.to(dtype).train()
    optimizer = (MasterWeights(model) if dtype == torch.bfloat16 else
                 _Fp32Adam(model))
    pad = model.config.token_ids["pad"]
    totals = {"data_s": 0.0, "step_s": 0.0, "flops": 0, "tokens": 0, "slots": 0}
    for positions in batches:
        started = time.perf_counter()
        batch = collate([data.encode(p) for p in positions], pad).to("cpu", dtype)
        totals["data_s"] += time.perf_counter() - started
        counter = FlopCounterMode(display=False)
        with counter:
            train_step(model, optimizer, batch)
        started = time.perf_counter()
        train_step(model, optimizer, batch)
        totals["step_s"] += time.perf_counter() - started
        totals["flops"] += counter.get_total_flops()
        totals["tokens"] += int(batch.attention_mask.sum())
        totals["slots"] += batch.attention_mask.numel()
    return totals


class _Fp32Adam:
    """AdamW over an fp32 module's trainable weights (the recipe's DeepSpeed fp32 engine)."""

    def __init__(self, model, lr: float = 1e-4):
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr)

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def recipe_table(args) -> None:
    """Padding, MFU and data waiting on the recipe's own data, plain order vs bucketed."""
    config, model, data = recipe_data(args.recipe)
    dtype = torch.float32 if args.recipe_dtype == "fp32" else torch.bfloat16
    peaks = matmul_peaks()
    print(f"\n## recipe {args.recipe}: micro-batch {config.micro_batch_size} x accumulation "
          f"{config.gradient_accumulation_steps}, trained in {args.recipe_dtype}; matmul peaks "
          f"of this run: fp32 {peaks[torch.float32] / 1e9:.1f}, bf16 "
          f"{peaks[torch.bfloat16] / 1e9:.1f} GFLOP/s")
    orders = {"plain": 0, f"bucketed ({args.bucket_steps} steps)": args.bucket_steps}
    print(f"padding fraction over the first {args.padding_steps} steps:")
    for name, bucket in orders.items():
        print(f"  {name:<22} {padding_of(data, step_positions(config, data, args.padding_steps, bucket)):.3f}")
    print(f"training on the first {args.recipe_steps} batches of each order, alternating "
          "(FLOPs counted by torch.utils.flop_counter; useful = FLOPs x real / all token "
          "slots, as the LLM's work scales with tokens)")
    print(f"{'order':<22} {'pad':>5} {'step s':>7} {'tok/s':>7} {'GFLOP/s':>8} "
          f"{'MFU':>6} {'useful MFU':>10} {'data wait':>9}")
    results = {name: [] for name in orders}
    plans = {name: step_positions(config, data, args.recipe_steps, bucket)
             for name, bucket in orders.items()}
    for i in range(args.recipe_steps):  # alternate orders so machine load hits them alike
        for name in orders:
            results[name].append(recipe_steps(model, data, [plans[name][i]], dtype))
    later = matmul_peaks()  # the load changes while it runs: the best of both measurements
    peak = max(peaks[dtype], later[dtype])
    print(f"(peak used: {peak / 1e9:.1f} GFLOP/s, the best of the {args.recipe_dtype} peaks "
          f"measured before ({peaks[dtype] / 1e9:.1f}) and after ({later[dtype] / 1e9:.1f}))")
    for name, rows in results.items():
        t = {k: sum(r[k] for r in rows) for k in rows[0]}
        pad = 1 - t["tokens"] / t["slots"]
        rate = t["flops"] / t["step_s"]
        print(f"{name:<22} {pad:>5.3f} {t['step_s'] / len(rows):>7.3f} "
              f"{t['tokens'] / t['step_s']:>7.0f} {rate / 1e9:>8.1f} {rate / peak:>6.3f} "
              f"{rate * (1 - pad) / peak:>10.3f} "
              f"{t['data_s'] / (t['data_s'] + t['step_s']):>8.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--recipe", default="configs/train/segllm-shapes.yaml",
                        help="a training config whose data the padding / MFU table uses")
    parser.add_argument("--recipe-dtype", choices=["fp32", "bf16"], default="fp32",
                        help="the recipe's training dtype (segllm-shapes: fp32)")
    parser.add_argument("--bucket-steps", type=int, default=16)
    parser.add_argument("--padding-steps", type=int, default=200)
    parser.add_argument("--recipe-steps", type=int, default=4)
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--skip-presets", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.skip_recipe:
        recipe_table(args)
    if args.skip_presets:
        return
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
