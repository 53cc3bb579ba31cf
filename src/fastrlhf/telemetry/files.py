"""Atomic file replacement: write to a temporary file beside the destination, then rename.

A reader (or a crash) never sees a half-written file: `os.replace` within one directory is atomic
on POSIX and Windows. The temporary file starts with `.tmp-` so a leftover one is easy to spot.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it over `dest`, else delete it."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _normal_permissions(tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _normal_permissions(path: Path) -> None:
    """mkstemp creates files 0600; give the file the permissions `open()` would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
