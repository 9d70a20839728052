"""The three record kinds (docs/architecture.md, "Record formats"), their validation, JSON Lines I/O.

MRSeg conversation::

    {"id", "image", "height", "width", "source", "split",
     "rounds": [{"question", "answer", "targets": [{"rle", "bbox"}], "refs": [k], "type"}]}

GCG (grounded conversation generation)::

    {"id", "image", "height", "width", "caption",
     "phrases": [{"text", "span": [start, end], "rle"}]}

Unified segmentation (QueryMeldNet's (c, b, m) triplets)::

    {"image", "task", "annotations": [{"text", "bbox", "rle" | null}]}

  ``rle: null`` marks a box-only annotation (detection, Visual Genome): no mask loss in
  training, box AP only in evaluation. The builders also write ``id``, ``height``, ``width``,
  ``source`` and ``split``; an annotation may carry ``"iscrowd": true`` (a COCO crowd region,
  written for evaluation splits only: not a training target, detections on it are ignored),
  ``"isthing"`` (panoptic: a thing or a stuff class), ``"texts"`` (alternative captions of the
  region, ``text`` being the first) and ``"synthetic"`` (which of ``"mask"`` and ``"text"`` a
  tool made: ``data_builders/syn_masks.py``, ``data_builders/captioner.py``).

Optional fields this module accepts (and the builders write) beyond the design's sketch:

- a target may carry ``"box_derived": true`` when its mask was filled from a box (Visual
  Genome), ``"ignore_rle"`` for pixels to be scored as label 255 (ReasonSeg's "ignore"
  polygons), ``"label"`` (the source's class or phrase, for inspection) and ``"ann_bbox"``
  (the source annotation's own ``[x, y, w, h]`` box, which REC Acc@0.5 scores against; it
  may differ from ``bbox``, the mask's tight box);
- a GCG phrase may carry ``"bbox"``; any record may carry ``"meta"`` (a dict);
- a conversation about a video frame may carry ``"reference_frames"``: the paths of the
  video's reference frames (VISA's, in temporal order, relative like ``image``, each the size
  of ``image``), given to the LLM beside the frame (``data_builders/video_frames.py``).

Image paths are relative to an image root given at run time, so absolute paths are errors.
Every problem raises :class:`RecordError`, whose message names the file, line, record id,
round index and field it concerns (those that are known).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from segllm.files import atomic_write, escapes_root
from segllm.masks import MaskError, rle_area, rle_bbox
from segllm.tokens import REF_PATTERN, SEG_TOKEN

ROUND_TYPES = (
    "referring", "semantic", "positional", "interactional", "hierarchical", "attribute", "reasoning",
)
"""Round types of an MRSeg conversation (docs/architecture.md, "Record formats")."""

UNIFIED_TASKS = ("instance", "semantic", "panoptic", "referring", "foreground", "detection")
"""Tasks of a unified segmentation record."""

KINDS = ("conversation", "gcg", "unified")

BBOX_TOLERANCE = 1.5
"""Pixels by which a target's box may differ from its mask's tight box (rounding of sources)."""


class RecordError(ValueError):
    """A record that does not follow its schema, or a line that is not a JSON object.

    The attributes say where: ``path`` and ``line`` (1-based) in a JSONL file, ``record_id``,
    ``round_index`` and ``field``; each is ``None`` when unknown.
    """

    def __init__(
        self,
        reason: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        record_id: Any = None,
        round_index: int | None = None,
        field: str | None = None,
    ):
        self.reason = reason
        self.path = None if path is None else os.fspath(path)
        self.line = line
        self.record_id = record_id
        self.round_index = round_index
        self.field = field
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path if self.line is None else f"{self.path}:{self.line}")
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.record_id is not None:
            where.append(f"record {self.record_id!r}")
        if self.round_index is not None:
            where.append(f"round {self.round_index}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.reason}" if where else self.reason

    def located(self, *, path: str | os.PathLike | None = None, line: int | None = None) -> RecordError:
        """The same error with the file and line filled in (kept when already known)."""
        return RecordError(
            self.reason,
            path=self.path if self.path is not None else path,
            line=self.line if self.line is not None else line,
            record_id=self.record_id, round_index=self.round_index, field=self.field,
        )


# --------------------------------------------------------------------------- validation


class _Checker:
    """Raises :class:`RecordError` with the record id (and round) already filled in."""

    def __init__(self, record_id: Any, round_index: int | None = None):
        self.record_id = record_id
        self.round_index = round_index

    def fail(self, field: str, reason: str) -> RecordError:
        return RecordError(reason, record_id=self.record_id, round_index=self.round_index, field=field)

    def require(self, obj: dict, field: str, types: type | tuple[type, ...], prefix: str = "") -> Any:
        name = f"{prefix}{field}"
        if field not in obj:
            raise self.fail(name, "missing")
        value = obj[field]
        # bool is an int subclass; a size or index must never be True/False
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.fail(name, f"expected {_type_names(types)}, got bool")
        if not isinstance(value, types):
            raise self.fail(name, f"expected {_type_names(types)}, got {type(value).__name__}")
        return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _check_image(c: _Checker, record: dict, field: str = "image") -> None:
    image = c.require(record, "image", str)
    if not image:
        raise c.fail(field, "empty path")
    if os.path.isabs(image) or image.startswith(("/", "\\")):
        raise c.fail(field, f"absolute path {image!r}; image paths are relative to an image root")
    if escapes_root(image):
        raise c.fail(field, f"path {image!r} leads out of the image root ('..')")


def _check_size(c: _Checker, record: dict) -> tuple[int, int]:
    height = c.require(record, "height", int)
    width = c.require(record, "width", int)
    if height <= 0 or width <= 0:
        raise c.fail("height/width", f"image size must be positive, got {height}x{width}")
    return height, width


def _check_bbox(c: _Checker, bbox: Any, field: str, height: int | None, width: int | None) -> list:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox
    ):
        raise c.fail(field, "expected [x, y, w, h] of 4 numbers")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise c.fail(field, f"zero-area box {bbox}")
    if height is not None and width is not None and (
        x < -BBOX_TOLERANCE or y < -BBOX_TOLERANCE
        or x + w > width + BBOX_TOLERANCE or y + h > height + BBOX_TOLERANCE
    ):
        raise c.fail(field, f"box {bbox} lies outside the {width}x{height} image")
    return bbox


def _check_rle(c: _Checker, rle: Any, field: str, height: int | None, width: int | None) -> None:
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise c.fail(field, "expected a COCO RLE {'size': [h, w], 'counts': str}")
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise c.fail(f"{field}.size", "expected [height, width]")
    if not isinstance(counts, str):
        raise c.fail(f"{field}.counts", f"expected str (compressed RLE), got {type(counts).__name__}")
    if height is not None and size != [height, width]:
        raise c.fail(f"{field}.size", f"mask size {size} does not match the image [{height}, {width}]")
    try:
        area = rle_area(rle)
    except (MaskError, ValueError, TypeError) as exc:  # pycocotools raises on corrupt counts
        raise c.fail(f"{field}.counts", f"undecodable RLE ({exc})") from None
    if area <= 0:
        raise c.fail(field, "zero-area mask")


def _check_mask_and_box(c: _Checker, item: dict, prefix: str, height: int, width: int) -> None:
    rle = c.require(item, "rle", dict, prefix)
    _check_rle(c, rle, f"{prefix}rle", height, width)
    bbox = _check_bbox(c, c.require(item, "bbox", list, prefix), f"{prefix}bbox", height, width)
    tight = rle_bbox(rle)
    if any(abs(a - b) > BBOX_TOLERANCE for a, b in zip(bbox, tight, strict=True)):
        raise c.fail(f"{prefix}bbox", f"box {bbox} does not match its mask's box {tight}")


def validate_conversation(record: dict) -> dict:
    """Check an MRSeg conversation record; returns it unchanged or raises :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    c = _Checker(record.get("id"))
    c.require(record, "id", str)
    _check_image(c, record)
    height, width = _check_size(c, record)
    c.require(record, "source", str)
    c.require(record, "split", str)
    if "reference_frames" in record:
        _check_reference_frames(c, record["reference_frames"])
    rounds = c.require(record, "rounds", list)
    if not rounds:
        raise c.fail("rounds", "a conversation needs at least one round")
    for index, rnd in enumerate(rounds):
        _check_round(_Checker(c.record_id, index), rnd, index, rounds, height, width)
    return record


def _check_reference_frames(c: _Checker, frames: Any) -> None:
    if not isinstance(frames, list) or not frames:
        raise c.fail("reference_frames", "expected a non-empty list of image paths")
    for i, path in enumerate(frames):
        if not isinstance(path, str) or not path:
            raise c.fail(f"reference_frames[{i}]", "expected a non-empty image path")
        _check_image(c, {"image": path}, field=f"reference_frames[{i}]")


def _check_round(c: _Checker, rnd: Any, index: int, rounds: list, height: int, width: int) -> None:
    if not isinstance(rnd, dict):
        raise c.fail("rounds", f"expected an object, got {type(rnd).__name__}")
    question = c.require(rnd, "question", str)
    answer = c.require(rnd, "answer", str)
    targets = c.require(rnd, "targets", list)
    refs = c.require(rnd, "refs", list)
    kind = c.require(rnd, "type", str)
    if kind not in ROUND_TYPES:
        raise c.fail("type", f"unknown round type {kind!r}; one of {', '.join(ROUND_TYPES)}")
    if not question.strip():
        raise c.fail("question", "empty question")
    if SEG_TOKEN in question:
        raise c.fail("question", f"{SEG_TOKEN} belongs in answers only")
    n_seg = answer.count(SEG_TOKEN)
    if n_seg != len(targets):
        raise c.fail("answer", f"{n_seg} {SEG_TOKEN} token(s) for {len(targets)} target(s)")
    if not targets and not answer.strip():
        raise c.fail("answer", "a round without targets must say that there is no such object")
    for t, target in enumerate(targets):
        prefix = f"targets[{t}]."
        if not isinstance(target, dict):
            raise c.fail(f"targets[{t}]", "expected an object")
        _check_mask_and_box(c, target, prefix, height, width)
        if "box_derived" in target and not isinstance(target["box_derived"], bool):
            raise c.fail(f"{prefix}box_derived", "expected a bool")
        if "ignore_rle" in target:
            _check_rle(c, target["ignore_rle"], f"{prefix}ignore_rle", height, width)
        if "ann_bbox" in target:
            _check_bbox(c, target["ann_bbox"], f"{prefix}ann_bbox", height, width)
    _check_refs(c, question, refs, index, rounds)


def _check_refs(c: _Checker, question: str, refs: list, index: int, rounds: list) -> None:
    for k in refs:
        if not isinstance(k, int) or isinstance(k, bool):
            raise c.fail("refs", f"round indices must be ints, got {k!r}")
        if k < 0 or k >= index:
            raise c.fail("refs", f"reference to round {k}, which is not an earlier round")
        earlier = rounds[k]
        if not isinstance(earlier, dict) or not earlier.get("targets"):
            raise c.fail("refs", f"reference to round {k}, which has no target")
    if len(set(refs)) != len(refs):
        raise c.fail("refs", f"repeated round index in {refs}")
    in_question = {int(m) for m in REF_PATTERN.findall(question)}
    if in_question != set(refs):
        raise c.fail(
            "refs", f"question references rounds {sorted(in_question)} but refs lists {sorted(refs)}"
        )


def validate_gcg(record: dict) -> dict:
    """Check a GCG record; returns it unchanged or raises :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    c = _Checker(record.get("id"))
    c.require(record, "id", str)
    _check_image(c, record)
    height, width = _check_size(c, record)
    caption = c.require(record, "caption", str)
    phrases = c.require(record, "phrases", list)
    if not phrases:
        raise c.fail("phrases", "a grounded caption needs at least one phrase")
    previous_end = 0
    for p, phrase in enumerate(phrases):
        prefix = f"phrases[{p}]."
        if not isinstance(phrase, dict):
            raise c.fail(f"phrases[{p}]", "expected an object")
        text = c.require(phrase, "text", str, prefix)
        span = c.require(phrase, "span", list, prefix)
        if len(span) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in span):
            raise c.fail(f"{prefix}span", "expected [start, end] character offsets")
        start, end = span
        if not 0 <= start < end <= len(caption):
            raise c.fail(f"{prefix}span", f"span {span} outside the caption of {len(caption)} chars")
        if start < previous_end:
            raise c.fail(f"{prefix}span", "phrases must be in caption order and not overlap")
        if caption[start:end] != text:
            raise c.fail(f"{prefix}text", f"{text!r} differs from caption[{start}:{end}] = {caption[start:end]!r}")
        previous_end = end
        _check_rle(c, c.require(phrase, "rle", dict, prefix), f"{prefix}rle", height, width)
        if "bbox" in phrase:
            _check_bbox(c, phrase["bbox"], f"{prefix}bbox", height, width)
    return record


def validate_unified(record: dict) -> dict:
    """Check a unified (c, b, m) segmentation record; returns it or raises :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError(f"expected a JSON object, got {type(record).__name__}")
    c = _Checker(record.get("id", record.get("image")))
    _check_image(c, record)
    height = width = None
    if "height" in record or "width" in record:
        height, width = _check_size(c, record)
    task = c.require(record, "task", str)
    if task not in UNIFIED_TASKS:
        raise c.fail("task", f"unknown task {task!r}; one of {', '.join(UNIFIED_TASKS)}")
    annotations = c.require(record, "annotations", list)
    for a, ann in enumerate(annotations):
        prefix = f"annotations[{a}]."
        if not isinstance(ann, dict):
            raise c.fail(f"annotations[{a}]", "expected an object")
        c.require(ann, "text", str, prefix)
        _check_bbox(c, c.require(ann, "bbox", list, prefix), f"{prefix}bbox", height, width)
        rle = ann.get("rle")
        if rle is None:
            if task != "detection" and "rle" not in ann:
                raise c.fail(f"{prefix}rle", "missing (write null for box-only annotations)")
        else:
            _check_rle(c, rle, f"{prefix}rle", height, width)
        _check_unified_extras(c, ann, prefix)
    return record


UNIFIED_SYNTHETIC_PARTS = ("mask", "text")
"""What a tool may have made of a unified annotation (its ``synthetic`` list)."""


def _check_unified_extras(c: _Checker, ann: dict, prefix: str) -> None:
    """The optional annotation fields of a unified record (module docstring)."""
    for flag in ("iscrowd", "isthing"):
        if flag in ann and not isinstance(ann[flag], bool):
            raise c.fail(f"{prefix}{flag}", "expected a bool")
    if "texts" in ann:
        texts = ann["texts"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise c.fail(f"{prefix}texts", "expected a non-empty list of non-empty strings")
    if "synthetic" in ann:
        parts = ann["synthetic"]
        if not isinstance(parts, list) or not set(parts) <= set(UNIFIED_SYNTHETIC_PARTS) \
                or len(set(parts)) != len(parts):
            raise c.fail(f"{prefix}synthetic", f"expected a list of distinct names among "
                                               f"{', '.join(UNIFIED_SYNTHETIC_PARTS)}")


VALIDATORS = {"conversation": validate_conversation, "gcg": validate_gcg, "unified": validate_unified}


def record_kind(record: dict) -> str:
    """Which of :data:`KINDS` a record is, judged by its fields."""
    if isinstance(record, dict):
        if "rounds" in record:
            return "conversation"
        if "phrases" in record or "caption" in record:
            return "gcg"
        if "annotations" in record or "task" in record:
            return "unified"
    raise RecordError("not a conversation, GCG or unified record", record_id=_id_of(record))


def _id_of(record: Any) -> Any:
    return record.get("id") if isinstance(record, dict) else None


def validate_record(record: dict, kind: str | None = None) -> dict:
    """Validate a record of the given kind (guessed from its fields when ``None``)."""
    kind = kind or record_kind(record)
    if kind not in VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r}; one of {', '.join(KINDS)}")
    return VALIDATORS[kind](record)


# --------------------------------------------------------------------------- JSON Lines


def dumps_record(record: dict) -> str:
    """One JSONL line (no newline). Compact and key-order preserving, so equal inputs give
    byte-identical files."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Stream ``(line_number, object)`` pairs from a JSONL file; blank lines are skipped.

    Raises:
        RecordError: naming the file and line of a line that is not a JSON object.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"malformed JSON ({exc.msg} at column {exc.colno})",
                                  path=path, line=number) from None
            if not isinstance(obj, dict):
                raise RecordError(f"expected a JSON object, got {type(obj).__name__}",
                                  path=path, line=number)
            yield number, obj


def read_jsonl(path: str | os.PathLike, kind: str | None = None, validate: bool = True) -> Iterator[dict]:
    """Stream the records of a JSONL file, validating each (``kind`` guessed when ``None``).

    Raises:
        RecordError: with the file, line, record id, round and field of the first bad record.
    """
    for number, obj in iter_jsonl(path):
        if validate:
            try:
                validate_record(obj, kind)
            except RecordError as exc:
                raise exc.located(path=path, line=number) from None
        yield obj


class AtomicWriter:
    """Write a file through a temporary file in the same directory, renamed on success
    (``segllm.files.atomic_write``), counting the records written.

    Use as a context manager; on an exception the temporary file is removed and the target
    (if it existed) is left as it was, so no truncated file is ever left behind::

        with AtomicWriter("out.jsonl") as out:
            out.write_record(record)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.count = 0
        self._file = None
        self._handle = None

    def __enter__(self) -> AtomicWriter:
        # data files are readable by everyone, whatever the umask
        self._file = atomic_write(self.path, permissions=0o644)
        self._handle = self._file.__enter__()
        return self

    def write(self, text: str) -> None:
        self._handle.write(text)

    def write_record(self, record: dict) -> None:
        """Append one record as a JSONL line."""
        self._handle.write(dumps_record(record))
        self._handle.write("\n")
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.__exit__(exc_type, exc, tb)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict], kind: str | None = None,
                validate: bool = True) -> int:
    """Write records to a JSONL file atomically; returns how many were written.

    With ``validate`` each record is checked first; a bad record raises :class:`RecordError`
    (naming the output file and its would-be line) and the target file is left untouched.
    """
    with AtomicWriter(path) as out:
        for record in records:
            if validate:
                try:
                    validate_record(record, kind)
                except RecordError as exc:
                    raise exc.located(path=path, line=out.count + 1) from None
            out.write_record(record)
    return out.count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically (indented, keys in insertion order)."""
    with AtomicWriter(path) as out:
        out.write(json.dumps(obj, ensure_ascii=False, indent=2))
        out.write("\n")
