"""QueryMeldNet's per-data-set upsampling ratios (supplement, Table 11) as a training mixture.

An upsampling ratio repeats a data set that many times in the concatenation joint training
draws from, so a record of data set d is drawn with probability ``ratio_d * n_d / sum(ratio *
n)``: that is ``mixing: size`` of ``segllm train`` (``train/data.py``: weight times the number of
records) with each source's ``weight`` set to its ratio. Table 11's rows and the unified files
that fill them (``<source>.unified.jsonl`` of ``segllm build-data --records unified``;
``-syn-m``: masks from ``syn_masks.py``, ``-syn``: captions from ``captioner.py``):

=================  =====  ==============================================================
Table 11 row       ratio  files
=================  =====  ==============================================================
COCO               3      ``coco`` (instances) or ``coco-panoptic``
ADE20K             30     ``ade20k``
LVIS               3      ``lvis``
Visual Genome      9      ``visual-genome`` (boxes only) or ``visual-genome-syn-m``
Objects365         1      ``objects365``, ``objects365-syn-m`` (no builder here yet)
referring          6      ``refcoco``, ``refcoco+``, ``refcocog`` (each at 6: their
                          concatenation repeated 6 times)
syn-COCO           3      ``coco-syn``
syn-Objects365     1      ``objects365-syn``
foreground         9      ``foreground``
=================  =====  ==============================================================

COCO-Stuff is not in Table 11; :func:`table11_data_section` refuses a file it has no ratio for
unless ``extra_ratios`` gives one. Print the ``data:`` section of a training config for a
folder of unified files::

    python -m segllm.data_builders.mixing data/unified --image-root data/images
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

TABLE_11_RATIOS = {
    "coco": 3, "coco-panoptic": 3, "ade20k": 30, "lvis": 3, "visual-genome": 9,
    "visual-genome-syn-m": 9, "objects365": 1, "objects365-syn-m": 1, "refcoco": 6, "refcoco+": 6,
    "refcocog": 6, "coco-syn": 3, "objects365-syn": 1, "foreground": 9,
}
"""Upsampling ratio of each unified file's source name (the table above)."""

UNIFIED_SUFFIX = ".unified.jsonl"


def table11_data_section(folder: str | os.PathLike, *, image_root: str | None = None,
                         extra_ratios: dict[str, float] | None = None) -> dict:
    """The ``data:`` section of a ``segllm train`` config drawing the unified files of
    ``folder`` with Table 11's ratios (``mixing: size``, ``weight`` = ratio).

    Raises ValueError naming a file whose source has no ratio, or when there is no file.
    """
    ratios = {**TABLE_11_RATIOS, **(extra_ratios or {})}
    files = sorted(Path(folder).glob(f"*{UNIFIED_SUFFIX}"))
    if not files:
        raise ValueError(f"{folder}: no *{UNIFIED_SUFFIX} files (segllm build-data ... --records unified)")
    sources = []
    for path in files:
        name = path.name[: -len(UNIFIED_SUFFIX)]
        if name not in ratios:
            raise ValueError(f"{path}: source {name!r} has no Table 11 ratio; known: "
                             f"{', '.join(sorted(ratios))} (give one in extra_ratios / --ratio)")
        source = {"path": str(path), "weight": float(ratios[name]), "name": name}
        if image_root is not None:
            source["image_root"] = image_root
        sources.append(source)
    return {"mixing": "size", "sources": sources}


def _ratio(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=RATIO, got {text!r}")
    return name, float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segllm.data_builders.mixing",
                                     description="Print the data: section of Table 11's mixture.")
    parser.add_argument("folder", help="folder of <source>.unified.jsonl files")
    parser.add_argument("--image-root", help="image root of every source")
    parser.add_argument("--ratio", type=_ratio, action="append", default=[], metavar="NAME=RATIO",
                        help="a ratio for a source Table 11 does not list (e.g. coco-stuff=3)")
    args = parser.parse_args(argv)
    try:
        section = table11_data_section(args.folder, image_root=args.image_root, extra_ratios=dict(args.ratio))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump({"data": section}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
