"""Everything that turns a location, data or a content block into a :class:`MediaItem`,
under one :class:`~langchain_pandagpt.media.policy.MediaPolicy`.

Locations: ``data:`` URLs (base64 or percent-encoded), local files (plain paths and
``file:`` URLs, only with ``allow_local_files``; regular files only, inside ``media_root``
when one is set; they stay on disk until a loader reads them) and ``http(s)`` URLs (only
with ``allow_remote_media``, see :mod:`~langchain_pandagpt.media.remote`). Blocks are
LangChain-shaped plain dicts, v1 (``{"type": "image"|"audio"|"video"|"file",
"base64"|"url", "mime_type", "extras": {"modality"}}``) or v0 (``"source_type":
"base64"|"url"``), so no framework is needed here; a field of the wrong type is a
MediaError too.

When the modality is not given, :func:`~langchain_pandagpt.media.detect.guess_modality`
decides. Every problem raises :class:`~langchain_pandagpt.errors.MediaError` naming the input
(``label``) and the fix.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import DEFAULT_MAX_BYTES, open_regular_file
from langchain_pandagpt.media import remote
from langchain_pandagpt.media.detect import (
    HEADER_BYTES,
    guess_file_modality,
    guess_mime_type,
    guess_modality,
)
from langchain_pandagpt.media.item import MediaItem, check_modality
from langchain_pandagpt.media.policy import MediaPolicy

#: How to make an unclassifiable input usable.
MODALITY_FIX: Final = (
    "send images, audio or video with a known extension or MIME type, name sensor files by "
    "convention (x.depth.png, x.thermal.jpg, x.imu.npy), or declare the modality "
    "(extras={'modality': ...} on a block, a (data, modality) pair)"
)
logger = logging.getLogger(__name__)

_INLINE = "send the data inline (base64 or a data: URL)"
_BLOCK_TYPES: Final = ("image", "audio", "video")
#: The one answer for local paths outside ``media_root``, missing or not regular files, so
#: that errors do not tell which files exist.
_NOT_UNDER_ROOT: Final = "is not a readable media file under media_root"
_ROOT_FIX: Final = (
    "pass the path of a regular file inside media_root (relative paths are relative to it)"
)


def decode_base64(payload: object, label: str) -> bytes:
    """The bytes of a base64 string; invalid or empty payloads raise :class:`MediaError`."""
    if not isinstance(payload, str | bytes):
        raise MediaError(label, f"base64 data must be a string, not {type(payload).__name__}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(label, f"base64 data cannot be decoded ({exc})") from exc
    if not data:
        raise MediaError(label, "is empty (0 bytes)", "send a non-empty media file")
    return data


def parse_data_url(url: str, label: str) -> tuple[bytes, str | None]:
    """Bytes and MIME type of a ``data:`` URL (base64 or percent-encoded)."""
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise MediaError(label, "malformed data: URL (no comma)", "use data:<mime>;base64,<data>")
    mime_type, *params = header.split(";")
    if "base64" in (param.strip().lower() for param in params):
        data = decode_base64(payload, label)
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return data, mime_type.strip().lower() or None


def resolve_location(
    location: str,
    policy: MediaPolicy,
    *,
    modality: str | None = None,
    mime_type: str | None = None,
    label: str | None = None,
) -> MediaItem:
    """The media item behind a path or URL: bytes for ``data:`` and ``http(s)``, the path for
    local files. ``mime_type`` (e.g. a block's) helps detection when ``modality`` is unknown;
    ``label`` names the input in errors (default: the location, data URLs shortened)."""
    if not isinstance(location, str):
        raise MediaError(
            label or f"<{type(location).__name__}>",
            f"a location must be a string, not {type(location).__name__}",
        )
    label = label or _location_label(location)
    try:
        scheme = urllib.parse.urlsplit(location).scheme.lower()
    except ValueError as exc:
        raise MediaError(label, f"is not a valid path or URL ({exc})") from exc
    if scheme == "data":
        data, url_mime = parse_data_url(location, label)
        return _in_memory(data, label, modality=modality, mime_type=mime_type or url_mime)
    if scheme in remote.REMOTE_SCHEMES:
        if not policy.allow_remote_media:
            raise MediaError(
                label,
                f"remote media are disabled{_detail(location, label)}",
                f"set allow_remote_media=True to fetch http(s) URLs, or {_INLINE}",
            )
        data, content_type = remote.fetch_remote_media(
            location,
            policy.remote_media_max_bytes,
            policy.remote_media_timeout,
            limit_name=policy.max_bytes_setting,
            allow_hosts=policy.remote_allow_hosts,
            label=label,
        )
        file_name = urllib.parse.urlsplit(location).path
        return _in_memory(
            data, label, modality=modality, mime_type=mime_type or content_type, name=file_name
        )
    if scheme == "file" or len(scheme) <= 1:  # "file:", no scheme, or a Windows drive letter
        if not policy.allow_local_files:
            raise MediaError(
                label,
                f"local files are disabled{_detail(location, label)}",
                f"set allow_local_files=True, or {_INLINE}",
            )
        path = _local_path(location, scheme == "file", label, policy.media_root)
        modality = modality or guess_file_modality(path, mime_type=mime_type, source=label)
        if modality is None:
            raise MediaError(
                label, _unknown_type(mime_type or guess_mime_type(path.name)), MODALITY_FIX
            )
        size = path.stat().st_size
        if modality != "video" and size > DEFAULT_MAX_BYTES:  # videos are streamed, not read
            raise MediaError(
                label, f"file is {size} bytes, over the {DEFAULT_MAX_BYTES}-byte limit"
            )
        return MediaItem(check_modality(modality, label), str(path), name=label)
    raise MediaError(
        label, f"unsupported URL scheme {scheme!r}", "use a path, or a file:, data: or http(s): URL"
    )


def resolve_data(
    data: object, modality: str, policy: MediaPolicy, *, label: str | None = None
) -> MediaItem:
    """The media item of ``data`` (a path or URL, bytes, an array or a tensor) declared as
    ``modality``. Audio and video must be encoded files: their arrays are refused."""
    check_modality(modality, label or f"<{modality} data>")
    if isinstance(data, str | os.PathLike):
        return resolve_location(os.fspath(data), policy, modality=modality, label=label)
    if isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        if not payload:
            raise MediaError(label or f"<{modality} bytes>", "is empty (0 bytes)")
        return MediaItem(modality, payload, name=label)
    if isinstance(data, np.ndarray | torch.Tensor):
        if modality in ("audio", "video"):
            raise MediaError(
                label or f"<{modality} array>",
                f"{modality} arrays are not accepted",
                "pass the encoded file as a path or bytes",
            )
        return MediaItem(modality, data, name=label)
    raise MediaError(
        label or f"<{type(data).__name__}>",
        f"unsupported {modality} data type {type(data).__name__}",
        "pass a path or URL, bytes, a numpy array or a tensor",
    )


def block_to_media_item(
    block: Mapping[str, Any], policy: MediaPolicy, label: str | None = None
) -> MediaItem:
    """The :class:`MediaItem` of a v1 ``image``/``audio``/``video``/``file`` block (or a v0
    ``source_type`` block).

    The modality is ``extras["modality"]``, else the block type (image, audio, video), else
    detected from the file name (``filename``), the MIME type and the bytes. ``label`` names
    the block in errors (e.g. ``"message 0, content block 2 (image)"``).
    """
    kind = block.get("type")
    label = label or f"<{kind} block>"
    extras = block.get("extras")
    extras = extras if isinstance(extras, Mapping) else {}
    declared = extras.get("modality")
    if declared is not None:
        modality: str | None = check_modality(declared, label)
    else:
        modality = str(kind) if kind in _BLOCK_TYPES else None
    mime_type = _optional_string(block, "mime_type", label)
    if block.get("base64") is not None or block.get("source_type") == "base64":
        payload = block["base64"] if block.get("base64") is not None else block.get("data")
        data = decode_base64(payload, label)
        name = _optional_string(block, "filename", label) or _optional_string(
            extras, "filename", label
        )
        return _in_memory(data, label, modality=modality, mime_type=mime_type, name=name)
    url = _optional_string(block, "url", label)
    if url:
        return resolve_location(url, policy, modality=modality, mime_type=mime_type, label=label)
    if block.get("file_id") or block.get("source_type") == "id":
        raise MediaError(
            label,
            "file_id references cannot be resolved",
            f"send the data as base64 or a url ({_INLINE})",
        )
    raise MediaError(
        label, "has neither base64 data nor a url", "set base64 (with mime_type) or url"
    )


def _in_memory(
    data: bytes,
    label: str,
    *,
    modality: str | None,
    mime_type: str | None,
    name: str | None = None,
) -> MediaItem:
    """Bytes as a media item, classified from ``name``, ``mime_type`` and the bytes."""
    if not data:
        raise MediaError(label, "is empty (0 bytes)", "send a non-empty media file")
    if modality is None:
        modality = guess_modality(name, mime_type=mime_type, header=data[:HEADER_BYTES])
        if modality is None:
            raise MediaError(label, _unknown_type(mime_type), MODALITY_FIX)
    return MediaItem(check_modality(modality, label), data, name=label)


def _local_path(location: str, is_file_url: bool, label: str, root: Path | None) -> Path:
    """The checked path of a local location: a regular file (never a device, FIFO, socket or
    /proc or /sys file), and with a ``root``, its resolved path inside that root (symlinks
    resolved; relative paths are relative to the root), else one uniform error."""
    if is_file_url:
        parts = urllib.parse.urlsplit(location)
        if parts.netloc not in ("", "localhost"):
            raise MediaError(
                label, f"file: URL on another host ({parts.netloc})", "use file:///absolute/path"
            )
        path = Path(urllib.request.url2pathname(parts.path))
    else:
        path = Path(location).expanduser()
    if root is None:
        try:
            open_regular_file(path, label, max_bytes=None).close()
        except MediaError as exc:
            problem = f"{exc.problem}{_detail(str(path), label)}"
            raise MediaError(label, problem, "check the path") from None
        return path
    try:
        resolved = (root / path).resolve(strict=True)  # root / an absolute path is the path
        if not resolved.is_relative_to(root):
            raise MediaError(label, "outside media_root")
        open_regular_file(resolved, label, max_bytes=None).close()
    except (OSError, RuntimeError, ValueError) as exc:  # MediaError is a ValueError
        logger.debug("local media %r refused: %s", location, exc)
        raise MediaError(label, _NOT_UNDER_ROOT, _ROOT_FIX) from None
    return resolved


def _optional_string(block: Mapping[str, Any], key: str, label: str) -> str | None:
    """``block[key]`` if it is a string, ``None`` if absent; any other value is refused."""
    value = block.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MediaError(label, f"{key!r} must be a string, not {type(value).__name__}")


def _location_label(location: str) -> str:
    """A location short enough for an error message (data URLs are cut)."""
    if location[:5].lower() == "data:" and len(location) > 40:
        return f"{location[:40]}..."
    return location


def _detail(detail: str, label: str) -> str:
    """``": <detail>"`` unless the label already says it."""
    return "" if detail == label else f": {detail}"


def _unknown_type(mime_type: str | None) -> str:
    return f"unknown media type ({mime_type})" if mime_type else "unknown media type"
