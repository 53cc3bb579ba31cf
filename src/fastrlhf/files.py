"""Atomic writes: build a file or directory under a temporary name beside its destination, then rename.

A reader (or a crash) never sees a half-written file or directory: a rename within one directory is
atomic on POSIX. Temporary names start with a dot so leftovers are hidden and easy to spot.
- `atomic_path(dest)`: a temporary file path, renamed over `dest` on success.
- `atomic_dir(dest)`: a temporary directory, swapped in for `dest` on success (an existing `dest`
  is moved aside first and deleted only after the swap).

Both give what they wrote the permissions `open()` / `mkdir()` would under the current umask
(mkstemp / mkdtemp make them private), and both are durable: the new contents are fsynced before
the rename and the parent directory after it, so a kill -9 or a power cut leaves either the old
`dest` or the complete new one, never a renamed but empty file. The cost is one fsync per file
written plus one per directory, nothing for untouched data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it over `dest`, else delete it.

    The caller writes the temporary path (and closes what it opened); the parent directory must exist.
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _settle(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
        _fsync(dest.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest`, else it is deleted."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp", dir=dest.parent))
    try:
        yield tmp
        # mkdtemp (and safetensors' writer) make things private; children before their directory
        file_mode, dir_mode = 0o666 & ~_umask(), 0o777 & ~_umask()
        for root, dirs, files in os.walk(tmp, topdown=False):
            for name in files:
                _settle(Path(root, name), file_mode)
            for name in dirs:
                _settle(Path(root, name), dir_mode)
        _settle(tmp, dir_mode)
        old = dest.with_name(f".{dest.name}.old") if dest.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        _fsync(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _settle(path: Path, mode: int) -> None:
    """chmod `path` to `mode` (what `open()` / `mkdir()` would give: 0o666 / 0o777 & ~umask), then fsync it."""
    if path.is_symlink():
        return  # links have no permissions of their own, and their targets are not ours to touch
    os.chmod(path, mode)
    _fsync(path)


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory's: its entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
