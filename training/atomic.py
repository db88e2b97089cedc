"""Crash-safe publishing: write under a temporary name, fsync, then rename into place.

A reader (a resumed run, another rank) then sees either the complete file or directory or
nothing at all, never a torn one, even after a power cut: the data is on disk before the
rename, and the rename is on disk before we go on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

#: Suffix of files and directories still being written; readers ignore them.
TMP_SUFFIX = ".tmp"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> Path:
    """Renames the finished ``tmp`` (a file or a directory tree) to ``final``, durably."""
    for path in [*sorted(tmp.rglob("*"), reverse=True), tmp] if tmp.is_dir() else [tmp]:
        _fsync(path)
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    return final


def discard(path: Path) -> None:
    """Deletes a published directory; it is renamed out of sight first, so a crash midway
    leaves a stale ``*.tmp`` rather than a half-deleted directory under its real name."""
    doomed = path.with_name(path.name + TMP_SUFFIX)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def remove_stale(directory: Path) -> None:
    """Deletes leftovers of interrupted writes (``*.tmp``) in ``directory``."""
    for path in directory.glob(f"*{TMP_SUFFIX}"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
