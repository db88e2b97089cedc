"""LangChain content blocks for PandaGPT's media, in both directions.

Images, audio and video travel in the standard v1 ``image``/``audio``/``video`` blocks. Depth
maps, thermal images and IMU windows have no block type of their own, so they travel as standard
``file`` blocks whose ``extras["modality"]`` says what they are: other LangChain integrations
see an opaque file, tracing treats them as data, and ``ChatPandaGPT`` routes them to the right
ImageBind tower. :func:`create_depth_block`, :func:`create_thermal_block` and
:func:`create_imu_block` build them from a path, file bytes or a numpy array.

:func:`block_to_media_item` turns one (``content_blocks``-normalised) block into a
:class:`~langchain_pandagpt.conversation.MediaItem`. Data can come as

* ``base64`` (+ ``mime_type``), or a ``data:`` URL;
* a local file: ``url="file:///abs/path"`` or a plain path in ``url`` (``"photo.png"``),
  only while :attr:`MediaPolicy.allow_local_files` (turn it off on servers);
* ``http(s)`` URLs, fetched only with :attr:`MediaPolicy.allow_remote_media`, within a size
  and time limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np
from langchain_core.messages.content import FileContentBlock, create_file_block

from langchain_pandagpt.conversation import MEDIA_MODALITIES, MediaItem
from langchain_pandagpt.errors import MediaError

#: Media that travel as ``file`` blocks tagged with ``extras["modality"]``.
SENSOR_MODALITIES: Final[tuple[str, ...]] = ("depth", "thermal", "imu")
NPY_MIME_TYPE: Final = "application/x-npy"
_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x93NUMPY", NPY_MIME_TYPE),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_SUFFIX_MIME: Final[dict[str, str]] = {
    ".npy": NPY_MIME_TYPE,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
_BLOCK_MODALITY: Final[dict[str, str]] = {"image": "image", "audio": "audio", "video": "video"}

SensorData: TypeAlias = str | os.PathLike[str] | bytes | np.ndarray


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def create_depth_block(
    data: SensorData, *, mime_type: str | None = None, **extras: Any
) -> FileContentBlock:
    """A ``file`` block holding a depth map (metres as floats, millimetres as integers).

    ``data``: a path (sent as a ``file://`` URL), encoded bytes (16-bit PNG, TIFF, ``.npy``)
    or an (H, W) array (sent as ``.npy``). ``extras`` (``units``, ``intrinsics``...) travel
    along in ``extras``.
    """
    return _sensor_block("depth", data, mime_type, extras)


def create_thermal_block(
    data: SensorData, *, mime_type: str | None = None, **extras: Any
) -> FileContentBlock:
    """A ``file`` block holding a thermal image (a path, image bytes, or an (H, W) array)."""
    return _sensor_block("thermal", data, mime_type, extras)


def create_imu_block(
    data: SensorData, *, mime_type: str | None = None, **extras: Any
) -> FileContentBlock:
    """A ``file`` block holding an IMU window: (6, 2000) or (2000, 6) accelerometer and
    gyroscope samples, as a ``.npy`` path, ``.npy`` bytes or an array."""
    return _sensor_block("imu", data, mime_type, extras)


def is_sensor_block(block: Mapping[str, Any]) -> bool:
    """Whether ``block`` is a depth, thermal or IMU ``file`` block."""
    extras = block.get("extras") or {}
    return block.get("type") == "file" and extras.get("modality") in SENSOR_MODALITIES


def _sensor_block(
    modality: str, data: SensorData, mime_type: str | None, extras: dict[str, Any]
) -> FileContentBlock:
    if isinstance(data, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, data, allow_pickle=False)
        payload = base64.b64encode(buffer.getvalue()).decode("ascii")
        return create_file_block(
            base64=payload, mime_type=mime_type or NPY_MIME_TYPE, modality=modality, **extras
        )
    if isinstance(data, bytes):
        payload = base64.b64encode(data).decode("ascii")
        mime = mime_type or sniff_mime_type(data) or "application/octet-stream"
        return create_file_block(base64=payload, mime_type=mime, modality=modality, **extras)
    if isinstance(data, str | os.PathLike):
        path = Path(data).expanduser().resolve()
        if not path.is_file():
            raise MediaError(str(path), "file not found", "check the path")
        mime = mime_type or _guess_mime_type(str(path)) or "application/octet-stream"
        return create_file_block(url=path.as_uri(), mime_type=mime, modality=modality, **extras)
    raise TypeError(
        f"{modality} data must be a path, bytes or a numpy array, not {type(data).__name__}"
    )


def _guess_mime_type(data: str | bytes) -> str | None:
    """MIME type of a local path (from its suffix) or of bytes (from their signature)."""
    if isinstance(data, bytes):
        return sniff_mime_type(data)
    suffix = Path(data).suffix.lower()
    return _SUFFIX_MIME.get(suffix) or mimetypes.guess_type(data, strict=False)[0]


def sniff_mime_type(data: bytes) -> str | None:
    """MIME type of ``.npy``, PNG, JPEG and TIFF bytes from their signature."""
    return next((mime for magic, mime in _SIGNATURES if data.startswith(magic)), None)


# --------------------------------------------------------------------------------------------
# Reading blocks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may be read from (see the module docstring)."""

    allow_local_files: bool = True
    allow_remote_media: bool = False
    remote_media_max_bytes: int = 50 * 1024 * 1024
    remote_media_timeout: float = 10.0


def block_to_media_item(block: Mapping[str, Any], policy: MediaPolicy, label: str) -> MediaItem:
    """The :class:`MediaItem` of a v1 ``image``/``audio``/``video``/``file`` block.

    ``label`` names the block in errors (e.g. ``"message 0, content block 2 (image)"``); every
    problem raises :class:`~langchain_pandagpt.errors.MediaError` (a ``ValueError``).
    """
    data, mime_type = _block_data(block, policy, label)
    modality = _modality(block, mime_type, data, label)
    return MediaItem(modality, data, name=label)


def _block_data(
    block: Mapping[str, Any], policy: MediaPolicy, label: str
) -> tuple[str | bytes, str | None]:
    """The block's bytes (or local path) and MIME type."""
    mime_type = block.get("mime_type")
    if block.get("base64"):
        return _decode_base64(block["base64"], label), mime_type
    url = block.get("url")
    if isinstance(url, str) and url:
        data, url_mime = _read_url(url, policy, label)
        return data, mime_type or url_mime
    if block.get("file_id"):
        raise MediaError(
            label, "file_id references cannot be resolved", "send the data as base64 or a url"
        )
    raise MediaError(label, "has no data", "set base64 (with mime_type) or url")


def _decode_base64(payload: str, label: str) -> bytes:
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(label, f"base64 data cannot be decoded ({exc})") from exc
    if not data:
        raise MediaError(label, "is empty (0 bytes)")
    return data


def _read_url(url: str, policy: MediaPolicy, label: str) -> tuple[str | bytes, str | None]:
    """Bytes (``data:``, http) or a local path (``file:``, plain paths) behind ``url``."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "data":
        return parse_data_url(url, label)
    if scheme in ("http", "https"):
        if not policy.allow_remote_media:
            raise MediaError(
                label,
                f"remote media ({url}) is disabled",
                "set allow_remote_media=True or send the data as base64",
            )
        return fetch_remote_media(
            url,
            policy.remote_media_max_bytes,
            policy.remote_media_timeout,
            limit_name="remote_media_max_bytes",
        )
    if scheme == "file" or len(scheme) <= 1:  # "file:", no scheme, or a Windows drive letter
        if not policy.allow_local_files:
            raise MediaError(
                label,
                f"local files are disabled ({url})",
                "send the data as base64, or set allow_local_files=True",
            )
        return _local_path(url, scheme == "file", label), None
    raise MediaError(label, f"unsupported URL scheme {scheme!r}", "use data:, file: or http(s):")


def parse_data_url(url: str, label: str) -> tuple[bytes, str | None]:
    """Bytes and MIME type of a ``data:`` URL (base64 or percent-encoded)."""
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise MediaError(label, "malformed data: URL (no comma)", "use data:<mime>;base64,<data>")
    mime_type, *params = header.split(";")
    if "base64" in (param.strip().lower() for param in params):
        data = _decode_base64(payload, label)
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return data, mime_type.strip().lower() or None


def _local_path(url: str, is_file_url: bool, label: str) -> str:
    if is_file_url:
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise MediaError(label, f"file URL on another host ({parts.netloc})")
        path = Path(urllib.request.url2pathname(parts.path))
    else:
        path = Path(url).expanduser()
    if not path.is_file():
        raise MediaError(label, f"file not found: {path}", "check the path")
    return str(path)


def fetch_remote_media(
    url: str, max_bytes: int, timeout: float, *, limit_name: str = "max_bytes"
) -> tuple[bytes, str | None]:
    """Bytes and Content-Type of an http(s) URL, refusing anything over ``max_bytes``.

    ``limit_name`` is the caller's setting for the cap, so the error says what to raise.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "langchain-pandagpt"})
    too_big = f"over the {limit_name} limit of {max_bytes} bytes"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise MediaError(url, f"is {length} bytes, {too_big}")
            data = response.read(max_bytes + 1)
            content_type = response.headers.get_content_type()
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise MediaError(url, f"cannot be fetched ({getattr(exc, 'reason', exc)})") from exc
    if len(data) > max_bytes:
        raise MediaError(url, f"is {too_big}")
    generic = content_type in ("application/octet-stream", "text/plain")
    return data, None if generic else content_type


def _modality(
    block: Mapping[str, Any], mime_type: str | None, data: str | bytes, label: str
) -> str:
    """Which ImageBind input a block is: its ``extras["modality"]``, else its type or MIME."""
    declared = (block.get("extras") or {}).get("modality")
    if declared is not None:
        if declared not in MEDIA_MODALITIES:
            raise MediaError(
                label,
                f"unknown modality {declared!r}",
                f"use one of {', '.join(MEDIA_MODALITIES)}",
            )
        return str(declared)
    kind = _BLOCK_MODALITY.get(str(block.get("type")))
    if kind is not None:
        return kind
    if mime_type is None:
        mime_type = _guess_mime_type(data)
    major = (mime_type or "").split("/", 1)[0]
    if major in _BLOCK_MODALITY:
        return _BLOCK_MODALITY[major]
    raise MediaError(
        label,
        f"PandaGPT cannot read a file of type {mime_type or 'unknown'}",
        "send images, audio or video, or tag depth/thermal/IMU files with "
        "extras={'modality': ...} (see create_depth_block)",
    )
