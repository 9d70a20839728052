"""``segllm build-data SOURCE``: build MRSeg / GCG JSONL from a source data set.

Examples::

    segllm build-data synthetic --output data/synthetic --num 1000 --seed 0
    segllm build-data refcoco --input refer/data/refcoco --output data/mrseg \\
        --image-prefix coco/train2014 --exclude-refs refer/data/refcocog/refs(umd).p
    segllm build-data reasonseg --input ReasonSeg/train --output data/mrseg --image-prefix reason_seg/train

Writes ``DIR/<source>.jsonl`` (atomically) and ``DIR/<source>.summary.json``: records written,
records skipped by reason, rounds per type, images excluded for leakage; the summary is also
printed. ``--input`` takes the paths each source needs, in the order listed by ``--help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from segllm.records import write_json

from .coco_format import SourceError
from .leakage import load_heldout_image_ids

INPUTS = {
    "synthetic": "(none)",
    "refcoco": "refer folder with refs(unc).p and instances.json",
    "refcoco+": "refer folder with refs(unc).p and instances.json",
    "refcocog": "refer folder with refs(umd).p or refs(google).p and instances.json",
    "coco": "instances_train2017.json",
    "lvis": "lvis_v1_train.json",
    "paco-lvis": "paco_lvis_v1_train.json",
    "pascal-panoptic-parts": "label folder (*.tif), spec YAML",
    "visual-genome": "relationships.json, image_data.json",
    "ade20k": "ADEChallengeData2016 folder",
    "coco-stuff": "label folder (*.png), labels.txt",
    "reasonseg": "split folder of *.jpg + *.json",
    "grandf": "one GranD-f JSON (HA, OpenPSG, RefCOCOg-GCG or Flickr30k-GCG)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``segllm build-data``."""
    parser.add_argument("source", choices=sorted(INPUTS), help="source data set")
    parser.add_argument("--input", nargs="+", default=[], metavar="PATH",
                        help="; ".join(f"{k}: {v}" for k, v in INPUTS.items()))
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--rounds", type=int, default=None,
                        help="most rounds per conversation (default 8 for synthetic, 4 otherwise)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--split", default="train", help="split to build (default train)")
    parser.add_argument("--split-by", default=None, help="refer split file: unc, umd or google")
    parser.add_argument("--format", default=None, help="grandf layout: ha, psg, refcocog, flickr")
    parser.add_argument("--image-prefix", default="", help="prepended to image file names in records")
    parser.add_argument("--image-root", default=None,
                        help="image root on this machine; records with a missing image are skipped")
    parser.add_argument("--exclude-refs", nargs="*", default=[], metavar="REFS_P",
                        help="refer refs(...).p files whose val/test images are kept out of training")
    parser.add_argument("--num", type=int, default=1000, help="synthetic: number of conversations")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic: image side in pixels")
    parser.add_argument("--min-rounds", type=int, default=1, help="synthetic: fewest rounds")
    parser.add_argument("--workers", type=int, default=1, help="synthetic: worker processes")
    parser.add_argument("--no-gcg", action="store_true", help="synthetic: do not write GCG records")
    parser.add_argument("--plain-answers", action="store_true",
                        help="synthetic: answer 'Sure, [SEG].' instead of naming each target "
                             "before its [SEG] ('It is the red circle [SEG].')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _need(args, count: int) -> list[str]:
    if len(args.input) != count:
        raise SourceError(f"{args.source} needs --input {INPUTS[args.source]} ({count} path(s)), got {len(args.input)}")
    return args.input


def make_builder(args):
    """The builder for ``args.source``, configured from the command line."""
    common = {"rounds": args.rounds or 4, "seed": args.seed, "image_prefix": args.image_prefix,
              "image_root": args.image_root,
              "excluded_image_ids": load_heldout_image_ids(args.exclude_refs) if args.exclude_refs else ()}
    source = args.source
    if source in ("refcoco", "refcoco+", "refcocog"):
        from .refcoco import RefCocoBuilder

        (folder,) = _need(args, 1)
        return RefCocoBuilder(folder, dataset=source, split=args.split, split_by=args.split_by, **common)
    if source in ("coco", "lvis"):
        from .coco_instances import CocoInstancesBuilder, LvisBuilder

        (path,) = _need(args, 1)
        cls = LvisBuilder if source == "lvis" else CocoInstancesBuilder
        return cls(path, split=args.split, **common)
    if source == "paco-lvis":
        from .paco import PacoBuilder

        return PacoBuilder(*_need(args, 1), split=args.split, **common)
    if source == "pascal-panoptic-parts":
        from .pascal_parts import PascalPartsBuilder

        return PascalPartsBuilder(*_need(args, 2), split=args.split, **common)
    if source == "visual-genome":
        from .visual_genome import VisualGenomeBuilder

        return VisualGenomeBuilder(*_need(args, 2), split=args.split, **common)
    if source == "ade20k":
        from .ade20k import Ade20kBuilder

        ade_split = "validation" if args.split == "val" else "training"
        return Ade20kBuilder(*_need(args, 1), ade_split=ade_split, split=args.split, **common)
    if source == "coco-stuff":
        from .coco_stuff import CocoStuffBuilder

        return CocoStuffBuilder(*_need(args, 2), image_dir=f"{args.split}2017", split=args.split, **common)
    if source == "reasonseg":
        from .reasonseg import ReasonSegBuilder

        return ReasonSegBuilder(*_need(args, 1), split=args.split, **common)
    if source == "grandf":
        from .grandf import GrandfBuilder

        return GrandfBuilder(*_need(args, 1), fmt=args.format, split=args.split, **common)
    raise SourceError(f"unknown source {source!r}")


def run(args: argparse.Namespace) -> int:
    """Build, write the JSONL and the summary, print the summary; 0 on success, 2 on bad input."""
    try:
        if args.source == "synthetic":
            from .synthetic import write_synthetic

            stats = write_synthetic(args.output, args.num, args.seed, image_size=args.image_size,
                                    min_rounds=args.min_rounds, max_rounds=args.rounds or 8,
                                    gcg=not args.no_gcg, progress=not args.no_progress,
                                    workers=args.workers, describe=not args.plain_answers)
            summary = stats.to_dict()
        else:
            builder = make_builder(args)
            output = os.path.join(args.output, f"{builder.name}.jsonl")
            stats = builder.build(output, progress=not args.no_progress)
            summary = stats.to_dict()
            write_json(os.path.join(args.output, f"{builder.name}.summary.json"), summary)
    except SourceError as exc:
        print(f"segllm build-data: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segllm build-data", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
