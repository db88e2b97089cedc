"""Helpers for the hostile server tests: an app served by uvicorn on a loopback port inside
the test process (so a test can break a step of the app and watch real HTTP), and the checks
every refusal must pass."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from PIL import Image

from langchain_pandagpt.generation.engine import GenerationEngine
from langchain_pandagpt.generation.registry import get_shared_model
from langchain_pandagpt.model.embedder import MediaEmbedder
from langchain_pandagpt.serving.server import ServerSettings, create_app

MODEL = "tiny"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` on a free 127.0.0.1 port (uvicorn in a thread); yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def tiny_app(
    bundle: Path, *, embeddings: bool = True, **settings: Any
) -> tuple[FastAPI, GenerationEngine]:
    """The app of the tiny bundle on the CPU (its own engine, the shared model), and the engine."""
    model = get_shared_model(bundle, device="cpu")
    engine = GenerationEngine(model, max_batch_size=8)
    embedder = None
    if embeddings:
        from langchain_pandagpt.generation.registry import shared_encoder
        from langchain_pandagpt.model.bundle import imagebind_checkpoint

        imagebind = model.imagebind
        checkpoint = model.imagebind_path or imagebind_checkpoint(bundle)
        embedder = MediaEmbedder(shared_encoder(checkpoint, imagebind.device, imagebind.dtype))
    options = {"model_name": MODEL, "default_max_tokens": 2, **settings}
    return create_app(engine, ServerSettings(**options), embedder), engine


def refusal(response: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """The OpenAI error of a 4xx ``response`` (of ``status`` when given)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if status is not None:
        assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection ``response`` came on."""
    stream = response.extensions["network_stream"]
    return int(stream.get_extra_info("client_addr")[1])


def png_bytes(seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def image_part(data: bytes, mime_type: str = "image/png") -> dict[str, Any]:
    url = f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def chat_body(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    content: Any = [{"type": "text", "text": "Describe this."}, *parts] if parts else "Hi"
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
