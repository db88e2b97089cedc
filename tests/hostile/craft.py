"""Small files with hostile headers, built byte by byte (no big buffers on the way)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_canvas(width: int, height: int, *, bit_depth: int = 8) -> bytes:
    """A grayscale PNG whose header claims ``width`` x ``height`` but whose data holds only a
    few rows: a loader that checks sizes first refuses it without decoding anything."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 256, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def wav_header(rate: int, samples: int = 1, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV of ``samples`` zero frames at ``rate`` Hz (46 bytes for one)."""
    data = b"\x00\x00" * samples * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * 2 * channels) % 2**32, 2 * channels, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def npy_header_only(shape: tuple[int, ...], dtype: str = "<f4", tail: bytes = b"\0" * 64) -> bytes:
    """A ``.npy`` file whose header claims ``shape`` but which holds only ``tail``."""
    buffer = io.BytesIO()
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + tail
