"""Uniform access to media given as paths, bytes or file objects.

The loaders accept many input forms; this module turns each into bytes or a readable binary
stream and gives every input a short name for error messages, so that no loader has to
special-case them.

Local paths are opened by :func:`open_regular_file` only: regular files, never devices, FIFOs,
sockets or the pseudo-files of ``/proc``, ``/sys`` and ``/dev`` (a FIFO or ``/dev/zero``
would block or never end), and never larger than the caller's byte cap.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO, Final, TypeAlias

from langchain_pandagpt.errors import MediaError

#: What every media loader accepts for one item (array-like inputs are handled per modality).
MediaSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

#: Refuse files larger than this by default (1 GiB): nothing ImageBind needs is this big.
DEFAULT_MAX_BYTES = 1 << 30
#: Trees of pseudo-files: they look like regular files (``/proc/self/environ``) but are not
#: media, and some never end (``/proc/kmsg``).
PSEUDO_FILE_ROOTS: Final = ("/proc", "/sys", "/dev")
_NOT_REGULAR_FIX = "pass a regular file, not a directory, device, pipe or /proc or /sys file"


def describe_source(source: object) -> str:
    """A short description of ``source`` for error messages (never its full content)."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<bytes: {len(source)} B>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(source).__name__}>"


def is_pseudo_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, symlinks resolved, lies under ``/proc``, ``/sys`` or ``/dev``."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in PSEUDO_FILE_ROOTS)


def open_regular_file(
    path: str | os.PathLike[str], name: str | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES
) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file of at most ``max_bytes``.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on that descriptor, so
    a FIFO or device is refused without blocking, and what is read is what was checked.
    Symlinks are followed; pseudo-files (:data:`PSEUDO_FILE_ROOTS`) are refused. ``None``
    as ``max_bytes`` means no cap (videos are streamed, never read whole). Every refusal is a
    :class:`MediaError` naming ``name`` (default: the path).
    """
    name = name or os.fspath(path)
    path = Path(path).expanduser()
    if is_pseudo_file(path):
        raise MediaError(name, "is not a regular file", _NOT_REGULAR_FIX)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise MediaError(name, "file not found", "check the path") from None
    except OSError as exc:
        raise MediaError(name, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(name, "is not a regular file", _NOT_REGULAR_FIX)
        if max_bytes is not None and info.st_size > max_bytes:
            raise MediaError(name, f"file is {info.st_size} bytes, over the {max_bytes}-byte limit")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_source_bytes(source: MediaSource, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of ``source``; missing, unreadable, empty or oversized inputs raise MediaError.

    Paths must be regular files (see :func:`open_regular_file`)."""
    name = describe_source(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        with open_regular_file(source, name, max_bytes) as handle:
            try:
                data = handle.read(max_bytes + 1)
            except OSError as exc:
                raise MediaError(name, f"cannot be read: {exc.strerror or exc}") from exc
    elif hasattr(source, "read"):
        try:
            data = source.read(max_bytes + 1)
        except OSError as exc:
            raise MediaError(name, f"cannot be read: {exc}") from exc
        if not isinstance(data, bytes | bytearray):
            raise MediaError(name, "file object is not opened in binary mode", "open it with 'rb'")
        data = bytes(data)
    else:
        raise MediaError(
            name,
            f"unsupported input type {type(source).__name__}",
            "pass a path, bytes or a binary file object",
        )
    if len(data) > max_bytes:
        raise MediaError(name, f"input is over the {max_bytes}-byte limit")
    if not data:
        raise MediaError(name, "is empty (0 bytes)", "pass a non-empty media file")
    return data


def open_source(source: MediaSource, max_bytes: int = DEFAULT_MAX_BYTES) -> BinaryIO:
    """A seekable in-memory binary stream over ``source`` (see :func:`read_source_bytes`)."""
    stream = io.BytesIO(read_source_bytes(source, max_bytes))
    stream.name = describe_source(source)
    return stream
