"""Crash-safe file replacement: write a temp file, fsync it, rename it over, fsync the folder."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from errors import KnowledgeBaseError


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, *chunks: bytes | memoryview) -> None:
    """Replace ``path`` with ``chunks`` so that a crash leaves the old file or the new, whole.

    Raises:
        KnowledgeBaseError: the write failed (disk full, permissions); the old file is intact.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise KnowledgeBaseError(
            f"cannot write {path}: {exc.strerror or exc}; the previous version is unchanged"
        ) from exc
    fsync_dir(path.parent)
