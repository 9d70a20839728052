"""Atomic files: written to a temporary sibling and moved into place with ``os.replace``.

A reader (or a crash) never sees half a file, and a failed write leaves the old file as it
was. Records, evaluation reports, metric logs and checkpoint state all go through here.
Folders too: :func:`atomic_directory` builds a whole folder beside its target and swaps it in
at the end. Also here: the one rule for relative paths under a root (:func:`escapes_root`),
the usual permissions for what we publish (:func:`publish_permissions`), and the check that a
folder can be written before hours of work go into it (:func:`check_writable_dir`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import posixpath
import shutil
import stat
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


def escapes_root(relative: str) -> bool:
    """Whether a relative path (``/`` or ``\\`` separators) leads out of the folder it is
    relative to: ``a/../../x.png`` does, ``a/../x.png`` does not. Lexical, so a symlink
    inside the root (a common way to lay out data sets) is still followed."""
    normal = posixpath.normpath(relative.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def publish_permissions(path: str | os.PathLike) -> None:
    """Give a folder tree the usual permissions, 0o777 / 0o666 less the umask (0o755 / 0o644
    under the common umask 022), instead of mkdtemp's and mkstemp's owner-only 0o700 / 0o600."""
    umask = _current_umask()
    root = Path(path)
    os.chmod(root, 0o777 & ~umask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~umask, follow_symlinks=False)
        for name in files:
            file = os.path.join(folder, name)
            if not os.path.islink(file):
                executable = os.stat(file).st_mode & stat.S_IXUSR
                os.chmod(file, (0o777 if executable else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling; on success it replaces ``path`` whole, on error
    it is removed and ``path`` is left as it was.

    The swap is two renames (the old folder aside, the new one in, then the old one deleted),
    so a reader sees either the old folder or the new one, never a mix; a crash between the
    renames leaves the old folder beside it as ``.NAME.old-PID``. The new folder gets the
    usual permissions (:func:`publish_permissions`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                dir=path.parent))
    try:
        yield tmp
        publish_permissions(tmp)
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_builds(path: Path) -> None:
    """Remove temporary siblings left by a killed :func:`atomic_directory` (SIGKILL leaves no
    chance to clean up): ``.NAME.PID.*.tmp`` whose process is gone."""
    prefix = f".{path.name}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if entry.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move folder ``src`` to ``dst``, replacing an existing ``dst`` with two renames."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old, dst)  # put the old folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_writable_dir(path: str | os.PathLike) -> None:
    """Create folder ``path`` if needed and prove that a file can be made in it.

    Raises:
        OSError: with a message naming the folder (not writable, or a file is in the way).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot write there ({exc.strerror or exc})") from None
