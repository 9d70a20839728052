"""Multi-round inference on the ``small`` preset (random weights), on this CPU.

    .venv/bin/python bench/bench_inference.py [--rounds 8] [--answer "Sure, it is [SEG]."]
                                              [--repeats 3] [--sessions 1 4 16] [--skip-memory]

1. The decode step against its physical limit (``decode_bound.py``): weight bytes read per
   step over the memory bandwidth of a large copy measured in the same run, for fp32, bf16 and
   the int8 dynamic path (``SegLLMPipeline.from_pretrained(..., int8_dynamic=True)``).
2. Latency per round of one conversation, with the KV cache and decoder features kept between
   rounds, and recomputing the whole history (image features included) every round, as LISA's
   chat and SegLLM's inference script do; at the preset's 64 image tokens and at LLaVA's real
   576 (336 px / patch 14, ``--image-tokens``). Every round's answer is forced token by token to
   the same text, so both modes decode the same number of tokens and emit the same [SEG]; round
   r (r >= 1) refers to round r-1's mask. The cached path runs twice: with the growing KV cache
   (``segllm.inference.kv_cache``) and with transformers' ``DynamicCache``, the one it replaced
   ("before"). Goals: the conversation >= 5x faster with the cache, round 8 <= 1.1x round 2.
3. Time to first mask (``start`` + ``ask`` until the reply holds the first [SEG] mask; then a
   later round's ``ask``), and ``ask_batch`` conversations per second at 1, 4 and 16 sessions.
4. Memory of the model in bf16 and with the LLM in 4 bits (NF4, bitsandbytes), each loaded in a
   fresh process: bytes of weights by component, and the process's resident memory.

On a shared machine only the ratios measured inside one run mean much: modes alternate so that
load hits them alike, and the bandwidth is measured right before each decode measurement.
"""

from __future__ import annotations

import argparse
import contextlib
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
from decode_bound import decode_bound_rows  # noqa: E402

import segllm.inference.engine as engine_module  # noqa: E402
from segllm.config import SegLLMConfig  # noqa: E402
from segllm.dtypes import cpu_has_native_bf16  # noqa: E402
from segllm.inference.dynamic_int8 import quantize_language_model_int8  # noqa: E402
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


def small_model(image_tokens: int) -> SegLLMModel:
    """The ``small`` preset (random weights) with ``image_tokens`` image tokens (a square
    number: CLIP's input side is sqrt(image_tokens) patches of 14 px)."""
    side = round(image_tokens ** 0.5)
    if side * side != image_tokens:
        raise SystemExit(f"--image-tokens must be a square number, got {image_tokens}")
    torch.manual_seed(0)
    return SegLLMModel.from_config(SegLLMConfig.from_name(
        "small", vision={"image_size": side * 14, "patch_size": 14}))


@contextlib.contextmanager
def previous_cache():
    """Run the engine on transformers' ``DynamicCache`` (torch.cat every step): the "before"."""
    from transformers import DynamicCache

    saved = engine_module.growing_cache
    engine_module.growing_cache = lambda num_layers, data=None: (
        DynamicCache(ddp_cache_data=data) if data else DynamicCache())
    try:
        yield
    finally:
        engine_module.growing_cache = saved


MODES = {  # name -> (reuse_cache, engine cache)
    "cached": (True, contextlib.nullcontext),
    "cached, DynamicCache (before)": (True, previous_cache),
    "recompute": (False, contextlib.nullcontext),
}


def latency_table(args, pipeline, image_tokens: int, one_pass: bool = False) -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(args.image, args.image, 3),
                                              dtype=np.uint8)
    conversation_latency(pipeline, image, args.answer, 2, True, one_pass)  # warm-up
    runs = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # alternate modes so machine load hits them alike
        for mode, (reuse, cache) in MODES.items():
            with cache():
                runs[mode].append(conversation_latency(pipeline, image, args.answer,
                                                       args.rounds, reuse, one_pass))
    tokens = runs["cached"][0][1]
    assert all(r[0][1] == tokens for r in runs.values()), "every mode generates the same tokens"
    # the fastest of the repeats: on a shared machine the least disturbed by other load
    med = {mode: [min(r[0][i] for r in runs[mode]) for i in range(args.rounds)]
           for mode in MODES}
    cached, before, full = med["cached"], med["cached, DynamicCache (before)"], med["recompute"]
    session = pipeline.start(image)
    for q in questions(args.rounds):
        session.ask(q, answer=args.answer)
    how = ("answer teacher-forced in one pass (no decode steps)" if one_pass
           else "answer decoded token by token")
    model = pipeline.model
    print(f"\n## latency per round, {how} (fastest of {args.repeats}), small preset "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params), "
          f"{image_tokens} image tokens, image {args.image}x{args.image}, answer "
          f"{args.answer!r} ({tokens[0]} generated tokens a round); history after "
          f"{args.rounds} rounds: {len(session.token_ids)} tokens")
    print(f"{'round':>5} {'answer tok':>10} {'cached ms':>10} {'before ms':>10} "
          f"{'recompute ms':>13} {'speed-up':>9}")
    for i in range(args.rounds):
        print(f"{i + 1:>5} {tokens[i]:>10} {cached[i] * 1e3:>10.1f} {before[i] * 1e3:>10.1f} "
              f"{full[i] * 1e3:>13.1f} {full[i] / cached[i]:>8.2f}x")
    total_c, total_b, total_f = sum(cached), sum(before), sum(full)
    print(f"whole conversation: cached {total_c * 1e3:.0f} ms (DynamicCache before: "
          f"{total_b * 1e3:.0f} ms, {total_b / total_c:.2f}x slower), recompute "
          f"{total_f * 1e3:.0f} ms: {total_f / total_c:.2f}x faster with the cache "
          f"(before: {total_f / total_b:.2f}x; goal >= 5x)")
    print(f"round {args.rounds} / round 2 with the cache: {cached[-1] / cached[1]:.2f} "
          f"(before: {before[-1] / before[1]:.2f}; goal <= 1.1); recomputing: "
          f"{full[-1] / full[1]:.2f}")


def decode_table(args) -> None:
    model = small_model(64).eval()
    rows = decode_bound_rows(model, context=args.context)
    print(f"\n## decode step vs its memory-bandwidth floor, small preset LLM, batch 1, "
          f"{args.context} cached tokens (median of 3 rounds; bandwidth: a 128 MiB copy, "
          "read + written bytes, measured before each variant's steps)")
    print(f"{'variant':<13} {'weights MB':>10} {'GB/s':>6} {'floor ms':>9} {'step ms':>8} "
          f"{'step/floor':>10} {'vs fp32':>8}")
    fp32 = rows[0]["step_s"]
    for r in rows:
        print(f"{r['variant']:<13} {r['weight_bytes'] / 1e6:>10.1f} {r['bandwidth'] / 1e9:>6.1f} "
              f"{r['floor_s'] * 1e3:>9.1f} {r['step_s'] * 1e3:>8.1f} {r['ratio']:>9.2f}x "
              f"{fp32 / r['step_s']:>7.2f}x")
    print("(goal: a step within 1.3x of its floor in bf16; bf16 needs the CPU's bf16 units "
          f"(native here: {cpu_has_native_bf16()}), without them oneDNN converts to fp32)")


def first_mask_table(args, pipelines: dict[str, SegLLMPipeline], image_tokens: int) -> None:
    """Seconds from ``start`` + ``ask`` to the reply with the first mask, then a later round."""
    image = np.random.default_rng(1).integers(0, 255, size=(args.image, args.image, 3),
                                              dtype=np.uint8)
    print(f"\n## time to first mask, {image_tokens} image tokens (median of {args.repeats}; "
          "answer decoded token by token)")
    print(f"{'model':<13} {'start ms':>9} {'round 1 ms':>10} {'first mask ms':>13} "
          f"{'round 2 ms':>10}")
    samples = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            generation = GenerationConfig(logits_processors=(
                ForcedTokens.from_text(pipeline, args.answer),))
            t0 = time.perf_counter()
            session = pipeline.start(image, generation=generation)
            t1 = time.perf_counter()
            reply = session.ask(questions(1)[0])
            t2 = time.perf_counter()
            assert reply.masks, "the forced [SEG] must give a mask"
            session.ask(questions(2)[1])
            samples[name].append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    for name, rows in samples.items():
        start, first, second = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"{name:<13} {start * 1e3:>9.0f} {first * 1e3:>10.0f} "
              f"{(start + first) * 1e3:>13.0f} {second * 1e3:>10.0f}")


def batch_conversations(pipeline: SegLLMPipeline, images: list[np.ndarray], rounds: int,
                        generation: GenerationConfig) -> float:
    """Seconds for ``len(images)`` conversations of ``rounds`` rounds through ``ask_batch``,
    the sessions opened together (``start_batch``) inside the timing."""
    start = time.perf_counter()
    sessions = pipeline.start_batch(images, generation=generation)
    for question in questions(rounds):
        replies = pipeline.ask_batch([(s, question) for s in sessions])
        assert all(r.masks for r in replies), "every forced [SEG] must give a mask"
    return time.perf_counter() - start


def batch_table(args, pipeline: SegLLMPipeline, image_tokens: int) -> None:
    """Conversations per second through ``ask_batch``: every session answers ``--batch-rounds``
    rounds, all sessions in one batched run a round (sessions opened inside the timing)."""
    generation = GenerationConfig(logits_processors=(ForcedTokens.from_text(pipeline,
                                                                            args.answer),))
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, size=(args.image, args.image, 3), dtype=np.uint8)
              for _ in range(max(args.sessions))]
    batch_conversations(pipeline, images[:2], 1, generation)  # warm-up (first-call costs)
    print(f"\n## ask_batch, {args.batch_rounds} rounds a conversation, {image_tokens} image "
          "tokens (conversations/s, session start included)")
    print(f"{'sessions':>8} {'seconds':>8} {'conv/s':>7} {'vs 1':>6}")
    base = None
    for count in args.sessions:
        seconds = batch_conversations(pipeline, images[:count], args.batch_rounds, generation)
        rate = count / seconds
        base = base or rate
        print(f"{count:>8} {seconds:>8.1f} {rate:>7.2f} {rate / base:>5.2f}x")


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
    ap.add_argument("--image-tokens", type=int, nargs="+", default=[64, 576],
                    help="image tokens of the history benchmark (64: the preset; 576: LLaVA's)")
    ap.add_argument("--context", type=int, default=256, help="cached tokens of a decode step")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--batch-rounds", type=int, default=2)
    ap.add_argument("--only", nargs="+", default=["decode", "history", "first-mask", "batch"],
                    choices=["decode", "history", "first-mask", "batch"])
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable figures on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {_load()}")
    if "decode" in args.only:
        decode_table(args)
    for image_tokens in args.image_tokens:
        pipeline = SegLLMPipeline(small_model(image_tokens))
        if "history" in args.only:
            latency_table(args, pipeline, image_tokens)
            latency_table(args, pipeline, image_tokens, one_pass=True)
        if "first-mask" in args.only:
            int8 = SegLLMPipeline(small_model(image_tokens))
            quantize_language_model_int8(int8.model)
            first_mask_table(args, {"fp32": pipeline, "int8 dynamic": int8}, image_tokens)
        if "batch" in args.only:
            batch_table(args, pipeline, image_tokens)
    if not args.skip_memory:
        memory_table()
    print(f"# load average at the end {_load()}")


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


if __name__ == "__main__":
    main()
