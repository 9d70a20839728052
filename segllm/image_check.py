"""Check every image a run will read before the run starts (training, ``segllm eval --model``).

A missing, unreadable or wrongly sized image would otherwise surface hours into a run, as a
path in a traceback, and a resumed run would stop at the same step again. The check is fast:
each file's header is opened (PIL reads the size without decoding pixels), each distinct file
once, with a progress bar. The first problem raises :class:`ImageCheckError` naming the JSONL
file and line, the record id and the image file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from segllm.files import escapes_root


class ImageCheckError(ValueError):
    """An image a run needs is missing, unreadable, outside its root or of the wrong size."""


def check_record_images(jsonl: str | os.PathLike, records: Sequence[dict], image_root: str | os.PathLike,
                        *, progress: bool = False, desc: str = "check images") -> int:
    """Check the image of every record (each a dict with ``image``, ``height``, ``width``)
    of one JSONL file against ``image_root``; return how many distinct files were opened.

    ``records`` are the file's records in order (blank lines skipped); the line of a bad
    record is found again only when there is one.
    """
    from tqdm import tqdm

    root = Path(image_root)
    sizes: dict[Path, tuple[int, int] | str] = {}
    for index, record in enumerate(tqdm(records, desc=desc, unit="img", disable=not progress,
                                        dynamic_ncols=True)):
        problem = _record_problem(record, root, sizes)
        if problem is not None:
            line = _line_of_record(jsonl, index)
            raise ImageCheckError(f"{jsonl}:{line}, record {record.get('id')!r}: {problem}")
    return len(sizes)


def _record_problem(record: dict, root: Path, sizes: dict) -> str | None:
    problem = _image_problem(record.get("image"), record, root, sizes)
    for frame in record.get("reference_frames") or []:  # a video record's frames: same size
        problem = problem or _image_problem(frame, record, root, sizes, what="reference frame")
    return problem


def _image_problem(relative, record: dict, root: Path, sizes: dict,
                   what: str = "image") -> str | None:
    if not isinstance(relative, str) or not relative:
        return f"no {what!r} path"
    if os.path.isabs(relative) or escapes_root(relative):
        return f"{what} path {relative!r} leads out of the image root {root}"
    path = root / relative
    if path not in sizes:
        sizes[path] = _header_size(path)
    size = sizes[path]
    if isinstance(size, str):
        return f"{what} {path}: {size}"
    want = (record.get("width"), record.get("height"))
    if all(isinstance(v, int) for v in want) and size != want:
        return (f"{what} {path} is {size[0]}x{size[1]} (w x h), the record says "
                f"{want[0]}x{want[1]}")
    return None


def _header_size(path: Path) -> tuple[int, int] | str:
    """``(width, height)`` from the file's header, or what is wrong with the file."""
    from PIL import Image

    if not path.is_file():
        return "not found"
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # PIL raises many types for a damaged file (OSError, SyntaxError...)
        return f"not a readable image ({type(exc).__name__}: {exc})"


def _line_of_record(jsonl: str | os.PathLike, index: int) -> int | None:
    """The 1-based line of the ``index``-th record (non-blank line) of a JSONL file."""
    try:
        with open(jsonl, encoding="utf-8") as handle:
            seen = -1
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    seen += 1
                    if seen == index:
                        return number
    except OSError:
        return None
    return None
