"""``segllm info PRESET``: a preset's components and parameter counts.

Real-size presets are built on the meta device, so this needs no memory for the weights.
"""

from __future__ import annotations

import argparse
import json

import torch

from ..config import PRESETS, SegLLMConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", choices=sorted(PRESETS), help="preset name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from ..modeling.decoders import decoder_class
    from ..modeling.model import SegLLMModel

    config = SegLLMConfig.from_name(args.preset)
    with torch.device("meta"):
        model = SegLLMModel.from_config(config)
    counts = model.parameter_counts()
    if args.json:
        print(json.dumps({"preset": args.preset, "parameters": counts}, indent=2))
        return 0
    c = config
    print(f"preset {args.preset}")
    print(f"  vision tower  CLIP ViT {c.vision.hidden_size}d x{c.vision.num_hidden_layers}, "
          f"{c.vision.image_size}px / patch {c.vision.patch_size} -> "
          f"{c.vision.num_image_tokens} image tokens")
    projector = ("Linear" if c.projector.kind == "linear"
                 else f"Linear-{c.projector.hidden_act}-Linear")
    print(f"  projector     {projector}")
    print(f"  LLM           Llama {c.llm.hidden_size}d x{c.llm.num_hidden_layers}, "
          f"vocab {c.llm.vocab_size}, trained: {c.trainable.llm}"
          + (f" (LoRA r={c.lora.r} alpha={c.lora.alpha} on {','.join(c.lora.target_modules)})"
             if c.trainable.llm == "lora" else ""))
    print(f"  mask decoder  {c.decoder}: {decoder_class(c.decoder).describe(c.decoder_config)}")
    print(f"  mask encoder  {'on' if c.mask_encoder.enabled else 'off'}")
    print(f"  loss          CE x{c.loss.ce_weight} + "
          f"{decoder_class(c.decoder).describe_loss(c.decoder_config, c.loss)}")
    print()
    print(f"{'component':<22}{'parameters':>16}{'trainable':>16}")
    for name, row in counts.items():
        print(f"{name:<22}{row['total']:>16,}{row['trainable']:>16,}")
    return 0
