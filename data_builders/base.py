"""What every builder shares: counters, seeded randomness, validation and atomic output.

A builder turns one source data set into records (docs/architecture.md, "Record formats").
Subclasses only implement :meth:`Builder.iter_records`; :meth:`Builder.build` validates every record, counts
what was written and what was skipped (by reason), and writes the JSONL atomically.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segllm.records import AtomicWriter, RecordError, validate_record

log = logging.getLogger("segllm.data_builders")


class BuildError(ValueError):
    """A build that must not write its output: no records at all (unless asked for),
    duplicate ids, or an output folder holding files the builder does not own."""

MAX_SKIP_EXAMPLES = 50
"""How many skip messages the summary keeps verbatim (all are counted)."""


@dataclass
class BuildStats:
    """Counters a build reports: written, skipped by reason, rounds per type, leakage."""

    source: str
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    rounds_per_type: Counter = field(default_factory=Counter)
    rounds_without_target: int = 0
    leakage_excluded_images: int = 0
    # images left out per leakage rule: "refcoco_eval_images" (RefCOCO/+/g val/test images in
    # another source's training set), "coco_val2017_images" (RefCOCO/+/g training images that
    # are COCO-2017 val images)
    leakage_by_rule: Counter = field(default_factory=Counter)
    skip_examples: list[str] = field(default_factory=list)
    # unified (c, b, m) records only: annotations written per task
    annotations_per_task: Counter = field(default_factory=Counter)

    def skip(self, record_id: Any, reason: str, detail: str = "") -> None:
        """Count one skipped record (or part of one) and keep the message for the summary."""
        self.skipped[reason] += 1
        message = f"{record_id}: {reason}" + (f" ({detail})" if detail else "")
        log.warning("skipped %s", message)
        if len(self.skip_examples) < MAX_SKIP_EXAMPLES:
            self.skip_examples.append(message)

    def count_written(self, record: dict) -> None:
        self.written += 1
        for rnd in record.get("rounds", ()):
            self.rounds_per_type[rnd["type"]] += 1
            if not rnd["targets"]:
                self.rounds_without_target += 1
        if "annotations" in record:
            self.annotations_per_task[record["task"]] += len(record["annotations"])

    def to_dict(self) -> dict:
        """The summary as plain JSON types, keys sorted so equal builds give equal files."""
        return {
            "source": self.source,
            "records_written": self.written,
            "records_skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "rounds_per_type": dict(sorted(self.rounds_per_type.items())),
            "rounds_without_target": self.rounds_without_target,
            "images_excluded_for_leakage": self.leakage_excluded_images,
            "leakage_excluded_by_rule": dict(sorted(self.leakage_by_rule.items())),
            "skip_examples": list(self.skip_examples),
        } | ({"annotations_per_task": dict(sorted(self.annotations_per_task.items()))}
             if self.annotations_per_task else {})


class Builder:
    """Base of every source builder.

    Args:
        rounds: the most rounds in one conversation (sources with fewer annotations give fewer).
        seed: every random choice derives from it; the same seed gives byte-identical output.
        image_prefix: prepended to the source's file names, so record paths are relative to
            the image root used at training time (e.g. ``coco/train2014``).
        image_root: where the images are on this machine; when given, a record whose image is
            missing is skipped (reason ``missing_image``).
        excluded_image_ids: COCO image ids that must not appear (RefCOCO/+/g val/test images).
    """

    name = "base"
    kind = "conversation"

    def __init__(
        self,
        *,
        rounds: int = 4,
        seed: int = 0,
        image_prefix: str = "",
        image_root: str | None = None,
        excluded_image_ids: Iterable[int] = (),
    ):
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.rounds = rounds
        self.seed = seed
        self.image_prefix = image_prefix.strip("/")
        self.image_root = image_root
        self.excluded_image_ids = frozenset(int(i) for i in excluded_image_ids)

    # ---- for subclasses

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        """Yield records in a deterministic order; call ``stats.skip`` for whatever is dropped."""
        raise NotImplementedError

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        """Yield unified (c, b, m) records (``segllm.records``), for sources that have them."""
        raise BuildError(f"{self.name} has no unified (c, b, m) records; "
                         "sources with them: data_builders/unified.py")

    def total(self) -> int | None:
        """Number of work items, for the progress bar (``None`` when unknown)."""
        return None

    def rng(self, key: Any) -> random.Random:
        """A generator seeded by (source, seed, key): results do not depend on the order in
        which items are visited, and string seeding is stable across Python runs."""
        return random.Random(f"{self.name}:{self.seed}:{key}")

    def image_path(self, file_name: str) -> str:
        """Record path of an image: the prefix joined with the source's file name."""
        file_name = file_name.lstrip("/")
        return f"{self.image_prefix}/{file_name}" if self.image_prefix else file_name

    def image_missing(self, file_name: str) -> bool:
        """True when an image root was given and the image is not under it."""
        if self.image_root is None:
            return False
        return not os.path.exists(os.path.join(self.image_root, self.image_path(file_name)))

    def is_excluded(self, coco_image_id: int | None, stats: BuildStats) -> bool:
        """True (and counted) when an image is a RefCOCO/+/g val/test image."""
        if coco_image_id is not None and int(coco_image_id) in self.excluded_image_ids:
            stats.leakage_excluded_images += 1
            stats.leakage_by_rule["refcoco_eval_images"] += 1
            return True
        return False

    # ---- driver

    def build(self, output_path: str | os.PathLike, progress: bool = False,
              allow_empty: bool = False, unified: bool = False) -> BuildStats:
        """Validate and write all records to ``output_path`` (atomically); return the counters.
        ``unified``: the source's unified (c, b, m) records instead of its conversations.

        Raises :class:`BuildError`, leaving ``output_path`` as it was, when two records share
        an id or when no record is written (unless ``allow_empty``).
        """
        stats = BuildStats(source=self.name)
        kind = "unified" if unified else self.kind
        records = self.iter_unified_records(stats) if unified else self.iter_records(stats)
        if progress:
            from tqdm import tqdm

            records = tqdm(records, desc=f"build {self.name}", unit="rec", total=self.total())
        seen_ids = UniqueIds(f"{self.name} records")
        with AtomicWriter(output_path) as out:
            for record in records:
                try:
                    validate_record(record, kind)
                except RecordError as exc:
                    stats.skip(record.get("id"), "invalid_record", str(exc))
                    continue
                seen_ids.add(record.get("id"))
                out.write_record(record)
                stats.count_written(record)
            require_records(stats, output_path, allow_empty)
        return stats


class UniqueIds:
    """Collects ids and raises :class:`BuildError` on the first one seen twice, e.g. two
    COCO images with one id, whose annotations would attach to both records."""

    def __init__(self, what: str):
        self.what = what
        self._seen: set = set()

    def add(self, item_id: Any) -> None:
        if item_id is None:
            return
        if item_id in self._seen:
            raise BuildError(f"{self.what}: id {item_id!r} appears more than once")
        self._seen.add(item_id)


def check_replaceable(folder: str | os.PathLike, owned: Iterable[str], writer: str) -> None:
    """Raise :class:`BuildError` unless ``folder`` is absent, or a folder holding only the
    entries in ``owned`` (and temporary files of earlier writes of them): a writer that
    replaces a whole folder must not take other files with it."""
    path = Path(folder)
    if not path.exists():
        return
    if not path.is_dir():
        raise BuildError(f"{path}: exists and is not a folder")
    owned = set(owned)
    foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in owned
                     and not _is_temporary_of(entry.name, owned))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise BuildError(f"{path}: holds {shown}, which {writer} does not write; it replaces the "
                         "whole folder, so give it a new or empty one")


def _is_temporary_of(name: str, owned: set[str]) -> bool:
    """``.synthetic.jsonl.x1y2.tmp``: what ``atomic_write`` leaves when killed."""
    return name.startswith(".") and name.endswith(".tmp") and any(
        name.startswith(f".{o}.") for o in owned)


def require_records(stats: BuildStats, output_path: str | os.PathLike, allow_empty: bool) -> None:
    """Raise :class:`BuildError` when a build wrote no record and an empty output was not asked
    for: an empty or all-invalid input must not replace a good output."""
    if stats.written or allow_empty:
        return
    skipped = sum(stats.skipped.values())
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(stats.skipped.items()))
    detail = f"; {skipped} skipped ({reasons})" if skipped else ""
    raise BuildError(f"{stats.source}: no records to write{detail}; {os.fspath(output_path)} is "
                     "left as it was (--allow-empty writes an empty file)")


class PerImageBuilder(Builder):
    """A builder that makes at most one conversation per image of ``self.images``.

    Training splits leave out images of the RefCOCO/+/g evaluation splits (leakage).
    """

    images: list[dict]

    def iter_records(self, stats: BuildStats) -> Iterator[dict]:
        yield from self._per_image(stats, self._conversation)

    def iter_unified_records(self, stats: BuildStats) -> Iterator[dict]:
        yield from self._per_image(stats, self._unified_record)

    def _per_image(self, stats: BuildStats, make) -> Iterator[dict]:
        image_ids = UniqueIds(f"{self.name} source images")
        for image in self.images:
            image_ids.add(image["id"])
        for image in self.images:
            if self.split == "train" and self.is_excluded(image["id"], stats):
                continue
            record = make(image, stats)
            if record is not None:
                yield record

    def _conversation(self, image: dict, stats: BuildStats) -> dict | None:
        raise NotImplementedError

    def _unified_record(self, image: dict, stats: BuildStats) -> dict | None:
        raise BuildError(f"{self.name} has no unified (c, b, m) records")
