"""The HIPIE-style decoder beside SAM ViT-H, the swap the SegLLM paper makes to cut training
cost: parameters and one forward's time on this CPU (random weights, same run, same input
size), then the ``segllm-7b-hipie`` preset's parameter counts on the meta device.

    nice -n 19 .venv/bin/python bench/bench_hipie.py [--size 1024] [--prompts 3] [--threads 1]
    nice -n 19 .venv/bin/python bench/bench_hipie.py --memory --size 512 --prompts 3

Timings are for comparing the two decoders measured in this run; on a shared CPU they are
noisy, and a smaller ``--size`` (e.g. 512) keeps SAM ViT-H's forward short. Both decoders
take ``--size`` px inputs (SAM's positional embeddings are built for that size).

``--memory``: the peak memory that decoding adds over the kept image features (Linux: the
process's peak resident size, reset through ``/proc/self/clear_refs`` after encoding), for
inference (``decode``: the best query's mask only) and for the training path
(``decode_for_training``: every query's masks of every layer, as ``decode`` kept them before).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segllm.config import SegLLMConfig  # noqa: E402
from segllm.modeling.decoders import build_decoder  # noqa: E402
from segllm.modeling.decoders.sam import SAMConfig, build_sam  # noqa: E402
from segllm.modeling.model import SegLLMModel  # noqa: E402


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hipie_forward(size: int, prompts: int) -> dict:
    """HIPIE-R50 (the preset's sizes at ``size`` px): image encoding, then decoding."""
    config = SegLLMConfig.from_name("segllm-7b-hipie", **{"decoder_config.image_size": size})
    decoder = build_decoder(config).eval()
    pixels = torch.randn(1, 3, size, size)
    tokens = torch.randn(prompts, config.seg_head.num_prompt_tokens, decoder.prompt_dim)
    features = {}
    with torch.no_grad():
        encode = timed(lambda: features.update(x=decoder.encode_image(pixels)))
        decode = timed(lambda: decoder.decode(features["x"], tokens, (size, size), (size, size)))
    return {"name": "HIPIE-R50 (ours)", "params": count(decoder), "encode_s": encode,
            "decode_s": decode}


def resident_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def decode_peak_memory(size: int, prompts: int) -> dict[str, float]:
    """Peak MB above the kept features while decoding ``prompts`` prompts, per path."""
    config = SegLLMConfig.from_name("segllm-7b-hipie", **{"decoder_config.image_size": size})
    decoder = build_decoder(config).eval()
    tokens = torch.randn(prompts, config.seg_head.num_prompt_tokens, decoder.prompt_dim)
    libc = ctypes.CDLL("libc.so.6")
    out = {}
    with torch.no_grad():
        features = decoder.encode_image(torch.randn(1, 3, size, size))
        paths = {"decode (inference)": decoder.decode,
                 "decode_for_training (every query's masks)": decoder.decode_for_training}
        for name, fn in paths.items():
            gc.collect()
            libc.malloc_trim(0)  # freed memory back to the OS, so the baseline is honest
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
            before = resident_mb("VmRSS")
            result = fn(features, tokens, (size, size), (size, size))
            out[name] = resident_mb("VmHWM") - before
            del result
    return out


def sam_forward(size: int, prompts: int) -> dict:
    """SAM ViT-H: image encoder, then the mask decoder with one sparse prompt per [SEG]."""
    sam = build_sam(replace(SAMConfig(), image_size=size)).eval()
    pixels = torch.randn(1, 3, size, size)
    features = {}
    with torch.no_grad():
        encode = timed(lambda: features.update(x=sam.image_encoder(pixels)))
        sparse = torch.randn(prompts, 1, 256)
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            prompts, -1, *features["x"].shape[-2:])
        decode = timed(lambda: sam.mask_decoder(
            image_embeddings=features["x"], image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False))
    return {"name": "SAM ViT-H", "params": count(sam), "encode_s": encode,
            "decode_s": decode}


def preset_counts() -> dict[str, int]:
    """Parameters of ``segllm-7b-hipie`` by part, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = SegLLMModel.from_config(SegLLMConfig.from_name("segllm-7b-hipie"))
    decoder = model.decoder
    counts = {f"decoder.{name}": count(part)
              for name, part in decoder.trainable_groups().items()}
    counts["decoder (all)"] = count(decoder)
    counts["trainable (all)"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts["model (all)"] = count(model)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="input side in px (multiple of 64)")
    parser.add_argument("--prompts", type=int, default=3, help="[SEG] prompts decoded")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sam", action="store_true", help="only the HIPIE decoder")
    parser.add_argument("--memory", action="store_true",
                        help="only the decoding paths' peak memory (Linux)")
    args = parser.parse_args()
    if args.size % 64:
        parser.error(f"--size {args.size} is not a multiple of 64")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory:
        print(f"# {args.size} px, {args.prompts} prompts, segllm-7b-hipie sizes, float32")
        print("| path | peak above the features (MB) | per prompt (MB) |")
        print("|---|---:|---:|")
        for name, mb in decode_peak_memory(args.size, args.prompts).items():
            print(f"| {name} | {mb:.1f} | {mb / args.prompts:.1f} |")
        return
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.size} px, {args.prompts} prompts, random weights")
    rows = [hipie_forward(args.size, args.prompts)]
    if not args.skip_sam:
        rows.append(sam_forward(args.size, args.prompts))
    print("| decoder | params (M) | image encoding (s) | decoding (s) | total (s) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        total = row["encode_s"] + row["decode_s"]
        print(f"| {row['name']} | {row['params'] / 1e6:.1f} | {row['encode_s']:.2f} | "
              f"{row['decode_s']:.2f} | {total:.2f} |")
    if len(rows) == 2:
        ours, sam = rows
        print(f"\nSAM ViT-H / ours: params x{sam['params'] / ours['params']:.1f}, "
              f"total time x{(sam['encode_s'] + sam['decode_s']) / (ours['encode_s'] + ours['decode_s']):.1f}")
    print("\n| segllm-7b-hipie (meta device) | params (M) |")
    print("|---|---:|")
    for name, value in preset_counts().items():
        print(f"| {name} | {value / 1e6:.1f} |")


if __name__ == "__main__":
    main()
