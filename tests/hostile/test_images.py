"""Item 5: pixel limits on sides, area and resized size, checked before decoding; ``.npy``
headers checked against the bytes that follow; video frame size and count.

Before: a 12 KB 100 x 890,000 PNG cost 2.9-3.6 GB and 10-19 s as an image, depth map or
thermal image (its area is under Pillow's bomb limit, but resized to a short side of 224
it is 224 x 1,993,600); a 1 x 89,000,000 PNG raised OverflowError; a ``.npy`` header
claiming 160 GB raised MemoryError; a PNG given as IMU suggested ``allow_pickle``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_files import write_mp4

from hostile.craft import npy_header_only, png_canvas
from hostile.limits import MiB, memory_cap
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind import video
from langchain_pandagpt.imagebind.imu import load_and_transform_imu_data
from langchain_pandagpt.imagebind.video import load_and_transform_video_data
from langchain_pandagpt.imagebind.vision import (
    MAX_IMAGE_SIDE,
    check_image_size,
    load_and_transform_depth_data,
    load_and_transform_thermal_data,
    load_and_transform_vision_data,
)

LOADERS: dict[str, Callable[..., torch.Tensor]] = {
    "image": load_and_transform_vision_data,
    "thermal": load_and_transform_thermal_data,
    "depth": load_and_transform_depth_data,
}


def _named(data: bytes, name: str = "upload.png") -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name
    return stream


@pytest.mark.parametrize("modality", LOADERS)
@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100, 890_000, "a side over the limit of 65536"),
        (1, 89_000_000, "a side over the limit of 65536"),
        (2, 60_000, "scaled to a short side of 224 it would have"),
        (9_000, 10_001, r"= 90009000 pixels, over the limit of 89478485"),
    ],
    ids=["tall", "needle", "thin", "area"],
)
def test_hostile_canvases_are_refused_before_decoding(
    modality: str, width: int, height: int, message: str
) -> None:
    png = png_canvas(width, height, bit_depth=16 if modality == "depth" else 8)
    assert len(png) < 200
    with memory_cap(128 * MiB) as elapsed, pytest.raises(MediaError, match=message) as caught:
        LOADERS[modality]([_named(png)])
    assert str(caught.value).startswith("upload.png: image is ")
    assert elapsed.seconds < 1


def test_size_limits_edges() -> None:
    check_image_size(MAX_IMAGE_SIDE, 1100, "x")  # long but not too thin: 224 x 13,346
    check_image_size(224, 60_000, "x")  # already at the short side: nothing to resize
    check_image_size(100, 6_400, "x")  # 64:1 is the largest aspect ratio
    with pytest.raises(MediaError, match="aspect ratio over 64:1"):
        check_image_size(100, 6_500, "x")
    with pytest.raises(MediaError, match="a side over the limit"):
        check_image_size(MAX_IMAGE_SIDE + 1, 1000, "x")
    with pytest.raises(MediaError, match="it has no pixels"):
        check_image_size(0, 10, "x")


def test_elongated_but_acceptable_images_still_load() -> None:
    batch = load_and_transform_vision_data([np.zeros((20, 1200, 3), np.uint8)])  # 60:1
    assert batch.shape == (1, 3, 224, 224)


@pytest.mark.parametrize(
    ("loader", "array"),
    [
        (load_and_transform_vision_data, np.zeros((1, 20_000), np.uint8)),
        (load_and_transform_thermal_data, np.zeros((20_000, 2, 3), np.uint8)),
        (load_and_transform_depth_data, np.ones((2, 60_000), np.float32)),
        (load_and_transform_depth_data, np.ones((1, 70_000), np.uint16)),
    ],
)
def test_arrays_are_held_to_the_same_limits(
    loader: Callable[..., torch.Tensor], array: np.ndarray
) -> None:
    with memory_cap(128 * MiB), pytest.raises(MediaError, match="at index 0: image is"):
        loader([array])


def test_npy_header_claiming_160_gb_is_refused_before_allocation() -> None:
    data = npy_header_only((200_000, 200_000))
    with memory_cap(64 * MiB) as elapsed:
        with pytest.raises(MediaError, match=r"claims shape \(200000, 200000\) of float32"):
            load_and_transform_depth_data([_named(data, "room.npy")])
        with pytest.raises(MediaError, match="160000000000 bytes"):
            load_and_transform_imu_data([_named(data, "walk.npy")])
    assert elapsed.seconds < 1


def test_truncated_npy_is_a_media_error() -> None:
    whole = io.BytesIO()
    np.save(whole, np.zeros((6, 2000), np.float32))
    header = whole.getvalue()[:128]  # np.save pads the header to 128 bytes
    with pytest.raises(MediaError, match="48000 bytes\\) but only 100 bytes follow"):
        load_and_transform_imu_data([header + b"\0" * 100])


def test_a_png_given_as_imu_is_not_a_pickle_question() -> None:
    png = png_canvas(8, 8)
    with pytest.raises(MediaError) as caught:
        load_and_transform_imu_data([_named(png, "walk.imu.npy")])
    assert str(caught.value).startswith("walk.imu.npy: is not a .npy array")
    assert "pickle" not in str(caught.value)
    with pytest.raises(MediaError, match=r"is a \.npz archive"):
        load_and_transform_imu_data([b"PK\x03\x04 not really a zip"])


def test_object_arrays_are_never_unpickled() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MediaError, match="holds Python objects, which are never unpickled"):
        load_and_transform_depth_data([buffer.getvalue()])


def _thin_mp4(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 2000, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 2000, 3), np.uint8), format="rgb24")
        for _ in range(4):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_frame_size_is_checked_from_the_header(tmp_path: Path) -> None:
    thin = _thin_mp4(tmp_path / "thin.mp4")
    with pytest.raises(MediaError, match=r"thin\.mp4: image is 2000x16: scaled to a short side"):
        load_and_transform_video_data([thin])


def test_decoder_refuses_frames_over_the_pixel_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backstop for streams that grow after their header: FFmpeg's ``max_pixels``."""
    clip = write_mp4(tmp_path / "clip.mp4")  # 64 x 48 = 3072 pixels
    monkeypatch.setattr(video, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(MediaError, match=r"clip\.mp4: cannot be decoded as video"):
        load_and_transform_video_data([clip])


def test_video_frame_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_mp4(tmp_path / "clip.mp4")  # 8 frames
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 5)
    with pytest.raises(MediaError, match=r"clip\.mp4: has more than 5 frames"):
        load_and_transform_video_data([clip])
    monkeypatch.setattr(video, "MAX_VIDEO_FRAMES", 8)
    assert load_and_transform_video_data([clip]).shape[:2] == (1, 15)
