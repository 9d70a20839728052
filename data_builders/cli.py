"""``segllm build-data SOURCE``: build MRSeg / GCG JSONL from a source data set.

Examples::

    segllm build-data synthetic --output data/synthetic --num 1000 --seed 0
    segllm build-data refcoco --input refer/data/refcoco --output data/mrseg \\
        --image-prefix coco/train2014 --coco-val2017 coco/annotations/instances_val2017.json \\
        --exclude-refs refer/data/refcocog/refs(umd).p refer/data/refcoco+/refs(unc).p
    segllm build-data refcoco --input refer/data/refcoco --split val --protocol standard --output data/eval
    segllm build-data reasonseg --input ReasonSeg/train --output data/mrseg --image-prefix reason_seg/train
    segllm build-data coco --records unified --input instances_train2017.json --output data/unified ...

Writes ``DIR/<source>.jsonl`` (atomically), ``DIR/mrseg_statistics.json`` / ``.png`` (SegLLM's
Table A1 and Fig. A1 over every MRSeg file in DIR: images, conversations, most rounds and the
histogram of rounds per source) and ``DIR/<source>.summary.json``: records written,
records skipped by reason, rounds per type, images excluded for leakage (by rule); the summary is also
printed. ``--input`` takes the paths each source needs, in the order listed by ``--help``.
``--records unified`` writes QueryMeldNet's (c, b, m) records instead
(``DIR/<source>.unified.jsonl`` and ``.unified.summary.json``; ``data_builders/unified.py``
lists the sources that have them); ``coco-panoptic`` and ``foreground`` have only those.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator

from segllm.records import write_json

from .base import BuildError
from .coco_format import SourceError
from .leakage import grandf_coco_layout, leakage_filter_ids

INPUTS = {
    "synthetic": "(none)",
    "synthetic-video": "(none)",
    "revos-frames": "meta_expressions_<split>_.json (mask_dict.json and JPEGImages/ beside it)",
    "mevis-frames": "meta_expressions.json (mask_dict.json and JPEGImages/ beside it)",
    "refcoco": "refer folder with refs(unc).p and instances.json",
    "refcoco+": "refer folder with refs(unc).p and instances.json",
    "refcocog": "refer folder with refs(umd).p or refs(google).p and instances.json",
    "coco": "instances_train2017.json",
    "coco-panoptic": "panoptic_train2017.json, its PNG folder panoptic_train2017/",
    "foreground": "image folder, mask folder (DUTS-TR-Image/, DUTS-TR-Mask/; DIS5K im/, gt/ ...)",
    "lvis": "lvis_v1_train.json",
    "paco-lvis": "paco_lvis_v1_train.json",
    "pascal-panoptic-parts": "label folder (*.tif), ppp_datasetspec.yaml [, part grouping YAML: "
                             "ppp_100_72.yaml or a part_groupings file]",
    "visual-genome": "relationships.json (with --records unified: or objects.json), image_data.json",
    "ade20k": "ADEChallengeData2016 folder",
    "coco-stuff": "label folder (*.png), labels.txt",
    "reasonseg": "split folder of *.jpg + *.json",
    "syn-m": "a unified JSONL with box-only annotations (needs --sam-checkpoint and --image-root)",
    "syn-captions": "a unified JSONL (needs --image-root; --captioner)",
    "grandf": "one GranD-f JSON (HA, OpenPSG, RefCOCOg-GCG, Flickr30k-GCG, or GLaMM's evaluation "
              "<split>_gcg_coco_mask_gt.json with its caption file beside it)",
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
    parser.add_argument("--format", default=None, help="grandf layout: ha, psg, refcocog, flickr, gcg-eval")
    parser.add_argument("--image-prefix", default="", help="prepended to image file names in records")
    parser.add_argument("--image-root", default=None,
                        help="image root on this machine; records with a missing image are skipped")
    parser.add_argument("--exclude-refs", nargs="*", default=[], metavar="REFS_P",
                        help="refer refs(...).p files whose val/test images are kept out of training "
                             "(required for training splits of COCO-picture sources)")
    parser.add_argument("--coco-val2017", default=None, metavar="JSON",
                        help="refcoco/+/g: instances_val2017.json; training images that are COCO-2017 "
                             "val images are left out (required for training splits)")
    parser.add_argument("--no-leakage-filter", action="store_true",
                        help="build a training split without the two leakage rules (data_builders/leakage.py)")
    parser.add_argument("--records", choices=("mrseg", "unified"), default="mrseg",
                        help="mrseg: the source's conversations (or GCG records); unified: "
                             "QueryMeldNet's (text, box, mask) records, written to "
                             "<source>.unified.jsonl (data_builders/unified.py)")
    parser.add_argument("--sam-checkpoint", metavar="PTH",
                        help="syn-m: an official SAM checkpoint (sam_vit_h_4b8939.pth ...) whose "
                             "masks for the boxes are written (data_builders/syn_masks.py)")
    parser.add_argument("--device", default="cpu", help="syn-m: torch device for SAM (default cpu)")
    parser.add_argument("--captioner", default="template",
                        help="syn-captions: the captioner (data_builders/captioner.py; default template)")
    parser.add_argument("--protocol", choices=("mrseg", "standard"), default="mrseg",
                        help="refcoco/+/g: multi-round conversations (mrseg, default) or the published "
                             "protocol, one expression per one-round record (standard, for segllm eval refer)")
    parser.add_argument("--num", type=int, default=1000, help="synthetic: number of conversations")
    parser.add_argument("--image-size", type=int, default=64, help="synthetic: image side in pixels")
    parser.add_argument("--min-rounds", type=int, default=1, help="synthetic: fewest rounds")
    parser.add_argument("--workers", type=int, default=1, help="synthetic: worker processes")
    parser.add_argument("--no-gcg", action="store_true", help="synthetic: do not write GCG records")
    parser.add_argument("--frames", type=int, default=16,
                        help="synthetic-video: frames per clip; revos-frames / mevis-frames: "
                             "target frames drawn per expression")
    parser.add_argument("--reference-frames", type=int, nargs=2, default=(8, 12),
                        metavar=("MIN", "MAX"),
                        help="revos-frames / mevis-frames: reference frames per record, a count "
                             "drawn in MIN..MAX, the target among them (VISA: 8 12); 0 0: none")
    parser.add_argument("--plain-answers", action="store_true",
                        help="synthetic: answer 'Sure, [SEG].' instead of naming each target "
                             "before its [SEG] ('It is the red circle [SEG].')")
    parser.add_argument("--named-answers", action="store_true",
                        help="synthetic: name a single target before its [SEG] ('It is the red "
                             "circle at the top left [SEG].', as data before the echoed answers) "
                             "instead of repeating the question first ('The red shape [SEG] is "
                             "the red circle at the top left.')")
    parser.add_argument("--no-places", action="store_true",
                        help="synthetic: name targets and caption phrases without their grid "
                             "cell ('the red circle', not 'the red circle at the top left'), as "
                             "data before the places were added")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write the output even when no record is usable (otherwise an error, "
                             "and an older output is left as it was)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error instead of one line")


def _need(args, count: int) -> list[str]:
    if len(args.input) != count:
        raise SourceError(f"{args.source} needs --input {INPUTS[args.source]} ({count} path(s)), got {len(args.input)}")
    return args.input


def make_builder(args):
    """The builder for ``args.source``, configured from the command line."""
    refs_ids, coco_val_ids = leakage_filter_ids(args.source, args.split, exclude_refs=args.exclude_refs,
                                                coco_val2017=args.coco_val2017, opted_out=args.no_leakage_filter,
                                                grandf_format=grandf_coco_layout(args.format, args.input))
    common = {"rounds": args.rounds or 4, "seed": args.seed, "image_prefix": args.image_prefix,
              "image_root": args.image_root, "excluded_image_ids": refs_ids}
    source = args.source
    if source in ("refcoco", "refcoco+", "refcocog"):
        from .refcoco import RefCocoBuilder

        (folder,) = _need(args, 1)
        return RefCocoBuilder(folder, dataset=source, split=args.split, split_by=args.split_by,
                              protocol=args.protocol, coco_val2017_ids=coco_val_ids, **common)
    if source in ("coco", "lvis"):
        from .coco_instances import CocoInstancesBuilder, LvisBuilder

        (path,) = _need(args, 1)
        cls = LvisBuilder if source == "lvis" else CocoInstancesBuilder
        return cls(path, split=args.split, **common)
    if source == "coco-panoptic":
        from .coco_panoptic import CocoPanopticBuilder

        return CocoPanopticBuilder(*_need(args, 2), split=args.split, **common)
    if source == "foreground":
        from .foreground import ForegroundBuilder

        return ForegroundBuilder(*_need(args, 2), split=args.split, **common)
    if source == "paco-lvis":
        from .paco import PacoBuilder

        return PacoBuilder(*_need(args, 1), split=args.split, **common)
    if source == "pascal-panoptic-parts":
        from .pascal_parts import PascalPartsBuilder

        return PascalPartsBuilder(*_need(args, 3 if len(args.input) == 3 else 2), split=args.split, **common)
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


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` while a build runs, so a stopped build removes its
    temporary files (the default SIGTERM ends the process without any clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    """Build, write the JSONL and the summary, print the summary; 0 on success, 2 on bad input."""
    with _sigterm_as_exit():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.source in ("revos-frames", "mevis-frames"):  # segllm.data_builders.video_frames
            from .video_frames import write_video_frames

            summary = write_video_frames(args.source.split("-")[0], *_need(args, 1), args.output,
                                         frames_per_expression=args.frames, seed=args.seed,
                                         split=args.split,
                                         reference_frames=tuple(args.reference_frames))
        elif args.source == "synthetic-video":  # ReVOS layout (segllm.data_builders.synthetic_video)
            from .synthetic_video import write_synthetic_videos

            summary = write_synthetic_videos(args.output, num=args.num, seed=args.seed,
                                             frames=args.frames, size=args.image_size,
                                             split=args.split)
        elif args.source == "synthetic":
            from .synthetic import write_synthetic

            stats = write_synthetic(args.output, args.num, args.seed, image_size=args.image_size,
                                    min_rounds=args.min_rounds, max_rounds=args.rounds or 8,
                                    gcg=not args.no_gcg, progress=not args.no_progress,
                                    workers=args.workers, describe=not args.plain_answers,
                                    allow_empty=args.allow_empty, places=not args.no_places,
                                    echo=not args.named_answers)
            summary = stats.to_dict()
        elif args.source in ("syn-m", "syn-captions"):
            summary = _build_synthetic_annotations(args)
        elif args.records == "unified":
            summary = _build_unified(args)
        else:
            builder = make_builder(args)
            output = os.path.join(args.output, f"{builder.name}.jsonl")
            stats = builder.build(output, progress=not args.no_progress, allow_empty=args.allow_empty)
            summary = stats.to_dict()
            write_json(os.path.join(args.output, f"{builder.name}.summary.json"), summary)
            # Table A1 / Fig. A1 of every MRSeg file in the folder (not for synthetic sets:
            # their folder holds only what write_synthetic writes, so a rebuild can swap it)
            from .stats import write_statistics

            write_statistics(args.output)
    except (SourceError, BuildError, ValueError, OSError, KeyError, TypeError) as exc:
        # bad input (a missing or malformed file, a bad value): one line, no traceback
        if args.debug:
            raise
        print(f"segllm build-data: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _build_unified(args: argparse.Namespace) -> dict:
    """``--records unified``: ``DIR/<source>.unified.jsonl`` and its summary."""
    from .unified import UNIFIED_TASKS

    if args.source not in UNIFIED_TASKS:
        raise SourceError(f"{args.source} has no unified records; sources with them: "
                          f"{', '.join(sorted(UNIFIED_TASKS))}")
    builder = make_builder(args)
    output = os.path.join(args.output, f"{builder.name}.unified.jsonl")
    stats = builder.build(output, progress=not args.no_progress, allow_empty=args.allow_empty,
                          unified=True)
    summary = stats.to_dict()
    write_json(os.path.join(args.output, f"{builder.name}.unified.summary.json"), summary)
    return summary


def _build_synthetic_annotations(args: argparse.Namespace) -> dict:
    """syn-m (SAM masks for boxes) and syn-captions: a unified JSONL in, one out beside the others."""
    (input_path,) = _need(args, 1)
    if not args.image_root:
        raise SourceError(f"{args.source} reads the images: give --image-root")
    if args.source == "syn-m":
        from .syn_masks import SamBoxSegmenter, SynMaskBuilder

        if not args.sam_checkpoint:
            raise SourceError("syn-m needs --sam-checkpoint (an official SAM .pth)")
        segmenter = SamBoxSegmenter.from_checkpoint(args.sam_checkpoint, device=args.device)
        builder = SynMaskBuilder(input_path, segmenter, image_root=args.image_root)
    else:
        from .captioner import CAPTIONERS, CaptionBuilder

        if args.captioner not in CAPTIONERS:
            raise SourceError(f"unknown captioner {args.captioner!r}; one of {', '.join(sorted(CAPTIONERS))}")
        builder = CaptionBuilder(input_path, CAPTIONERS[args.captioner](), image_root=args.image_root)
    output = os.path.join(args.output, f"{builder.name}.unified.jsonl")
    summary = builder.build(output, progress=not args.no_progress, allow_empty=args.allow_empty).to_dict()
    write_json(os.path.join(args.output, f"{builder.name}.unified.summary.json"), summary)
    return summary


def _one_line(exc: BaseException) -> str:
    """The error as one line; a bare KeyError or TypeError says what kind it is."""
    if isinstance(exc, KeyError):
        return f"malformed input: missing key {exc} (--debug shows where)"
    if isinstance(exc, TypeError):
        return f"malformed input: {exc} (--debug shows where)"
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segllm build-data", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
