"""``segllm convert {lisa,glamm,segllm} SRC OUT``: a published checkpoint -> a segllm model folder.

The output is what ``SegLLMModel.save_pretrained`` writes (weights, config, tokenizer), plus
``convert_report.json``: how many tensors of each source were mapped and every dropped key
with its reason. ``segllm chat --model OUT`` and ``segllm eval ... --model OUT`` then use it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SYSTEMS = ("lisa", "glamm", "segllm")
REPORT_NAME = "convert_report.json"

# Why a system cannot be converted yet (exit 2 with this message).
NOT_SUPPORTED = {
    "segllm": (
        "SegLLM's release cannot be converted faithfully yet: its decoder is HIPIE's own "
        "architecture (CondInst dynamic-convolution mask head, text fused in the deformable "
        "encoder, VL_Align class head), while segllm's 'hipie' decoder shares only HIPIE's "
        "skeleton; segllm/modeling/decoders/hipie_checkpoint.py loads HIPIE's weights but "
        "leaves those parts at their initialisation, so a converted SegLLM would not give "
        "SegLLM's masks."),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", choices=SYSTEMS, help="which system's checkpoint SRC is")
    parser.add_argument("src", type=Path, help="the checkpoint folder (Hugging Face layout)")
    parser.add_argument("out", type=Path, help="the segllm model folder to write")
    parser.add_argument("--vision-tower", type=Path, default=None,
                        help="local copy of the CLIP folder the checkpoint names, when the "
                             "checkpoint leaves CLIP out (LISA: openai/clip-vit-large-patch14; "
                             "GLaMM: openai/clip-vit-large-patch14-336)")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="store the weights in this dtype (default: as the source)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..convert.source import ConvertError
    from ..dtypes import parse_dtype
    from ..files import atomic_write
    from ..modeling.loading import CheckpointError

    if args.system in NOT_SUPPORTED:
        print(f"error: {NOT_SUPPORTED[args.system]}", file=sys.stderr)
        return 2
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if not args.src.is_dir():
        print(f"error: {args.src}: not a checkpoint folder", file=sys.stderr)
        return 2
    try:
        model, report = convert_system(args.system, args.src, vision_tower=args.vision_tower,
                                       dtype=parse_dtype(args.dtype))
    except (ConvertError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model.save_pretrained(args.out)
    with atomic_write(args.out / REPORT_NAME) as f:
        f.write(json.dumps(report, indent=2) + "\n")
    for part in ("checkpoint", "vision_tower"):
        if part in report:
            row = report[part]
            dropped = sum(len(keys) for keys in row["dropped"].values())
            print(f"{row['source']}: {row['tensors']} tensors, {row['mapped']} mapped, "
                  f"{dropped} dropped on purpose")
    print(f"wrote {args.out} (preset {report['preset']}; details in {REPORT_NAME})")
    return 0


def convert_system(system: str, src: Path, **kwargs):
    """(model, report) for one of the supported systems."""
    if system == "lisa":
        from ..convert.lisa import convert

        return convert(src, **kwargs)
    if system == "glamm":
        from ..convert.glamm import convert

        return convert(src, **kwargs)
    raise ValueError(f"no converter for {system!r}")
