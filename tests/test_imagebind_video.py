"""ImageBind video preprocessing on small synthetic videos written with PyAV."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from av.container import InputContainer
from av.video.stream import VideoStream
from PIL import Image

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind import video
from langchain_pandagpt.imagebind.video import (
    VideoReader,
    clip_frame_indices,
    load_and_transform_video_data,
)
from langchain_pandagpt.imagebind.vision import CLIP_MEAN, CLIP_STD

pytestmark = pytest.mark.skipif(
    "libx264" not in av.codecs_available, reason="this FFmpeg build has no H.264 encoder"
)

GREY_STEP = 6  # frame i is uniformly grey at level 6 * i, so its index can be read back
Painter = Callable[[int], np.ndarray]


def _write_video(
    path: Path, painter: Painter, frames: int, fps: int, container_format: str | None = None
) -> Path:
    """H.264 with B-frames and a keyframe every 8 frames, so seeking has work to do."""
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=fps)
        first = painter(0)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": "8", "bf": "2", "crf": "10"}
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(painter(index), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _grey(width: int, height: int) -> Painter:
    return lambda index: np.full((height, width, 3), GREY_STEP * index, np.uint8)


def _gradient(width: int, height: int, axis: int) -> Painter:
    ramp = np.linspace(0, 255, (width, height)[axis]).astype(np.uint8)
    image = np.broadcast_to(ramp[None, :] if axis == 0 else ramp[:, None], (height, width))
    return lambda index: np.repeat(image[..., None], 3, axis=2).copy()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "grey": _write_video(root / "grey.mp4", _grey(64, 48), frames=40, fps=10),
        "grey_mkv": _write_video(root / "grey.mkv", _grey(64, 48), 40, 10, "matroska"),
        "landscape": _write_video(root / "wide.mp4", _gradient(68, 48, axis=0), 12, 10),
        "portrait": _write_video(root / "tall.mp4", _gradient(48, 68, axis=1), 12, 10),
    }


def _frame_numbers(views: torch.Tensor) -> list[list[int]]:
    """Read back which grey frame each (view, time) of a (15, 3, T, 224, 224) batch shows."""
    red = views[:, 0].mean(dim=(-1, -2)) * CLIP_STD[0] + CLIP_MEAN[0]
    return (red * 255 / GREY_STEP).round().int().tolist()


def test_clip_frame_indices_follow_decord_ceil_rule() -> None:
    # 100 frames at 25 fps: clips start at 0, 0.5, 1, 1.5, 2 s; 12.5 and 37.5 round up.
    assert clip_frame_indices(100, 25.0, 2, 5, 2) == [
        [0, 49],
        [13, 62],
        [25, 74],
        [38, 87],
        [50, 99],
    ]
    # Shorter than a clip: every clip is the whole video.
    assert clip_frame_indices(10, 10.0, 2, 5, 2) == [[0, 9]] * 5
    # 29.97 fps, 4.004 s: clip 1 starts at frame ceil(15.015) = 16; the last clip ends at
    # ceil(119.99999999999999) = 120 in float arithmetic, as upstream computes it.
    ntsc = clip_frame_indices(120, 30000 / 1001, 2, 5, 2)
    assert ntsc == [[0, 59], [16, 74], [31, 89], [46, 104], [61, 119]]


def test_output_shape_and_frames_picked(videos: dict[str, Path]) -> None:
    batch = load_and_transform_video_data([videos["grey"]])
    assert batch.shape == (1, 15, 3, 2, 224, 224)
    assert batch.dtype == torch.float32
    expected = [[0, 19], [5, 24], [10, 29], [15, 34], [20, 39]]
    assert _frame_numbers(batch[0]) == [pair for pair in expected for _ in range(3)]


def test_matroska_without_frame_count(videos: dict[str, Path]) -> None:
    with av.open(str(videos["grey_mkv"])) as container:
        assert container.streams.video[0].frames == 0  # the header has no count
    reader = VideoReader(videos["grey_mkv"])
    assert (reader.num_frames, reader.fps, reader.duration) == (40, 10.0, 4.0)
    batch = load_and_transform_video_data([videos["grey_mkv"]])
    assert torch.equal(batch, load_and_transform_video_data([videos["grey"]]))


def _expected_views(
    frames: list[np.ndarray], size: tuple[int, int], offsets: list[int], axis: int
) -> list[torch.Tensor]:
    """The spec written out: /255, bilinear resize, CLIP normalise, crop at ``offsets``."""
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 255.0
    clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
    mean, std = (torch.tensor(value)[:, None, None, None] for value in (CLIP_MEAN, CLIP_STD))
    clip = (clip - mean) / std
    return [clip.narrow(axis, offset, 224) for offset in offsets]


@pytest.mark.parametrize(
    ("name", "size", "axis"),
    [("landscape", (224, 317), 3), ("portrait", (317, 224), 2)],
)
def test_short_side_scale_and_three_crops(
    videos: dict[str, Path], name: str, size: tuple[int, int], axis: int
) -> None:
    # 68 x 48 -> 317 x 224 (floor of 317.33); crops at 0, ceil(93 / 2) = 47 and 93.
    batch = load_and_transform_video_data([videos[name]], clips_per_video=1)
    assert batch.shape == (1, 3, 3, 2, 224, 224)
    frames = VideoReader(videos[name]).get_frames([0, 11])  # the 1.2 s video is one clip
    expected = _expected_views(frames, size, [0, 47, 93], axis)
    for view, reference in zip(batch[0], expected, strict=True):
        assert torch.equal(view, reference)
    brightness = batch[0, :, 0].mean(dim=(1, 2, 3))
    assert brightness[0] < brightness[1] < brightness[2]  # start, centre, end of the long side


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counter = [0]
    original = video._decoded

    def counting(container: InputContainer, stream: VideoStream) -> Iterator[av.VideoFrame]:
        for frame in original(container, stream):
            counter[0] += 1
            yield frame

    monkeypatch.setattr(video, "_decoded", counting)
    return counter


def test_seeking_matches_full_decode(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = VideoReader(videos["grey"])
    everything = list(range(reader.num_frames))
    full = reader.get_frames(everything, seek=False)
    assert [round(frame.mean() / GREY_STEP) for frame in full] == everything
    order = [39, 3, 17, 8, 7, 25, 3, 0]
    seeking = reader.get_frames(order)
    for index, frame in zip(order, seeking, strict=True):
        assert np.array_equal(frame, full[index])
    assert all(
        np.array_equal(a, b) for a, b in zip(reader.get_frames(everything), full, strict=True)
    )

    def no_fallback(*args: object) -> None:
        raise AssertionError("seeking fell back to decoding in order")

    counter = _count_decoded(monkeypatch)
    monkeypatch.setattr(video, "_decode_in_order", no_fallback)
    with_seek = load_and_transform_video_data([videos["grey"]])
    seek_count = counter[0]
    monkeypatch.undo()
    counter = _count_decoded(monkeypatch)
    without = load_and_transform_video_data([videos["grey"]], seek=False)
    assert torch.equal(with_seek, without)
    assert seek_count < counter[0] == 40


def test_falls_back_when_timestamps_disagree(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = load_and_transform_video_data([videos["grey"]])

    def mismatch(*args: object) -> None:
        raise video._SeekMismatch("simulated")

    monkeypatch.setattr(video, "_decode_run", mismatch)
    assert torch.equal(load_and_transform_video_data([videos["grey"]]), expected)


def test_bytes_and_file_objects(videos: dict[str, Path]) -> None:
    data = videos["grey"].read_bytes()
    batch = load_and_transform_video_data([videos["grey"], data, io.BytesIO(data)])
    assert torch.equal(batch[1], batch[0]) and torch.equal(batch[2], batch[0])


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav() -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(1600, np.float32), 16000, format="WAV")
    return buffer.getvalue()


def _empty_video(tmp_path: Path) -> bytes:
    """An AVI whose video stream has no frames at all."""
    path = tmp_path / "empty.avi"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: None, "file not found"),
        (lambda tmp: b"", "is empty"),
        (lambda tmp: np.random.default_rng(0).bytes(5000), "cannot be decoded as video"),
        (lambda tmp: _png(), "still image"),
        (lambda tmp: _wav(), "no video stream"),
        (_empty_video, "no video frames"),
    ],
    ids=["missing", "zero-byte", "corrupt", "png", "wav", "no-frames"],
)
def test_errors_name_the_input(
    tmp_path: Path, make: Callable[[Path], bytes | None], message: str
) -> None:
    path = tmp_path / "clip.mp4"
    content = make(tmp_path)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MediaError, match=message) as error:
        load_and_transform_video_data([path])
    assert str(path) in str(error.value)
    if content:
        with pytest.raises(MediaError, match=message):
            load_and_transform_video_data([content])


def test_truncated_and_undecodable_videos(videos: dict[str, Path], tmp_path: Path) -> None:
    data = videos["grey_mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 3 // 4])
    assert 0 < VideoReader(cut).num_frames < 40  # Matroska plays up to the cut
    assert load_and_transform_video_data([cut]).shape == (1, 15, 3, 2, 224, 224)

    cut_mp4 = tmp_path / "cut.mp4"
    cut_mp4.write_bytes(videos["grey"].read_bytes()[:2000])  # its index (moov) is at the end
    with pytest.raises(MediaError, match=str(cut_mp4)):
        load_and_transform_video_data([cut_mp4])

    wiped = bytearray(data)
    with av.open(str(videos["grey_mkv"])) as container:
        for packet in container.demux(video=0):
            if packet.size and packet.pos is not None:
                wiped[packet.pos + 4 : packet.pos + packet.size] = bytes(packet.size - 4)
    with pytest.raises(MediaError, match="cannot be decoded as video"):
        load_and_transform_video_data([bytes(wiped)])
