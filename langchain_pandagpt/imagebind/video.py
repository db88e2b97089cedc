"""ImageBind's video loader: five 2 s clips -> 2 frames each -> 3 spatial crops = 15 views.

Upstream decodes with decord and transforms with pytorchvideo; neither exists here, so this
module reproduces their semantics with PyAV and torch: decord's frame indexing (average frame
rate, frame ``i`` is the ``i``-th frame in presentation order, clip ``[s, e)`` holds frames
``ceil(fps*s)`` .. ``min(ceil(fps*e), n) - 1``), pytorchvideo's clip sampler (shared with the
audio loader), uniform temporal subsampling, bilinear short-side scaling without antialias,
per-channel CLIP normalisation and ImageBind's three ceil-offset crops.

Only the frames that survive temporal subsampling (10 of them by default) are decoded: the
reader first lists the stream's packets (demuxing only, no decoding) to learn every frame's
timestamp and the keyframes, then seeks to the keyframe before each wanted frame and decodes
forward to it. Upstream decodes far more; on long videos that is the dominant cost. If the
container's timestamps turn out not to match the decoded frames, the reader falls back to
decoding in order from the start, so seeking never changes the result. Colour conversion is
FFmpeg's (as with decord), so pixels can differ slightly from upstream across FFmpeg builds.

Costs are bounded before they are spent: the frame size from the stream header is checked
like an image's (sides, area, size after the short-side resize), FFmpeg's decoder is opened
with ``max_pixels`` so a stream cannot switch to a larger size later, and the packet index
stops at :data:`MAX_VIDEO_FRAMES` frames.
"""

from __future__ import annotations

import io
import logging
import math
import os
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.container import InputContainer
from av.video.stream import VideoStream

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.audio import constant_clip_boundaries
from langchain_pandagpt.imagebind.sources import (
    MediaSource,
    describe_source,
    open_regular_file,
    read_source_bytes,
)
from langchain_pandagpt.imagebind.vision import (
    CLIP_MEAN,
    CLIP_STD,
    MAX_IMAGE_PIXELS,
    check_batch,
    check_image_size,
    item_name,
)

logger = logging.getLogger(__name__)

#: Side of the square crops ImageBind's vision encoder takes.
CROP_SIZE = 224
#: Spatial crops per clip (left/centre/right, or top/centre/bottom for portrait video).
NUM_CROPS = 3
#: Most frames indexed per video (about 9.7 hours at 30 fps): the index holds every frame's
#: timestamp, and a small file of tiny packets could otherwise claim hundreds of millions.
MAX_VIDEO_FRAMES = 1 << 20


class _SeekMismatch(Exception):
    """Decoded frames after a seek do not match the packet index; decode in order instead."""


@dataclass(frozen=True)
class _FrameIndex:
    """A video stream's frames, listed from its packets, in presentation order.

    ``pts[i]`` is frame ``i``'s timestamp (stream time base) and ``keyframes`` the sorted
    indices of frames decoding can start from. ``pts`` is empty when timestamps are missing
    or repeated: frames then cannot be identified after a seek and are decoded in order.
    """

    count: int
    pts: list[int]
    keyframes: list[int]

    @property
    def seekable(self) -> bool:
        """Whether decoded frames can be matched to indices by timestamp."""
        return len(self.pts) == self.count

    def position(self, pts: int | None) -> int | None:
        """Index of the frame with timestamp ``pts``, None if no frame has it."""
        if pts is None:
            return None
        position = bisect_left(self.pts, pts)
        return position if position < len(self.pts) and self.pts[position] == pts else None

    def keyframe_before(self, frame: int) -> int:
        """The last keyframe at or before ``frame`` (0 when none is marked)."""
        position = bisect_right(self.keyframes, frame)
        return self.keyframes[position - 1] if position else 0


def _index_frames(container: InputContainer, stream: VideoStream, name: str) -> _FrameIndex:
    """List the stream's frames by demuxing its packets, without decoding any of them.

    This is what decord does on open. Counting packets also gives the frame count for
    containers whose header has none (Matroska/WebM report 0). Packets the decoder will drop
    (flagged discard, e.g. cut by an MP4 edit list) and the empty flush packet are skipped.
    More than :data:`MAX_VIDEO_FRAMES` frames is a MediaError naming ``name``.
    """
    too_many = f"has more than {MAX_VIDEO_FRAMES} frames"
    if stream.frames > MAX_VIDEO_FRAMES:
        raise MediaError(name, too_many, "pass a shorter video")
    stamps: list[int | None] = []
    keyframe_stamps: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        if len(stamps) == MAX_VIDEO_FRAMES:
            raise MediaError(name, too_many, "pass a shorter video")
        stamps.append(packet.pts)
        if packet.is_keyframe and packet.pts is not None:
            keyframe_stamps.append(packet.pts)
    known = [pts for pts in stamps if pts is not None]
    pts = sorted(known)
    if len(known) < len(stamps) or len(set(pts)) < len(pts):
        return _FrameIndex(count=len(stamps), pts=[], keyframes=[])
    order = {stamp: i for i, stamp in enumerate(pts)}
    return _FrameIndex(len(stamps), pts, sorted(order[stamp] for stamp in keyframe_stamps))


def _average_fps(stream: VideoStream, name: str) -> float:
    """decord's frame rate: the stream's average rate (FFmpeg's guess if the header has none)."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise MediaError(name, "has no frame rate", "re-encode it with a constant frame rate")
    return float(rate)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decord's output format."""
    return frame.to_ndarray(format="rgb24")


def _decoded(container: InputContainer, stream: VideoStream) -> Iterator[av.VideoFrame]:
    """Decoded frames from the current demuxer position, the decoder flushed at the end."""
    for packet in container.demux(stream):
        yield from packet.decode()


def _decode_in_order(
    container: InputContainer, stream: VideoStream, wanted: list[int]
) -> dict[int, np.ndarray]:
    """Decode from the start, counting frames, until the last wanted one: the reference path."""
    found: dict[int, np.ndarray] = {}
    targets = set(wanted)
    for position, frame in enumerate(_decoded(container, stream)):
        if position in targets:
            found[position] = _to_rgb(frame)
        if position >= wanted[-1]:
            break
    return found


def _plan_runs(index: _FrameIndex, wanted: list[int]) -> list[list[int]]:
    """Group the sorted wanted frames into runs, each decoded forward from one seek.

    A frame joins the previous run when its keyframe is not after that run's last frame:
    decoding on from there is then no more work than seeking.
    """
    runs: list[list[int]] = []
    for target in wanted:
        if runs and index.keyframe_before(target) <= runs[-1][-1]:
            runs[-1].append(target)
        else:
            runs.append([target])
    return runs


def _decode_run(
    container: InputContainer, stream: VideoStream, index: _FrameIndex, run: list[int]
) -> dict[int, np.ndarray]:
    """Seek to the keyframe before ``run[0]``, then decode forward through the run's frames.

    Raises _SeekMismatch if the seek fails or the decoded timestamps disagree with the index,
    so that the caller can fall back to decoding in order.
    """
    try:
        container.seek(
            index.pts[index.keyframe_before(run[0])], backward=True, any_frame=False, stream=stream
        )
    except av.FFmpegError as exc:
        raise _SeekMismatch(f"seek failed: {exc}") from exc
    found: dict[int, np.ndarray] = {}
    targets = set(run)
    for frame in _decoded(container, stream):
        position = index.position(frame.pts)
        if position is None:
            raise _SeekMismatch(f"decoded a frame with unknown timestamp {frame.pts}")
        if position in targets:
            found[position] = _to_rgb(frame)
        if position >= run[-1]:
            break
    if len(found) < len(run):
        raise _SeekMismatch(f"frames {sorted(targets - found.keys())} not found after seeking")
    return found


def _check_path(path: Path, name: str) -> None:
    """The same checks as :func:`read_source_bytes` (a regular file, not empty), without
    reading the file into memory or capping its size: videos are streamed."""
    with open_regular_file(path, name, max_bytes=None) as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise MediaError(name, "is empty (0 bytes)", "pass a non-empty media file")


def _check_is_video(container: InputContainer, name: str) -> None:
    """Refuse still images (FFmpeg opens them as one-frame videos) and video-less files."""
    formats = container.format.name.split(",")
    if any(format_ == "image2" or format_.endswith("_pipe") for format_ in formats):
        raise MediaError(
            name, "is a still image, not a video", "use load_and_transform_vision_data"
        )
    if not container.streams.video:
        raise MediaError(name, "contains no video stream", "pass a video file")


@contextmanager
def _open_video(
    file: str | bytes, name: str, threads: int = 0
) -> Iterator[tuple[InputContainer, VideoStream]]:
    """A fresh container and its first video stream; FFmpeg errors become MediaError.

    ``threads`` is the decoder's thread count, 0 letting FFmpeg choose.
    """
    try:
        with av.open(io.BytesIO(file) if isinstance(file, bytes) else file, mode="r") as container:
            _check_is_video(container, name)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            # A backstop for streams that change size after the header: the decoder refuses
            # larger frames instead of allocating them.
            stream.codec_context.options = {"max_pixels": str(MAX_IMAGE_PIXELS)}
            yield container, stream
    except av.FFmpegError as exc:
        raise MediaError(
            name,
            f"cannot be decoded as video: {exc.strerror or exc}",
            "pass a valid video file such as MP4, MKV or WebM",
        ) from exc


class VideoReader:
    """Random access to a video's frames by decord-style index, decoding as little as possible.

    Paths are opened in place so big files are never read whole; bytes and file objects are
    buffered in memory. Every failure is a MediaError naming the input.
    """

    def __init__(self, source: MediaSource, name: str | None = None) -> None:
        self.name = name or describe_source(source)
        self._file: str | bytes
        if isinstance(source, str | os.PathLike):
            path = Path(source).expanduser()
            _check_path(path, self.name)
            self._file = os.fspath(path)
        else:
            self._file = read_source_bytes(source)
        with _open_video(self._file, self.name) as (container, stream):
            width, height = stream.codec_context.width, stream.codec_context.height
            if width > 0 and height > 0:
                check_image_size(width, height, self.name)
            self.fps = _average_fps(stream, self.name)
            self._index = _index_frames(container, stream, self.name)
        if not self._index.count:
            raise MediaError(self.name, "contains no video frames", "pass a non-empty video")

    @property
    def num_frames(self) -> int:
        """Frames in the stream (decord's ``len``)."""
        return self._index.count

    @property
    def duration(self) -> float:
        """Seconds as decord computes them: frame count over average frame rate."""
        return self.num_frames / self.fps

    def get_frames(self, indices: Sequence[int], *, seek: bool = True) -> list[np.ndarray]:
        """Frames ``indices`` as (H, W, 3) uint8 RGB arrays, in the order asked.

        ``seek=False`` decodes every frame from the start up to the last one asked: slower,
        but independent of the container's index; it is the reference the seeking path is
        tested and benchmarked against.
        """
        wanted = sorted(set(indices))
        if not wanted:
            return []
        if not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise IndexError(f"frame indices must be in [0, {self.num_frames}), got {wanted}")
        found = self._decode(wanted, seek=seek and self._index.seekable)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise MediaError(
                self.name,
                f"frames {missing} of {self.num_frames} could not be decoded",
                "the file may be truncated or corrupt",
            )
        return [found[i] for i in indices]

    def _decode(self, wanted: list[int], *, seek: bool) -> dict[int, np.ndarray]:
        """One decoding pass, seeking if allowed, else (or if seeking fails) in order."""
        if seek:
            try:
                return self._decode_runs(_plan_runs(self._index, wanted))
            except _SeekMismatch as exc:
                logger.debug("%s: seeking failed (%s); decoding in order", self.name, exc)
        with _open_video(self._file, self.name) as (container, stream):
            return _decode_in_order(container, stream, wanted)

    def _decode_runs(self, runs: list[list[int]]) -> dict[int, np.ndarray]:
        """Decode the runs concurrently, each in its own container with its own decoder.

        PyAV releases the GIL while decoding, and short runs parallelise better across runs
        than inside FFmpeg's frame threading; ``torch.get_num_threads()`` bounds the threads.
        """
        budget = torch.get_num_threads()
        workers = max(1, min(len(runs), budget))
        threads = max(1, budget // workers)

        def decode(run: list[int]) -> dict[int, np.ndarray]:
            with _open_video(self._file, self.name, threads) as (container, stream):
                return _decode_run(container, stream, self._index, run)

        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(decode, runs))
        return {position: frame for part in parts for position, frame in part.items()}


def clip_frame_indices(
    num_frames: int, fps: float, clip_duration: float, clips_per_video: int, frames_per_clip: int
) -> list[list[int]]:
    """Per clip, the frame indices ImageBind keeps, exactly as decord + pytorchvideo pick them.

    Clip ``[s, e)`` (from the shared clip sampler over ``num_frames / fps`` seconds) spans
    frames ``ceil(fps*s)`` .. ``min(ceil(fps*e), num_frames) - 1``; ``UniformTemporalSubsample``
    then keeps ``linspace(0, T-1, frames_per_clip)`` (float32, clamped, truncated) of them:
    the first and last frame when ``frames_per_clip`` is 2.
    """
    picks = []
    for start, end in constant_clip_boundaries(num_frames / fps, clip_duration, clips_per_video):
        first = math.ceil(fps * float(start))
        count = min(math.ceil(fps * float(end)), num_frames) - first
        if count <= 0:
            raise ValueError(f"clip [{float(start)}, {float(end)}) s holds no frame")
        offsets = torch.linspace(0, count - 1, frames_per_clip).clamp(0, count - 1).long()
        picks.append([first + int(offset) for offset in offsets])
    return picks


def _short_side_scale(clip: torch.Tensor, size: int) -> torch.Tensor:
    """pytorchvideo ``ShortSideScale``: bilinear, no antialias, long side floored, on (C,T,H,W)."""
    _, _, height, width = clip.shape
    if width < height:
        new_height, new_width = math.floor(height / width * size), size
    else:
        new_height, new_width = size, math.floor(width / height * size)
    return F.interpolate(clip, size=(new_height, new_width), mode="bilinear", align_corners=False)


def _normalize(clip: torch.Tensor) -> torch.Tensor:
    """torchvision ``NormalizeVideo``: CLIP mean/std per channel (dim 0) of a (C,T,H,W) clip.

    In place: the clip is a fresh tensor nobody else holds.
    """
    mean = torch.as_tensor(CLIP_MEAN, dtype=clip.dtype)[:, None, None, None]
    std = torch.as_tensor(CLIP_STD, dtype=clip.dtype)[:, None, None, None]
    return clip.sub_(mean).div_(std)


def _spatial_crops(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """ImageBind ``SpatialCrop(size, 3)``: start, centre (ceil offset), end of the long axis."""
    _, _, height, width = clip.shape
    top = math.ceil((height - size) / 2)
    left = math.ceil((width - size) / 2)
    crops = []
    for spatial_idx in range(NUM_CROPS):
        y, x = top, left
        if height > width:
            y = {0: 0, 1: top, 2: height - size}[spatial_idx]
        else:
            x = {0: 0, 1: left, 2: width - size}[spatial_idx]
        crops.append(clip[:, :, y : y + size, x : x + size])
    return crops


def _transform_clip(frames: list[np.ndarray]) -> list[torch.Tensor]:
    """(T, H, W, 3) uint8 frames of one clip -> its NUM_CROPS normalised (3, T, 224, 224) views.

    The float tensor is made contiguous in (C, T, H, W) like pytorchvideo's ``index_select``
    output, so interpolation runs the same kernel as upstream. Converting and permuting in one
    copy, then dividing in place, gives the same values as upstream's separate steps.
    """
    clip = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)
    clip = clip.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    clip = _normalize(_short_side_scale(clip, CROP_SIZE))
    return _spatial_crops(clip, CROP_SIZE)


def _video_views(
    item: MediaSource, name: str, clip_duration: int, clips_per_video: int, seek: bool
) -> torch.Tensor:
    """(clips * 3, 3, frames per clip, 224, 224) views of one video, clip-major."""
    reader = VideoReader(item, name)
    picks = clip_frame_indices(
        reader.num_frames, reader.fps, clip_duration, clips_per_video, clip_duration
    )
    frames = iter(reader.get_frames([i for clip in picks for i in clip], seek=seek))
    views = []
    for clip in picks:
        views += _transform_clip([next(frames) for _ in clip])
    return torch.stack(views)


def load_and_transform_video_data(
    video_paths: Sequence[MediaSource],
    device: torch.device | str | None = None,
    clip_duration: int = 2,
    clips_per_video: int = 5,
    sample_rate: int = 16000,
    *,
    seek: bool = True,
) -> torch.Tensor:
    """Videos as ImageBind's input: a (B, clips * 3, 3, clip_duration, 224, 224) float32 tensor.

    As upstream, ``clip_duration`` (seconds) is also the number of frames kept per clip, and
    ``sample_rate`` only concerns audio, which is not decoded: it is accepted for
    compatibility. ``seek=False`` decodes every frame up to the last one needed instead of
    seeking (same output, slower; for benchmarks and tests).
    """
    check_batch(video_paths, "video_paths")
    batch = [
        _video_views(item, item_name(item, index), clip_duration, clips_per_video, seek)
        for index, item in enumerate(video_paths)
    ]
    return torch.stack(batch).to(device)
