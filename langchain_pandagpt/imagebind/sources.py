"""Uniform access to media given as paths, bytes or file objects.

The loaders accept many input forms; this module turns each into bytes or a readable binary
stream and gives every input a short name for error messages, so that no loader has to
special-case them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, TypeAlias

from langchain_pandagpt.errors import MediaError

#: What every media loader accepts for one item (array-like inputs are handled per modality).
MediaSource: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO

#: Refuse files larger than this by default (1 GiB): nothing ImageBind needs is this big.
DEFAULT_MAX_BYTES = 1 << 30


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


def read_source_bytes(source: MediaSource, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """All bytes of ``source``; missing, unreadable, empty or oversized inputs raise MediaError."""
    name = describe_source(source)
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if not path.exists():
            raise MediaError(name, "file not found", "check the path")
        if not path.is_file():
            raise MediaError(name, "is not a regular file", "pass a file, not a directory")
        size = path.stat().st_size
        if size > max_bytes:
            raise MediaError(name, f"file is {size} bytes, over the {max_bytes}-byte limit")
        try:
            data = path.read_bytes()
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
