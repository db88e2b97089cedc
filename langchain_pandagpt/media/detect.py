"""Which medium a file is: one MIME table, magic-byte sniffing, name hints, ``.npy`` shapes.

Every path that has to classify media (content blocks, the embeddings, the server's parts,
media folders) asks :func:`guess_modality`, so a file is the same medium everywhere.
"""

from __future__ import annotations

import io
import mimetypes
import os
from pathlib import Path
from typing import Final

import numpy as np

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import open_regular_file

#: MIME type used for NumPy ``.npy`` files (IMU windows, depth maps).
NPY_MIME_TYPE: Final = "application/x-npy"
#: How many leading bytes :func:`guess_modality` needs (signatures and ``.npy`` headers).
HEADER_BYTES: Final = 4096
#: Extensions whose MIME type must not depend on the host's ``mime.types`` files.
_EXTENSION_MIME: Final[dict[str, str]] = {
    ".npy": NPY_MIME_TYPE,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}
#: Leading bytes of the formats PandaGPT reads.
_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x93NUMPY", NPY_MIME_TYPE),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
)
#: RIFF containers, by the form type at bytes 8-12.
_RIFF_FORMS: Final[dict[bytes, str]] = {
    b"WAVE": "audio/wav",
    b"WEBP": "image/webp",
    b"AVI ": "video/x-msvideo",
}
#: Name hints for modalities that share file formats with others: ``room.depth.png``,
#: ``cam.thermal.jpg``, ``walk.imu.npy``.
_NAME_HINTS: Final[dict[str, str]] = {".depth": "depth", ".thermal": "thermal", ".imu": "imu"}
_IMU_SHAPES: Final = ((6, 2000), (2000, 6))


def guess_mime_type(name: str) -> str | None:
    """MIME type of a file name or URL path, from its extension (``None`` when unknown)."""
    if not isinstance(name, str):
        return None
    suffix = Path(name).suffix.lower()
    return _EXTENSION_MIME.get(suffix) or mimetypes.guess_type(name, strict=False)[0]


def sniff_mime_type(data: bytes) -> str | None:
    """MIME type of image, audio, video and ``.npy`` bytes from their signature."""
    if data[:4] == b"RIFF":
        return _RIFF_FORMS.get(data[8:12])
    if data[4:8] == b"ftyp":  # ISO base media: MP4, M4A, MOV
        brand = data[8:12]
        if brand == b"M4A ":
            return "audio/mp4"
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    return next((mime for magic, mime in _SIGNATURES if data.startswith(magic)), None)


def npy_shape(header: bytes) -> tuple[int, ...] | None:
    """The array shape stored in the first bytes of a ``.npy`` file, or ``None``."""
    stream = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError, EOFError):
        return None
    return tuple(shape)


def name_hint(name: str) -> str | None:
    """The modality a name declares before its extension (``x.depth.png`` -> ``depth``)."""
    if not isinstance(name, str):
        return None
    suffixes = [suffix.lower() for suffix in Path(name).suffixes]
    return _NAME_HINTS.get(suffixes[-2]) if len(suffixes) >= 2 else None


def guess_modality(
    name: str | None = None, *, mime_type: str | None = None, header: bytes | None = None
) -> str | None:
    """The media modality of a file from its name, MIME type and leading bytes.

    Rules, first match wins: a name hint before the extension (``x.depth.png``,
    ``x.thermal.jpg``, ``x.imu.npy``); then the first of ``mime_type``, the name's MIME type
    and the MIME type sniffed from ``header`` that says ``image/*``, ``audio/*`` or
    ``video/*``, or is a ``.npy`` array (with ``header``) of shape (6, 2000) or (2000, 6),
    which is IMU, or (H, W) or (H, W, 1), which is a depth map. Thermal images and 16-bit
    depth PNGs are ordinary images to a MIME sniffer, hence the name hints. Returns ``None``
    when nothing matches; a ``name`` or ``mime_type`` that is not a string (from a malformed
    request) counts as absent.
    """
    name = name if isinstance(name, str) else None
    mime_type = mime_type if isinstance(mime_type, str) else None
    if name and (hinted := name_hint(name)):
        return hinted
    candidates = (
        mime_type,
        guess_mime_type(name) if name else None,
        sniff_mime_type(header) if header else None,
    )
    for mime in candidates:
        if mime and (modality := _mime_modality(mime.lower(), header)):
            return modality
    return None


def _mime_modality(mime: str, header: bytes | None) -> str | None:
    kind = mime.split("/", 1)[0]
    if kind in ("image", "audio", "video"):
        return kind
    if mime == NPY_MIME_TYPE and header is not None:
        shape = npy_shape(header)
        if shape in _IMU_SHAPES:
            return "imu"
        if shape is not None and (len(shape) == 2 or (len(shape) == 3 and shape[2] == 1)):
            return "depth"
    return None


def guess_file_modality(
    path: str | os.PathLike[str], *, mime_type: str | None = None, source: str | None = None
) -> str | None:
    """:func:`guess_modality` for a local file; only ``.npy`` files are opened (for their
    header, and only if they are regular files), so classifying a folder costs no reads.
    ``source`` names the file in errors (default: the path)."""
    file = Path(path)
    modality = guess_modality(file.name, mime_type=mime_type)
    if modality is not None or NPY_MIME_TYPE not in (mime_type, guess_mime_type(file.name)):
        return modality
    name = source or os.fspath(path)
    try:
        with open_regular_file(file, name, max_bytes=None) as handle:
            header = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise MediaError(name, f"cannot be read: {exc.strerror or exc}") from exc
    except MediaError as exc:
        raise MediaError(name, f"cannot be read: {exc.problem}", exc.fix) from None
    return guess_modality(file.name, mime_type=mime_type, header=header)
