"""Crash-safe publishing: write under a temporary name, fsync, then rename into place.

A reader (a resumed run, another rank, a server loading an exported bundle) then sees either
the complete file or directory or nothing at all, never a torn one, even after a power cut: the
data is on disk before the rename, and the rename is on disk before we go on. Replacing an
existing directory swaps the two atomically (Linux ``renameat2(RENAME_EXCHANGE)``), so the old
tree goes only once the new one is in place.

Failed writes (disk full, permission denied, read-only file system) become one
:class:`StorageError` line naming the path and the fix, instead of torch's ``unexpected pos``
or a raw ``OSError`` traceback: see :func:`writing`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langchain_pandagpt.errors import PandaGPTError

#: Suffix of files and directories still being written; readers ignore them.
TMP_SUFFIX = ".tmp"
#: Suffix of a directory moved aside while its replacement goes in (no ``renameat2``).
OLD_SUFFIX = ".old"

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_FULL = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
#: What torch's zip writer says when a write came up short: it drops the errno.
_TORCH_SHORT_WRITE = ("unexpected pos", "file write failed")


class StorageError(PandaGPTError, OSError):
    """Output could not be written: disk full, permission denied or a read-only file system."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one atomic step; False where the OS or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def recover(final: Path) -> None:
    """Puts back a directory left moved aside (``*.old``) by a crash mid-replacement."""
    old = final.with_name(final.name + OLD_SUFFIX)
    if old.is_dir():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
            _fsync(final.parent)


def publish(tmp: Path, final: Path) -> Path:
    """Renames the finished ``tmp`` (a file or a directory tree) to ``final``, durably.

    An existing ``final`` directory is replaced atomically: the two are exchanged, then the
    old tree (now under ``tmp``) is deleted. Where the exchange is not available, the old
    tree is moved to ``final.old`` first and :func:`recover` restores it after a crash.
    """
    for path in [*sorted(tmp.rglob("*"), reverse=True), tmp] if tmp.is_dir() else [tmp]:
        _fsync(path)
    recover(final)
    if final.is_dir() and not final.is_symlink():
        if _exchange(tmp, final):
            _fsync(final.parent)
            shutil.rmtree(tmp)
            return final
        old = final.with_name(final.name + OLD_SUFFIX)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old, final)
            raise
        _fsync(final.parent)
        shutil.rmtree(old)
        return final
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
    """Deletes leftovers of interrupted writes (``*.tmp``) in ``directory`` and restores
    directories a crash left moved aside (``*.old``)."""
    for path in directory.glob(f"*{OLD_SUFFIX}"):
        recover(path.with_name(path.name.removesuffix(OLD_SUFFIX)))
    for path in directory.glob(f"*{TMP_SUFFIX}"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _error_code(exc: BaseException) -> int | None:
    """The errno behind a failed write, also when a library only kept its text."""
    if isinstance(exc, OSError) and exc.errno in (*_FULL, *_DENIED):
        return exc.errno
    text = str(exc)
    for code in (*_FULL, *_DENIED):
        if os.strerror(code) in text:  # safetensors: "IoError(Os { code: 28, ... })"
            return code
    if any(marker in text for marker in _TORCH_SHORT_WRITE):
        return errno.ENOSPC
    return None


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.is_dir():
            free = float(shutil.disk_usage(folder).free)
            for unit in ("B", "KiB", "MiB", "GiB"):
                if free < 1024 or unit == "GiB":
                    return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
                free /= 1024
    return "unknown"


def storage_problem(
    exc: BaseException, path: Path, setting: str, option: str | None = None
) -> str | None:
    """One line naming the path and what to do, if ``exc`` is a failed write; else None.

    ``setting`` names what chose the location (``"output_dir"``), ``option`` how to change it
    (``"--set output_dir=DIR"``).
    """
    code = _error_code(exc)
    if code is None:
        return None
    filename = exc.filename if isinstance(exc, OSError) and exc.filename else None
    where = Path(os.fsdecode(filename)) if filename is not None else path
    how = f" ({option})" if option else ""
    if code in _FULL:
        what = "disk quota exceeded" if code == errno.EDQUOT else "no space left on the device"
        return (
            f"{where}: {what} ({_free_space(where)} free); free some space or move {setting} "
            f"to a disk with room{how}"
        )
    if code == errno.EROFS:
        return f"{where}: read-only file system; move {setting} to a writable disk{how}"
    folder = where if where.is_dir() else where.parent
    return f"{where}: permission denied; make {folder} writable or move {setting} elsewhere{how}"


@contextmanager
def writing(path: Path, setting: str, option: str | None = None) -> Iterator[None]:
    """Turns a failed write inside the block into a :class:`StorageError` (see
    :func:`storage_problem`); every other exception passes unchanged."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        problem = storage_problem(exc, path, setting, option)
        if problem is None:
            raise
        raise StorageError(problem) from exc
