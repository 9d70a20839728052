"""Atomic files: written to a temporary sibling and moved into place with ``os.replace``.

A reader (or a crash) never sees half a file, and a failed write leaves the old file as it
was. Records, evaluation reports, metric logs and checkpoint state all go through here.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *,
                 permissions: int | None = None) -> Iterator[io.IOBase]:
    """Open a temporary sibling of ``path``; on success it replaces ``path``, on error it is removed.

    ``mode`` is ``"w"`` (UTF-8 text, ``\\n`` line ends) or ``"wb"``. The file is flushed and
    fsynced before the rename. ``permissions``: the new file's mode bits; by default what
    ``open()`` gives (0o666 less the umask), not mkstemp's 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask() if permissions is None else permissions)
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
