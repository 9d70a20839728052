"""The ``segllm`` console script.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their subcommand runs, so ``segllm info``
does not pay for gradio or deepspeed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "info": ("segllm.commands.info", "print a preset's components and parameter counts"),
    "build-data": ("segllm.data_builders.cli", "build MRSeg / GCG JSONL from a source data set"),
    "eval": ("segllm.eval.cli", "evaluate a model or a prediction file"),
    "train": ("segllm.train.cli", "train from a YAML config"),
    "chat": ("segllm.commands.chat", "chat with a model about an image"),
    "video": ("segllm.commands.video", "segment a query through a video (frames or a file)"),
    "serve": ("segllm.demo.app", "start the web demo"),
    "demo": ("segllm.commands.demo", "run the shipped small model end to end"),
    "convert": ("segllm.commands.convert", "convert a LISA checkpoint into a segllm model"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module is present in this install."""
    found = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.rsplit(".", 1)[0]) is None:
            continue
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is not None:
            found[name] = (module, help_text)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segllm", description="Multi-round reasoning segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in _available().items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
