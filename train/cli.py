"""``segllm train --config configs/train/NAME.yaml [key=value ...] [--resume [PATH]]``.

Start one process with ``segllm train ...``; several with a launcher, e.g.
``deepspeed --num_gpus 8 -m segllm.train.cli --config ...`` (the module runs the same CLI),
``torchrun --nproc_per_node 2 -m segllm.train.cli ...`` or, on GPUs,
``accelerate launch --use_deepspeed --num_processes 8 -m segllm.train.cli ...``.
"""

from __future__ import annotations

import argparse
import sys

from .args import check_paths, load_train_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a training YAML (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. optim.lr=3e-4 data.sources.0.weight=2")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from CHECKPOINT, or from the newest one in output_dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a used output_dir, removing the earlier run's "
                             "checkpoints, metrics and export (without it a used folder is an error)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error instead of one line")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # passed by the deepspeed launcher; env has it too


def run(args: argparse.Namespace) -> int:
    from .decoder_training import is_decoder_recipe

    if is_decoder_recipe(args.config):  # kind: decoder, the query-meld decoder on its own
        return run_decoder(args)
    try:
        config = load_train_config(args.config, args.overrides)
        check_paths(config)
        from .run_dir import plan_run

        plan_run(config, args.resume, args.overwrite)  # a used output_dir fails here, in a second
        from .trainer import train

        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        # bad input (config values, files, records, images, output folder, checkpoint): one
        # line naming it; ValueError covers TrainConfigError, RecordError, RunDirError,
        # CheckpointError and ImageCheckError
        if args.debug:
            raise
        print(f"segllm train: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if result.export_dir is not None:
        print(f"exported merged model to {result.export_dir}")
    return 0


def run_decoder(args: argparse.Namespace) -> int:
    """A ``kind: decoder`` recipe (``train/decoder_training.py``); bad input: one line, exit 2."""
    from .decoder_training import run_decoder_recipe

    try:
        result = run_decoder_recipe(args.config, args.overrides, resume=args.resume,
                                    overwrite=args.overwrite)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        print(f"segllm train: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote the trained decoder to {result.output_dir / 'decoder.safetensors'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segllm train", description="train from a YAML config")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
