"""The OpenAI-compatible server, started with ``pandagpt serve`` on loopback, driven by the
``openai`` client, ``ChatOpenAI`` and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.messages.content import create_image_block
from langchain_openai import ChatOpenAI
from marks import child_processes
from pydantic import SecretStr

from langchain_pandagpt.content_blocks import create_depth_block
from langchain_pandagpt.demo import write_demo_media
from langchain_pandagpt.serving.server import ServerSettings, app_for_bundle, serve_in_subprocess

API_KEY = "test-key"
MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    """Base URL of a real ``pandagpt serve`` process (API key on, 1 MiB request limit)."""
    options = ["--model-name", MODEL, "--api-key", API_KEY, "--max-request-mb", "1"]
    options += ["--device", "cpu", "--threads", "1", "--log-level", "warning"]
    with serve_in_subprocess(tiny_bundle, *options) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_media(tmp_path_factory.mktemp("media"))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _data_url(path: Path, mime_type: str) -> str:
    return f"data:{mime_type};base64,{_b64(path)}"


def _post(server: str, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}", **kwargs.pop("headers", {})}
    content = body if isinstance(body, bytes | str | Iterator) else json.dumps(body)
    return httpx.post(
        f"{server}{path}",
        content=content,
        headers={"Content-Type": "application/json", **headers},
        timeout=60,
        **kwargs,
    )


def _user(*parts: dict[str, Any]) -> Any:
    return [{"role": "user", "content": [{"type": "text", "text": "Describe this."}, *parts]}]


@child_processes
def test_health_and_models(server: str, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert {model.id for model in client.models.list()} == {MODEL, "imagebind"}
    assert client.models.retrieve(MODEL).id == MODEL


@child_processes
def test_chat_with_an_image(client: openai.OpenAI, media: dict[str, Path]) -> None:
    image = {"type": "image_url", "image_url": {"url": _data_url(media["image"], "image/png")}}
    reply = client.chat.completions.create(
        model=MODEL,
        messages=_user(image),
        max_tokens=8,
        temperature=0,
    )
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens > 5


@child_processes
def test_streaming_sends_usage_last(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens <= 12
    assert isinstance(text, str)


@child_processes
def test_every_modality_in_one_message(client: openai.OpenAI, media: dict[str, Path]) -> None:
    parts = [
        {"type": "input_audio", "input_audio": {"data": _b64(media["audio"]), "format": "wav"}},
        {"type": "input_video", "input_video": {"data": _b64(media["video"]), "format": "mp4"}},
        {"type": "input_thermal", "input_thermal": {"data": _b64(media["thermal"])}},
        {"type": "depth_url", "depth_url": {"url": _data_url(media["depth"], "image/png")}},
        {
            "type": "file",
            "file": {"file_data": _data_url(media["imu"], "application/x-npy"), "modality": "imu"},
        },
    ]
    reply = client.chat.completions.create(model=MODEL, messages=_user(*parts), max_tokens=4)
    assert reply.choices[0].finish_reason in ("stop", "length")


@child_processes
def test_chat_openai_from_langchain(server: str, media: dict[str, Path]) -> None:
    llm = ChatOpenAI(
        base_url=f"{server}/v1",
        api_key=SecretStr(API_KEY),
        model=MODEL,
        max_completion_tokens=8,
        stream_usage=True,
    )
    image = create_image_block(base64=_b64(media["image"]), mime_type="image/png")
    # The file name carries the modality: ChatOpenAI forwards file names, not extras.
    depth = create_depth_block(media["depth"].read_bytes(), filename="room.depth.png")
    message = HumanMessage(content_blocks=[{"type": "text", "text": "What is here?"}, image, depth])
    answer = llm.invoke([message])
    assert isinstance(answer.content, str)
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] <= 8
    chunks = list(llm.stream("Tell me a story."))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert streamed.usage_metadata is not None
    assert streamed.response_metadata["finish_reason"] in ("stop", "length")


@child_processes
def test_sixteen_concurrent_clients_are_batched(server: str, client: openai.OpenAI) -> None:
    before = httpx.get(f"{server}/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"})
    start = threading.Barrier(16)
    texts: list[str] = []

    def one(index: int) -> None:
        start.wait()
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Question number {index}?"}],
            max_tokens=24,
            stream=True,
        )
        texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(texts) == 16
    after = httpx.get(f"{server}/v1/stats", headers={"Authorization": f"Bearer {API_KEY}"})
    requests = after.json()["requests"] - before.json()["requests"]
    batches = after.json()["batches"] - before.json()["batches"]
    assert requests == 16
    assert batches <= 8, f"16 concurrent requests ran in {batches} batches"
    assert after.json()["largest_batch"] >= 4


@child_processes
def test_embeddings_for_text_and_media(
    server: str, client: openai.OpenAI, media: dict[str, Path]
) -> None:
    result = client.embeddings.create(model="imagebind", input=["a cat", "a dog"])
    assert [len(item.embedding) for item in result.data] == [32, 32]
    image = {"type": "image_url", "image_url": {"url": _data_url(media["image"], "image/png")}}
    audio = {"type": "input_audio", "input_audio": {"data": _b64(media["audio"]), "format": "wav"}}
    body = {"model": "imagebind", "input": ["a sunset", image, audio], "encoding_format": "float"}
    response = _post(server, "/v1/embeddings", body)
    assert response.status_code == 200, response.text
    vectors = [item["embedding"] for item in response.json()["data"]]
    assert len(vectors) == 3 and all(len(v) == 32 for v in vectors)
    assert response.json()["usage"]["prompt_tokens"] > 2


@child_processes
def test_an_abandoned_stream_does_not_hurt_the_server(server: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    body["max_tokens"] = 200
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    ok = _post(server, "/v1/chat/completions", {**body, "stream": False, "max_tokens": 2})
    assert ok.status_code == 200


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


@child_processes
def test_errors_are_openai_shaped(server: str, client: openai.OpenAI) -> None:
    chat = "/v1/chat/completions"
    hello = [{"role": "user", "content": "Hello"}]
    assert _error(httpx.get(f"{server}/v1/models"), 401)["code"] == "invalid_api_key"
    assert "JSON" in _error(_post(server, chat, b"{not json"), 400)["message"]
    unknown = _error(_post(server, chat, {"model": "gpt-4", "messages": hello}), 404)
    assert unknown["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=hello)  # type: ignore[arg-type]
    assert _error(_post(server, chat, {"model": MODEL, "messages": []}), 400)["param"]
    two = _error(_post(server, chat, {"model": MODEL, "messages": hello, "n": 2}), 400)
    assert two["param"] == "n"
    logprobs = {"model": MODEL, "messages": hello, "logprobs": True}  # more: test_server_tools.py
    assert _error(_post(server, chat, logprobs), 400)["param"] == "logprobs"
    long = [{"role": "user", "content": "word " * 3000}]
    overlong = _error(_post(server, chat, {"model": MODEL, "messages": long}), 400)
    assert overlong["code"] == "context_length_exceeded"
    too_many = _error(
        _post(server, chat, {"model": MODEL, "messages": hello, "max_tokens": 5000}), 400
    )
    assert too_many["code"] == "context_length_exceeded"
    huge = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 2**21}]})
    assert _error(_post(server, chat, huge), 413)["code"] == "request_too_large"
    chunked = iter([huge[: 2**20].encode(), huge[2**20 :].encode()])  # no Content-Length
    assert _error(_post(server, chat, chunked), 413)["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("data:image/png;base64,bm90IGFuIGltYWdl", "Pillow"),
        ("data:image/png;base64,***", "base64"),
        ("file:///etc/passwd", "local files are disabled"),
        ("/etc/hostname", "local files are disabled"),
        ("https://example.com/cat.png", "remote media"),
    ],
)
@child_processes
def test_bad_or_forbidden_media_get_400(server: str, url: str, problem: str) -> None:
    image = {"type": "image_url", "image_url": {"url": url}}
    body = {"model": MODEL, "messages": _user(image), "max_tokens": 2}
    error = _error(_post(server, "/v1/chat/completions", body), 400)
    assert problem in error["message"]
    assert error["code"] == "invalid_media"


@child_processes
def test_bad_media_is_refused_before_a_stream_starts(server: str) -> None:
    image = {"type": "input_image", "input_image": {"data": base64.b64encode(b"junk").decode()}}
    body = {"model": MODEL, "messages": _user(image), "stream": True}
    assert _error(_post(server, "/v1/chat/completions", body), 400)["code"] == "invalid_media"
    part = {"type": "input_thermal", "input_thermal": {"data": "not base64!"}}
    embedding = {"model": "imagebind", "input": [part]}
    assert _error(_post(server, "/v1/embeddings", embedding), 400)["code"] == "invalid_media"


def test_a_generation_over_the_time_limit_gets_504(tiny_bundle: Path) -> None:
    settings = ServerSettings(model_name=MODEL, request_timeout_s=0.01)
    app = app_for_bundle(tiny_bundle, settings, embeddings=False)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1500}

    async def ask(stream: bool) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json={**body, "stream": stream})

    assert _error(asyncio.run(ask(stream=False)), 504)["code"] == "timeout"
    streamed = asyncio.run(ask(stream=True))
    assert streamed.status_code in (200, 504)  # 200 if the first token came in time
    if streamed.status_code == 200:
        assert '"code":"timeout"' in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
