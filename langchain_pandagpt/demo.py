"""Everything a demo needs offline: a bundle and small media files of every kind.

:func:`demo_bundle` is the bundle the examples run on: ``$PANDAGPT_BUNDLE`` when a reader has
real weights, else a tiny random bundle made once in the cache (its answers are gibberish, but
every code path runs, on a CPU, in seconds). :func:`write_demo_media` writes a picture, a tone,
a short clip, a thermal image, a depth map and an IMU window, each a few kilobytes. File names
carry the modality hints (``.thermal.png``, ``.depth.png``, ``.imu.npy``) that media loaders
use to tell sensor files from ordinary images and arrays.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image

from langchain_pandagpt.downloads import cache_dir
from langchain_pandagpt.model.manifest import MANIFEST_NAME
from langchain_pandagpt.model.tiny import create_tiny_checkpoint

SAMPLE_RATE = 16_000
BUNDLE_ENV = "PANDAGPT_BUNDLE"


def demo_bundle() -> Path:
    """``$PANDAGPT_BUNDLE`` if set, else the tiny bundle in ``$PANDAGPT_CACHE/tiny-bundle``
    (created on first use; the manifest is written last, so a bundle with one is complete)."""
    if configured := os.environ.get(BUNDLE_ENV):
        return Path(configured).expanduser()
    folder = cache_dir("tiny-bundle")
    if not (folder / MANIFEST_NAME).is_file():
        create_tiny_checkpoint(folder)
    return folder


def write_demo_media(folder: str | os.PathLike[str], *, seed: int = 0) -> dict[str, Path]:
    """Writes one file per modality into ``folder``; returns ``{modality: path}``.

    ``seed`` varies colours, pitch and motion, so several calls give distinct collections.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {
        "image": root / f"picture-{seed}.png",
        "audio": root / f"tone-{seed}.wav",
        "video": root / f"clip-{seed}.mp4",
        "thermal": root / f"person-{seed}.thermal.png",
        "depth": root / f"room-{seed}.depth.png",
        "imu": root / f"walk-{seed}.imu.npy",
    }
    _picture(rng).save(paths["image"])
    soundfile.write(paths["audio"], _tone(rng), SAMPLE_RATE)
    _write_clip(paths["video"], rng)
    _thermal(rng).save(paths["thermal"])
    _depth(rng).save(paths["depth"])
    np.save(paths["imu"], _imu(rng), allow_pickle=False)
    return paths


def _picture(rng: np.random.Generator, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A sky gradient with a sun: smooth areas and one edge, like a tiny photo."""
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    pixels = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).copy()
    yy, xx = np.mgrid[:height, :width]
    cx, cy = rng.integers(width // 4, 3 * width // 4), rng.integers(height // 4, height // 2)
    pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < (height // 6) ** 2] = (255, 220, 60)
    return Image.fromarray(pixels.astype(np.uint8))


def _tone(rng: np.random.Generator, seconds: float = 2.5) -> np.ndarray:
    """A sine tone with a little noise, float32 at 16 kHz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.4 * np.sin(2 * np.pi * rng.uniform(220, 880) * t)
    return (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _write_clip(path: Path, rng: np.random.Generator, frames: int = 16, fps: int = 8) -> None:
    """Two seconds of a square crossing a coloured background (H.264 MP4)."""
    width, height = 64, 48
    background = rng.integers(0, 256, 3).astype(np.uint8)
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.broadcast_to(background, (height, width, 3)).copy()
            x = index * (width - 16) // max(frames - 1, 1)
            pixels[16:32, x : x + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _thermal(rng: np.random.Generator, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A warm body on a cool background, as an 8-bit grayscale thermal image."""
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    cx = rng.integers(width // 3, 2 * width // 3)
    body = np.exp(-(((xx - cx) / 10.0) ** 2 + ((yy - height / 2) / 18.0) ** 2))
    return Image.fromarray((40 + 200 * body).astype(np.uint8), mode="L")


def _depth(rng: np.random.Generator, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A room receding from 0.8 m to 4 m with a box in front, 16-bit millimetres."""
    width, height = size
    depth = np.broadcast_to(np.linspace(800, 4000, width), (height, width)).copy()
    x = rng.integers(0, width - 20)
    depth[height // 2 :, x : x + 20] = 1200
    return Image.fromarray(depth.astype(np.uint16))


def _imu(rng: np.random.Generator, samples: int = 2000) -> np.ndarray:
    """Ten seconds of walking at 200 Hz: (2000, 6) accelerometer (m/s^2) + gyroscope (rad/s)."""
    t = np.arange(samples) / 200.0
    step = rng.uniform(1.6, 2.2)  # steps per second
    accel = np.stack(
        [
            np.sin(2 * np.pi * step * t),
            0.3 * np.cos(np.pi * step * t),
            9.81 + np.sin(4 * np.pi * step * t),
        ],
        axis=1,
    )
    gyro = 0.2 * np.stack([np.cos(2 * np.pi * step * t + k) for k in range(3)], axis=1)
    noise = 0.05 * rng.standard_normal((samples, 6))
    return (np.concatenate([accel, gyro], axis=1) + noise).astype(np.float32)
