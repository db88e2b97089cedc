"""Small seeded media files and a tiny ImageBind checkpoint, shared by the test modules."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from PIL import Image

from langchain_pandagpt.imagebind.checkpoint import save_imagebind_safetensors
from langchain_pandagpt.imagebind.model import ImageBindConfig, ImageBindModel


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random ImageBind with every tower (``ImageBindConfig.tiny``) saved as safetensors."""
    model = ImageBindModel(ImageBindConfig.tiny())
    model.init_random_weights(torch.Generator().manual_seed(seed))
    return save_imagebind_safetensors(model, path)


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (80, 60)) -> Path:
    """Random RGB pixels; the format follows the suffix (PNG, JPEG...)."""
    Image.fromarray(rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_wav(path: Path, seed: int = 0, seconds: float = 1.0) -> Path:
    samples = 0.1 * rng(seed).standard_normal(int(16000 * seconds))
    soundfile.write(path, samples.astype(np.float32), 16000)
    return path


def write_mp4(path: Path, seed: int = 0, seconds: float = 1.0, fps: int = 8) -> Path:
    generator = rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(int(seconds * fps)):
            pixels = generator.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_imu(path: Path, seed: int = 0) -> Path:
    np.save(path, rng(seed).standard_normal((6, 2000)).astype(np.float32))
    return path


def write_depth(path: Path, seed: int = 0) -> Path:
    """A float depth map in metres (0.5 to 4.5 m)."""
    np.save(path, (rng(seed).random((48, 64)) * 4 + 0.5).astype(np.float32))
    return path


@contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """Base URL of a threaded HTTP server on 127.0.0.1 (no external network involved)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
