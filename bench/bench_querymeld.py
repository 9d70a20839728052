"""The query-meld decoder: its size and forward time beside the HIPIE-style decoder and SAM
ViT-H, and the three query strategies' mask AP after equal short training.

    nice -n 19 .venv/bin/python bench/bench_querymeld.py [--size 1024] [--steps 240] [--skip-sam]

1. Parameters and one forward (random weights, one thread, same run, same input size) of the
   ``segllm-7b-querymeld`` decoder (ResNet-50, 100 learnable + 300 conditional queries, 9
   layers), the ``segllm-7b-hipie`` decoder (100 conditional queries, 6 layers) and SAM ViT-H, each
   prompted by ``--prompts`` [SEG] prompts of 8 x 768 (SAM: one 256-d sparse token each).
   Times are CPU seconds of the one thread. At ``--size 1024`` this takes minutes on a
   2-core CPU; a smaller size keeps it short.
2. The strategies (learnable 12, conditional 12, meld 4 + 8 queries: equal totals, as the
   paper's Table 2) trained ``--steps`` steps each on the same synthetic multi-task scenes
   (``data_builders/synthetic_multitask.py``, frozen tiny backbone, same seed and order), then
   mask AP on held-out panoptic scenes (``QueryMeldDecoder.instances``: the best (query,
   text) pairs, and beside it the AP when each query answers only its best text) and the
   query-type statistic.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segllm.config import SegLLMConfig  # noqa: E402
from segllm.data_builders.synthetic_multitask import write_synthetic_multitask  # noqa: E402
from segllm.modeling.decoders import build_decoder  # noqa: E402
from segllm.modeling.decoders.query.text import HashedWordsEncoder  # noqa: E402
from segllm.modeling.decoders.querymeld import QueryMeldDecoder  # noqa: E402
from segllm.modeling.decoders.sam import SAMConfig, build_sam  # noqa: E402
from segllm.train.args import SourceArgs  # noqa: E402
from segllm.train.decoder_training import (  # noqa: E402
    evaluate,
    fit_with_frozen_backbone,
    forward,
)
from segllm.train.unified_data import (  # noqa: E402
    UnifiedSource,
    evaluation_examples,
    make_example,
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed(fn) -> float:
    """CPU seconds of ``fn`` (one thread): on a CPU shared with other work, wall time measures
    the neighbours too."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def query_decoder_forward(preset: str, name: str, size: int, prompts: int) -> dict:
    """A query decoder at its preset's sizes and ``size`` px: image encoding, then decoding."""
    config = SegLLMConfig.from_name(preset, **{"decoder_config.image_size": size})
    decoder = build_decoder(config).eval()
    pixels = torch.randn(1, 3, size, size)
    tokens = torch.randn(prompts, config.seg_head.num_prompt_tokens, decoder.prompt_dim)
    features = {}
    with torch.no_grad():
        encode = timed(lambda: features.update(x=decoder.encode_image(pixels)))
        decode = timed(lambda: decoder.decode(features["x"], tokens, (size, size), (size, size)))
    parts = {group: count(module) for group, module in decoder.trainable_groups().items()}
    return {"name": name, "params": count(decoder), "parts": parts, "encode_s": encode,
            "decode_s": decode}


def sam_forward(size: int, prompts: int) -> dict:
    """SAM ViT-H: image encoder, then the mask decoder with one sparse prompt per [SEG]."""
    sam = build_sam(replace(SAMConfig(), image_size=size)).eval()
    pixels = torch.randn(1, 3, size, size)
    features = {}
    with torch.no_grad():
        encode = timed(lambda: features.update(x=sam.image_encoder(pixels)))
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            prompts, -1, *features["x"].shape[-2:])
        decode = timed(lambda: sam.mask_decoder(
            image_embeddings=features["x"], image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=torch.randn(prompts, 1, 256),
            dense_prompt_embeddings=dense, multimask_output=False))
    return {"name": "SAM ViT-H", "params": count(sam), "parts": {}, "encode_s": encode,
            "decode_s": decode}


def strategy_row(strategy: str, train_path: Path, val_path: Path, steps: int, lr: float) -> dict:
    torch.manual_seed(0)
    config = SegLLMConfig.from_name("querymeld-tiny", mask_aware_decoding=False,
                                    **{"decoder_config.query_strategy": strategy})
    decoder = build_decoder(config)
    decoder.requires_grad_(True)
    text_encoder = HashedWordsEncoder(dim=decoder.prompt_dim)
    source = UnifiedSource.from_args(SourceArgs(path=str(train_path)))
    train = [make_example(source, i, QueryMeldDecoder, decoder.config)
             for i in range(len(source.records))]
    held_out = evaluation_examples(str(val_path), None, 10_000, QueryMeldDecoder,
                                   decoder.config)
    started = time.process_time()
    fit_with_frozen_backbone(decoder, text_encoder, train, steps=steps, lr=lr)
    elapsed = time.process_time() - started
    return {"strategy": strategy, "queries": (decoder.predictor.num_learnable,
                                              decoder.predictor.num_conditional),
            "train_s": elapsed, **evaluate(decoder, text_encoder, held_out),
            "best_text_ap": best_text_ap(decoder, text_encoder, held_out)}


@torch.no_grad()
def best_text_ap(decoder: QueryMeldDecoder, text_encoder: nn.Module, held_out: list) -> float:
    """Mask AP when each query answers only its best text (the scoring ``instances`` used
    before it took MaskDINO's (query, text) pairs): a query whose mask is right but whose
    best text is wrong then counts only as a false positive."""
    from segllm.eval.segmentation_metrics import coco_ap
    from segllm.masks import encode_rle

    decoder.eval()
    gts, predictions = [], {}
    for ex in held_out:
        (outputs,) = forward(decoder, text_encoder, [ex])
        gts.append({"id": ex.record_id, "size": list(ex.original_size),
                    "segments": [{"category": a["text"], "rle": a["rle"]} for a in ex.annotations]})
        scores, labels = outputs.final.logits[0].sigmoid().max(dim=1)
        masks = decoder.to_original_size(outputs.final.masks[0], ex.input_size,
                                         ex.original_size) > decoder.mask_threshold
        predictions[ex.record_id] = [
            {"category": ex.texts[int(labels[q])], "score": float(scores[q]),
             "rle": encode_rle(masks[q].numpy().astype("uint8"))} for q in range(len(scores))]
    decoder.train()
    return coco_ap(gts, predictions, iou_type="segm")["ap"]


def print_forward_table(rows: list[dict], size: int) -> None:
    print(f"\n## forward at {size} px\n")
    print("| decoder | params (M) | image encoding (CPU s) | decoding (CPU s) | total (CPU s) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        total = row["encode_s"] + row["decode_s"]
        print(f"| {row['name']} | {row['params'] / 1e6:.1f} | {row['encode_s']:.2f} | "
              f"{row['decode_s']:.2f} | {total:.2f} |")
    for row in rows:
        if row["parts"]:
            shown = ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in row["parts"].items())
            print(f"\n{row['name']}: {shown}")


def print_strategy_table(rows: list[dict], steps: int) -> None:
    print(f"\n## query strategies after {steps} steps (synthetic multi-task scenes)\n")
    print("| strategy | learnable + conditional | mask AP | AP50 | AP75 | AP, best text per query "
          "| things by conditional | stuff by learnable | train (CPU s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        learnable, conditional = row["queries"]
        print(f"| {row['strategy']} | {learnable} + {conditional} | {100 * row['mask_ap']:.1f} "
              f"| {100 * row['mask_ap50']:.1f} | {100 * row['mask_ap75']:.1f} "
              f"| {100 * row['best_text_ap']:.1f} "
              f"| {100 * row['query_type/things_by_conditional']:.1f} % "
              f"| {100 * row['query_type/stuff_by_learnable']:.1f} % | {row['train_s']:.0f} |")
    if rows:
        things, stuff = rows[0]["query_type/num_things"], rows[0]["query_type/num_stuff"]
        print(f"\n(held out: {things} things and {stuff} stuff regions; AP in percent: "
              "(query, text) pairs, class x mask score, as MaskDINO; 'best text per query' "
              "scores each query's best text only, the scoring before)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="input side in px (multiple of 64)")
    parser.add_argument("--prompts", type=int, default=3, help="[SEG] prompts decoded")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-sam", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--steps", type=int, default=240, help="training steps per strategy")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scenes", type=int, default=60, help="training scenes (x2 records)")
    parser.add_argument("--strategies", nargs="*", default=["learnable", "conditional", "meld"])
    args = parser.parse_args()
    if args.size % 64:
        parser.error(f"--size {args.size} is not a multiple of 64")
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), random weights")
    if not args.skip_forward:
        rows = [query_decoder_forward("segllm-7b-querymeld", "QueryMeld R50 (100 + 300)",
                                      args.size, args.prompts),
                query_decoder_forward("segllm-7b-hipie", "HIPIE-style R50 (100 conditional)",
                                      args.size, args.prompts)]
        if not args.skip_sam:
            rows.append(sam_forward(args.size, args.prompts))
        print_forward_table(rows, args.size)
    if args.strategies:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_synthetic_multitask(folder / "train", num=args.scenes, seed=0,
                                      tasks=("panoptic", "referring"))
            write_synthetic_multitask(folder / "val", num=24, seed=1, tasks=("panoptic",))
            rows = [strategy_row(s, folder / "train" / "synthetic_multitask.jsonl",
                                 folder / "val" / "synthetic_multitask.jsonl", args.steps,
                                 args.lr) for s in args.strategies]
        print_strategy_table(rows, args.steps)


if __name__ == "__main__":
    main()
