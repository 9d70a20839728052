"""Multi-round inference on the ``small`` preset (random weights), on this CPU.

    .venv/bin/python bench/bench_inference.py [--rounds 8] [--answer "Sure, it is [SEG]."]
                                              [--repeats 3] [--skip-memory]

1. Latency per round of one conversation, with the KV cache and decoder features kept between
   rounds, and recomputing the whole history (image features included) every round, as LISA's
   chat and SegLLM's inference script do. Every round's answer is forced token by token to the
   same text, so both modes decode the same number of tokens and emit the same [SEG]; round r
   (r >= 1) refers to round r-1's mask. Goals: the conversation >= 5x faster with the cache, and
   round 8 <= 1.2x round 2.
2. Memory of the model in bf16 and with the LLM in 4 bits (NF4, bitsandbytes), each loaded in a
   fresh process: bytes of weights by component, and the process's resident memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segllm.config import SegLLMConfig  # noqa: E402
from segllm.modeling.model import SegLLMModel  # noqa: E402
from segllm.pipeline import ForcedTokens, GenerationConfig, SegLLMPipeline  # noqa: E402


def questions(rounds: int) -> list[str]:
    first = ["Segment the red square."]
    return first + [f"Segment the shape next to <ref:{r - 1}>." for r in range(1, rounds)]


def conversation_latency(pipeline, image, answer: str, rounds: int, reuse_cache: bool,
                         one_pass: bool = False) -> tuple[list[float], list[int]]:
    """Seconds per round and answer tokens per round. ``one_pass``: the answer is teacher-forced
    in the prefill (no decode steps), which isolates what the cache saves."""
    generation = GenerationConfig(max_new_tokens=64,
                                  logits_processors=(ForcedTokens.from_text(pipeline, answer),))
    started = time.perf_counter()
    session = pipeline.start(image, reuse_cache=reuse_cache, generation=generation)
    setup = time.perf_counter() - started  # decoder features, computed once (cache mode)
    times, tokens = [], []
    for i, question in enumerate(questions(rounds)):
        t0 = time.perf_counter()
        reply = session.ask(question, answer=answer if one_pass else None)
        times.append(time.perf_counter() - t0 + (setup if i == 0 else 0.0))
        tokens.append(len(reply.token_ids))
        assert len(reply.masks) == answer.count("[SEG]"), "the forced [SEG] must give a mask"
    return times, tokens


def latency_table(args, one_pass: bool = False) -> None:
    torch.manual_seed(0)
    model = SegLLMModel.from_config(SegLLMConfig.from_name("small"))
    pipeline = SegLLMPipeline(model)
    image = np.random.default_rng(0).integers(0, 255, size=(args.image, args.image, 3),
                                              dtype=np.uint8)
    conversation_latency(pipeline, image, args.answer, 2, True, one_pass)  # warm-up
    runs = {True: [], False: []}
    for _ in range(args.repeats):  # alternate modes so machine load hits both alike
        for mode in (True, False):
            runs[mode].append(conversation_latency(pipeline, image, args.answer, args.rounds,
                                                   mode, one_pass))
    tokens = runs[True][0][1]
    assert tokens == runs[False][0][1], "both modes must generate the same tokens"
    cached = [statistics.median(r[0][i] for r in runs[True]) for i in range(args.rounds)]
    full = [statistics.median(r[0][i] for r in runs[False]) for i in range(args.rounds)]
    session = pipeline.start(image)
    for q in questions(args.rounds):
        session.ask(q, answer=args.answer)
    how = ("answer teacher-forced in one pass (no decode steps)" if one_pass
           else "answer decoded token by token")
    print(f"\n## latency per round, {how} (median of {args.repeats}), small preset "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"image {args.image}x{args.image}, answer {args.answer!r} "
          f"({tokens[0]} generated tokens a round); history after {args.rounds} rounds: "
          f"{len(session.token_ids)} tokens")
    print(f"{'round':>5} {'answer tok':>10} {'cached ms':>10} {'recompute ms':>13} {'speed-up':>9}")
    for i in range(args.rounds):
        print(f"{i + 1:>5} {tokens[i]:>10} {cached[i] * 1e3:>10.1f} {full[i] * 1e3:>13.1f} "
              f"{full[i] / cached[i]:>8.2f}x")
    total_c, total_f = sum(cached), sum(full)
    print(f"whole conversation: cached {total_c * 1e3:.0f} ms, recompute {total_f * 1e3:.0f} ms: "
          f"{total_f / total_c:.2f}x faster with the cache (goal >= 5x)")
    print(f"round 8 / round 2 with the cache: {cached[-1] / cached[1]:.2f} (goal <= 1.2); "
          f"recomputing: {full[-1] / full[1]:.2f}")


MEMORY_CHILD = r"""
import gc, json, resource, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from segllm.pipeline import SegLLMPipeline
from segllm.quantization import memory_by_component
import numpy as np
kind = sys.argv[2]
kw = {"dtype": "bf16"} if kind == "bf16" else {"dtype": "bf16", "load_in_4bit": True}
pipeline = SegLLMPipeline.from_pretrained(sys.argv[1], **kw)
image = np.zeros((64, 64, 3), dtype=np.uint8)
pipeline.start(image).ask("Segment the red square.", answer="Sure, [SEG].")
gc.collect()
rss = int(open("/proc/self/statm").read().split()[1]) * 4096
print(json.dumps({"components": memory_by_component(pipeline.model), "rss": rss,
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def memory_table() -> None:
    torch.manual_seed(0)
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        SegLLMModel.from_config(SegLLMConfig.from_name("small")).save_pretrained(Path(tmp) / "m")
        results = {}
        for kind in ("bf16", "4bit"):
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(Path(tmp) / "m"), kind,
                                  str(root)], capture_output=True, text=True, check=True)
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    print("\n## memory of the small preset on CPU (weights by component; decoder kept in fp32)")
    print(f"{'component':<20} {'bf16 MiB':>9} {'4-bit LLM MiB':>14}")
    for name in results["bf16"]["components"]:
        a, b = results["bf16"]["components"][name], results["4bit"]["components"][name]
        print(f"{name:<20} {a / mib:>9.1f} {b / mib:>14.1f}")
    lm_a = results["bf16"]["components"]["language_model"]
    lm_b = results["4bit"]["components"]["language_model"]
    print(f"language model: {lm_b / lm_a:.2f}x of bf16; whole model "
          f"{results['4bit']['components']['all'] / results['bf16']['components']['all']:.2f}x")
    for kind in ("bf16", "4bit"):
        r = results[kind]
        print(f"process RSS after one round, {kind}: {r['rss'] / mib:.0f} MiB "
              f"(peak {r['peak_rss'] / mib:.0f} MiB, loading included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--answer", default="Sure, it is [SEG].")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", type=int, default=256, help="image side in pixels")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable figures on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {_load()}")
    latency_table(args)
    latency_table(args, one_pass=True)
    if not args.skip_memory:
        memory_table()


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
