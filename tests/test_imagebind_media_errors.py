"""Bad image, thermal, depth, IMU and text inputs fail with clear errors; all input forms work."""

from __future__ import annotations

import io
import struct
import warnings
import wave
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.imu import load_and_transform_imu_data
from langchain_pandagpt.imagebind.vision import (
    load_and_transform_depth_data,
    load_and_transform_thermal_data,
    load_and_transform_vision_data,
)

ImageLoader = Callable[..., torch.Tensor]
IMAGE_LOADERS = [
    load_and_transform_vision_data,
    load_and_transform_thermal_data,
    load_and_transform_depth_data,
]


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def _photo(height: int = 240, width: int = 320) -> np.ndarray:
    """A smooth RGB test picture (noise would make truncated JPEGs decode oddly)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=2).astype(np.uint8)


def _png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width`` x ``height`` pixels (a decompression bomb header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _wav_bytes() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(b"\0\1" * 1600)
    return buffer.getvalue()


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _bad_image_files(folder: Path) -> list[Path]:
    jpeg = _encode(_photo(), "JPEG")
    png = _encode(_photo(), "PNG")
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        folder / "missing.png",
        _write(folder, "zero_bytes.png", b""),
        _write(folder, "truncated.jpg", jpeg[: len(jpeg) // 2]),
        _write(folder, "truncated.png", png[: len(png) // 2]),
        _write(folder, "garbage.png", garbage),
        _write(folder, "sound.wav", _wav_bytes()),
        _write(folder, "bomb.png", _png_with_header(30_000, 30_000)),
        _write(folder, "big.png", _png_with_header(10_000, 9_000)),
    ]


@pytest.mark.parametrize("loader", IMAGE_LOADERS)
def test_bad_image_files_name_the_file(loader: ImageLoader, tmp_path: Path) -> None:
    for path in _bad_image_files(tmp_path):
        with pytest.raises(MediaError, match=path.name):
            loader([path])


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = _write(tmp_path, "large_enough.png", _encode(_photo(), "PNG"))
    with pytest.raises(MediaError, match=r"large_enough\.png.*76800 pixels"):
        load_and_transform_vision_data([path], max_pixels=50_000)
    assert load_and_transform_vision_data([path], max_pixels=76_800).shape == (1, 3, 224, 224)


def test_bomb_header_is_refused_without_warnings(tmp_path: Path) -> None:
    path = _write(tmp_path, "bomb.png", _png_with_header(10_000, 9_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(MediaError, match=r"bomb\.png.*over the limit of 89478485"):
            load_and_transform_vision_data([path])
    assert not caught


def test_in_memory_errors_name_the_batch_index() -> None:
    with pytest.raises(MediaError, match="<bytes: 0 B> at index 1"):
        load_and_transform_vision_data([_encode(_photo(), "PNG"), b""])
    with pytest.raises(MediaError, match=r"at index 0.*unsupported input type int"):
        load_and_transform_vision_data([3])  # type: ignore[list-item]
    with pytest.raises(MediaError, match="not an image"):
        load_and_transform_vision_data([np.zeros((8, 8, 3), dtype=np.float32)])


def test_batches_must_be_non_empty_lists(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        load_and_transform_vision_data([])
    with pytest.raises(TypeError, match="list"):
        load_and_transform_thermal_data(str(tmp_path / "one.png"))


def test_vision_input_forms_agree(tmp_path: Path) -> None:
    photo = _photo()
    data = _encode(photo, "PNG")
    path = _write(tmp_path, "photo.png", data)
    with path.open("rb") as handle:
        batch = load_and_transform_vision_data(
            [path, str(path), data, io.BytesIO(data), handle, Image.fromarray(photo), photo]
        )
    for other in batch[1:]:
        assert torch.equal(batch[0], other)


def test_rgba_alpha_is_dropped_not_composited() -> None:
    rgba = np.dstack([_photo(), np.zeros((240, 320), dtype=np.uint8)])
    batch = load_and_transform_vision_data([rgba, _photo()])
    assert torch.equal(batch[0], batch[1])


def test_thermal_input_forms_agree() -> None:
    gray = _photo()[:, :, 0]
    data = _encode(gray, "PNG")
    batch = load_and_transform_thermal_data([data, Image.fromarray(gray), gray])
    for other in batch[1:]:
        assert torch.equal(batch[0], other)


def test_depth_rejects_bad_maps(tmp_path: Path) -> None:
    path = _write(tmp_path, "depth8.png", _encode(_photo()[:, :, 0], "PNG"))
    with pytest.raises(MediaError, match=r"depth8\.png.*mode L"):
        load_and_transform_depth_data([path])
    depth = np.ones((50, 50), dtype=np.float32)
    depth[3, 4] = np.nan
    with pytest.raises(MediaError, match="NaN"):
        load_and_transform_depth_data([depth])
    png16 = _encode(np.full((60, 80), 1234, dtype=np.uint16), "PNG")
    path = _write(tmp_path, "truncated_depth.png", png16[: len(png16) // 2])
    with pytest.raises(MediaError, match=r"truncated_depth\.png.*truncated"):
        load_and_transform_depth_data([path])
    with pytest.raises(MediaError, match="not a depth map"):
        load_and_transform_depth_data([np.ones((50, 50, 3), dtype=np.float32)])


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_imu_input_forms_agree(tmp_path: Path) -> None:
    window = np.random.default_rng(1).standard_normal((6, 2000)).astype(np.float32)
    path = _write(tmp_path, "imu.npy", _npy(window))
    with path.open("rb") as handle:
        batch = load_and_transform_imu_data([path, _npy(window), handle, io.BytesIO(_npy(window))])
    for other in batch[1:]:
        assert torch.equal(batch[0], other)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((6, 1999), dtype=np.float32), r"shape \(6, 1999\).*expected \(6, 2000\)"),
        (np.zeros((3, 6, 2000), dtype=np.float32), r"shape \(3, 6, 2000\)"),
        (np.full((6, 2000), np.nan, dtype=np.float32), "NaN"),
        (np.array([{"a": 1}], dtype=object), "holds Python objects, which are never unpickled"),
    ],
)
def test_bad_imu_files_name_the_file(content: np.ndarray, message: str, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, content, allow_pickle=True)
    path = _write(tmp_path, "bad_imu.npy", buffer.getvalue())
    with pytest.raises(MediaError, match=rf"bad_imu\.npy.*{message}"):
        load_and_transform_imu_data([path])


def test_imu_errors_for_other_inputs(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"nowhere\.npy"):
        load_and_transform_imu_data([tmp_path / "nowhere.npy"])
    with pytest.raises(MediaError, match=r"is not a \.npy array") as caught:
        load_and_transform_imu_data([_encode(_photo(), "PNG")])
    assert "pickle" not in str(caught.value)
    with pytest.raises(MediaError, match=r"at index 0.*shape"):
        load_and_transform_imu_data([torch.zeros(2000)])
    with pytest.raises(MediaError, match="not numeric"):
        load_and_transform_imu_data([np.array([["a"] * 2000] * 6)])
