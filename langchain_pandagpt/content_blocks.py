"""LangChain content blocks for PandaGPT's media, in both directions.

Images, audio and video travel in the standard v1 ``image``/``audio``/``video`` blocks. Depth
maps, thermal images and IMU windows have no block type of their own, so they travel as standard
``file`` blocks whose ``extras["modality"]`` says what they are: other LangChain integrations
see an opaque file, tracing treats them as data, and ``ChatPandaGPT`` routes them to the right
ImageBind tower. :func:`create_depth_block`, :func:`create_thermal_block` and
:func:`create_imu_block` build them from a path, file bytes or a numpy array.

Reading blocks is framework-free and lives in :mod:`langchain_pandagpt.media`:
:func:`block_to_media_item` turns one (``content_blocks``-normalised) block into a
:class:`~langchain_pandagpt.media.item.MediaItem` under a :class:`MediaPolicy` (base64 and
``data:`` URLs always; local files only with ``allow_local_files``; ``http(s)`` URLs only with
``allow_remote_media``, within a size and time limit). Those names are re-exported here so
existing imports keep working.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np
from langchain_core.messages.content import FileContentBlock, create_file_block

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media.detect import NPY_MIME_TYPE, guess_mime_type, sniff_mime_type
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.media.remote import fetch_remote_media
from langchain_pandagpt.media.sources import block_to_media_item, parse_data_url

__all__ = [
    "NPY_MIME_TYPE",
    "SENSOR_MODALITIES",
    "MediaPolicy",
    "SensorData",
    "block_to_media_item",
    "create_depth_block",
    "create_imu_block",
    "create_thermal_block",
    "fetch_remote_media",
    "is_sensor_block",
    "parse_data_url",
    "sniff_mime_type",
]

#: Media that travel as ``file`` blocks tagged with ``extras["modality"]``.
SENSOR_MODALITIES: Final[tuple[str, ...]] = ("depth", "thermal", "imu")

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
        mime = mime_type or guess_mime_type(path.name) or "application/octet-stream"
        return create_file_block(url=path.as_uri(), mime_type=mime, modality=modality, **extras)
    raise TypeError(
        f"{modality} data must be a path, bytes or a numpy array, not {type(data).__name__}"
    )
