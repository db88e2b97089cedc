"""Item 6 of the hardening issue: malformed requests are 4xx naming the JSON path of the bad
part, never 500s; an unexpected error is one 500 (or 503) in OpenAI error JSON on a connection
that stays open. Over real HTTP to an in-process uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from langchain_pandagpt.generation.engine import GenerationEngine

from .server_support import (
    CHAT,
    EMBEDDINGS,
    MODEL,
    chat_body,
    image_part,
    local_port,
    png_bytes,
    refusal,
    serving,
    tiny_app,
)

PNG = png_bytes()
B64 = base64.b64encode(PNG).decode("ascii")


@pytest.fixture(scope="module")
def served(tiny_bundle: Path) -> Iterator[tuple[str, GenerationEngine]]:
    app, engine = tiny_app(tiny_bundle)
    with serving(app) as base:
        yield base, engine
    engine.close()


@pytest.fixture
def client(served: tuple[str, GenerationEngine]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as client:
        yield client


def _user(*content: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": list(content)}]}


TEXT = {"type": "text", "text": "Look:"}

# (body, JSON path the refusal names)
MALFORMED: list[tuple[Any, str | None]] = [
    (
        _user(TEXT, {"type": "file", "file": {"file_data": 5}}),
        "messages[0].content[1].file.file_data",
    ),
    (
        _user({"type": "file", "file": {"file_data": ["x"]}}),
        "messages[0].content[0].file.file_data",
    ),
    (_user({"type": "file", "file": {}}), "messages[0].content[0].file.file_data"),
    (
        _user({"type": "file", "file": {"file_data": B64, "filename": 3}}),
        "messages[0].content[0].file.filename",
    ),
    (
        _user({"type": "file", "file": {"file_data": B64, "modality": ["depth"]}}),
        "messages[0].content[0].file.modality",
    ),
    (_user({"type": "file", "file": "data:,x"}), "messages[0].content[0].file"),
    (
        _user({"type": "input_image", "input_image": {"data": 5}}),
        "messages[0].content[0].input_image.data",
    ),
    (
        _user({"type": "input_image", "input_image": {"data": {}}}),
        "messages[0].content[0].input_image.data",
    ),
    (
        _user({"type": "input_audio", "input_audio": {"data": B64, "format": 7}}),
        "messages[0].content[0].input_audio.format",
    ),
    (_user({"type": "input_audio", "input_audio": [B64]}), "messages[0].content[0].input_audio"),
    (_user({"type": "image_url", "image_url": {"url": 5}}), "messages[0].content[0].image_url.url"),
    (
        _user({"type": "image_url", "image_url": {"url": {"url": "x"}}}),
        "messages[0].content[0].image_url.url",
    ),
    (
        _user({"type": "image_url", "image_url": {"url": ""}}),
        "messages[0].content[0].image_url.url",
    ),
    (_user({"type": "image_url", "image_url": None}), "messages[0].content[0].image_url"),
    (_user({"type": "depth_url", "depth_url": 5}), "messages[0].content[0].depth_url"),
    (_user("just a string"), "messages[0].content[0]"),
    (_user(5), "messages[0].content[0]"),
    (_user(None), "messages[0].content[0]"),
    (_user({"type": 5}), "messages[0].content[0].type"),
    (_user({"text": "no type"}), "messages[0].content[0].type"),
    (_user({"type": "hologram", "hologram": {}}), "messages[0].content[0].type"),
    (_user({"type": "text", "text": 5}), "messages[0].content[0].text"),
    (_user({"type": "text"}), "messages[0].content[0].text"),
    (_user(TEXT, {"type": "text", "text": "a\udfffb"}), "messages[0].content[1].text"),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]},
        "messages[0].content",
    ),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": ["\udc00"]},
        "stop[0]",
    ),
    ({"model": "\ud800", "messages": []}, "model"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x", "\ud800": 1}]}, "messages[0]"),
    ({"model": MODEL, "messages": {"role": "user"}}, "messages"),
    ({"model": MODEL, "messages": ["Hi"]}, "messages[0]"),
    ({"model": MODEL, "messages": [{"content": "Hi"}]}, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role"),
    (
        {"model": MODEL, "messages": [{"role": "user", "content": "Hi", "name": 5}]},
        "messages[0].name",
    ),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
    ({"model": 5, "messages": [{"role": "user", "content": "Hi"}]}, "model"),
    (chat_body(seed=2**64, temperature=1), "seed"),
    (chat_body(seed=-(2**63) - 1), "seed"),
    (chat_body(temperature=3), "temperature"),
    (chat_body(temperature="hot"), "temperature"),
    (chat_body(top_p=0), "top_p"),
    (chat_body(max_tokens=0), "max_tokens"),
    (chat_body(max_tokens=1.5), "max_tokens"),
    (chat_body(stop=["a"] * 5), "stop"),
    (chat_body(stop=[""]), "stop"),
    (chat_body(stop=5), "stop"),
    (chat_body(stream=[]), "stream"),
    (chat_body(stream_options={"include_usage": []}), "stream_options.include_usage"),
    (chat_body(tools=[5]), "tools[0]"),
    (chat_body(tools=[{"type": "function"}]), "tools[0].function"),
    (
        chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": 5}}]),
        "tools[0].function.parameters",
    ),
    (chat_body(tool_choice=5), "tool_choice"),
    (chat_body(response_format=5), "response_format"),
    (chat_body(response_format={"type": "json_schema", "json_schema": 5}), "response_format"),
    (chat_body(logit_bias={"1": "x"}), 'logit_bias["1"]'),
    (
        {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
            ],
        },
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[]"}}],
                }
            ],
        },
        "messages[0].tool_calls[0].function.arguments",
    ),
    (
        {"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]},
        "messages[0].tool_call_id",
    ),
    ({"model": MODEL, "messages": [[[[[[[[]]]]]]]] * 2}, "messages[0]"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "extra": [[]] * 70}, None),
    (
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "x"}],
            "deep": json.loads("[" * 100 + "]" * 100),
        },
        "deep" + "[0]" * 63,
    ),
    ([1, 2], None),
    ("a string", None),
    (None, None),
]


def _send(client: httpx.Client, body: Any, path: str = CHAT) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("body", "param"), MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_chat_request_is_a_400_naming_its_path(
    client: httpx.Client, body: Any, param: str | None
) -> None:
    response = _send(client, body)
    if body is not None and isinstance(body, dict) and body.get("extra"):
        assert response.status_code == 200, response.text  # unknown fields are ignored
        return
    error = refusal(response, 400)
    assert error["param"] == param
    if param:
        assert error["message"].startswith(param), error["message"]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"model": "tiny", "messages": [], "temperature": NaN}', "NaN"),
        (b'{"model": "tiny", "temperature": Infinity}', "Infinity"),
        (b'{"model": "tiny", "temperature": 1e999}', "finite"),
        (b'{"model": "tiny\xff"}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper"),
        (b"", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_strict_json_are_400s(
    client: httpx.Client, raw: bytes, words: str
) -> None:
    assert words in refusal(_send(client, raw), 400)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "imagebind", "input": [5]}, "input[0]"),
        ({"model": "imagebind", "input": ["\ud800"]}, "input[0]"),
        (
            {"model": "imagebind", "input": [{"type": "file", "file": {"file_data": 5}}]},
            "input[0].file.file_data",
        ),
        (
            {"model": "imagebind", "input": [{"type": "input_depth", "input_depth": []}]},
            "input[0].input_depth",
        ),
        ({"model": "imagebind", "input": ["x"] * 2049}, "input"),
        ({"model": "imagebind", "input": "x", "dimensions": "wide"}, "dimensions"),
        ({"model": "imagebind", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "imagebind", "input": [image_part(b"\x89PNG junk")]}, "input[0]"),
    ],
)
def test_a_malformed_embedding_request_is_a_400_naming_its_path(
    client: httpx.Client, body: Any, param: str
) -> None:
    assert refusal(_send(client, body, EMBEDDINGS), 400)["param"] == param


def test_undecodable_media_names_its_part(client: httpx.Client) -> None:
    body = _user(TEXT, TEXT, image_part(b"\x89PNG\r\n\x1a\n not really"))
    error = refusal(_send(client, body), 400)
    assert error["param"] == "messages[0].content[2]" and error["code"] == "invalid_media"
    assert error["message"].startswith("messages[0].content[2]: ")


# --------------------------------------------------------------------------------------------
# Fuzzing: valid requests, broken at random
# --------------------------------------------------------------------------------------------

WAV = base64.b64encode(
    b"RIFF$\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00@\x1f\x00\x00\x80>\x00\x00"
    b"\x02\x00\x10\x00data\x00\x00\x00\x00"
).decode("ascii")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
SEEDS: list[tuple[str, dict[str, Any]]] = [
    (CHAT, {**chat_body(), "max_tokens": 2, "temperature": 0.7, "top_p": 0.9, "seed": 3}),
    (
        CHAT,
        _user(
            TEXT,
            image_part(PNG),
            {"type": "input_audio", "input_audio": {"data": WAV, "format": "wav"}},
            {
                "type": "file",
                "file": {"file_data": f"data:image/png;base64,{B64}", "modality": "depth"},
            },
            {"type": "input_thermal", "input_thermal": {"data": B64}},
        ),
    ),
    (CHAT, {**chat_body(), "tools": [WEATHER], "tool_choice": "required", "max_tokens": 40}),
    (
        CHAT,
        {
            **chat_body(),
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            },
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [WEATHER],
            "stop": ["\n", "END"],
        },
    ),
    (
        EMBEDDINGS,
        {"model": "imagebind", "input": ["a cat", image_part(PNG)], "encoding_format": "base64"},
    ),
]
HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -1e300,
    2**64,
    -(2**70),
    "",
    "x",
    "\ud800",
    "\udfff tail",
    "data:",
    "data:image/png;base64,",
    "data:image/png;base64,***",
    "file:///etc/passwd",
    "http://127.0.0.1:1/x.png",
    "~/x.png",
    "0" * 5000,
    [],
    [None],
    [[[]]],
    {},
    {"type": None},
    {"type": "file"},
    {"type": "image_url", "image_url": {}},
    {"url": 5},
    ["\ud800"],
]


def _paths(value: Any, where: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield where
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*where, index))


def _hostile(rng: random.Random) -> Any:
    return json.loads(json.dumps(rng.choice(HOSTILE)))  # a copy: later mutations may edit it


def _mutate(body: Any, rng: random.Random) -> Any:
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(body) if p]
        if not paths:
            return body
        where = rng.choice(paths)
        parent = body
        for step in where[:-1]:
            parent = parent[step]
        last = where[-1]
        action = rng.random()
        if action < 0.6:
            parent[last] = _hostile(rng)
        elif action < 0.75 and isinstance(parent, dict):
            del parent[last]
        elif action < 0.9:
            parent[last] = [parent[last]] if rng.random() < 0.5 else {"value": parent[last]}
        elif isinstance(parent, dict):
            parent[rng.choice(["type", "url", "data", "\ud800", "file_data"])] = _hostile(rng)
    return body


def _raw_mutation(raw: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(len(raw))
    choice = rng.randrange(4)
    if choice == 0:
        return raw[:cut]
    if choice == 1:
        return raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
    if choice == 2:
        return raw.replace(b"2", b"NaN", 1).replace(b"0.7", b"-Infinity", 1)
    return b"\xef\xbb\xbf" + raw


@pytest.mark.slow
def test_three_hundred_broken_requests_give_no_5xx(client: httpx.Client) -> None:
    rng = random.Random(12)
    statuses: dict[int, int] = {}
    for round_ in range(300):
        path, seed = SEEDS[round_ % len(SEEDS)]
        if round_ % 5 == 4:
            raw = _raw_mutation(json.dumps(seed).encode(), rng)
        else:
            raw = json.dumps(_mutate(seed, rng)).encode()
        response = _send(client, raw, path)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (raw[:400], response.text[:400])
        if response.status_code >= 400:
            refusal(response)
    assert statuses.get(400, 0) > 150, statuses


# --------------------------------------------------------------------------------------------
# Unexpected errors: one 500 (503 for memory), and the connection lives on
# --------------------------------------------------------------------------------------------


def _failing_once(error: BaseException) -> Any:
    state = {"raised": False}

    def fail(*args: Any, **kwargs: Any) -> Any:
        state["raised"] = True
        raise error

    return fail, state


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RuntimeError("secret internal detail"), 500, "internal_error"),
        (KeyError("boom"), 500, "internal_error"),
        (MemoryError(), 503, "out_of_memory"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 24 GB"),
            503,
            "out_of_memory",
        ),
    ],
)
def test_an_unexpected_error_is_json_and_keeps_the_connection(
    served: tuple[str, GenerationEngine],
    client: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    status: int,
    code: str,
) -> None:
    engine = served[1]
    fail, _ = _failing_once(error)
    monkeypatch.setattr(engine, "count_prompt_tokens", fail)
    broken = client.post(CHAT, json=chat_body(max_tokens=2))
    assert broken.status_code == status, broken.text
    body = broken.json()["error"]
    assert body["code"] == code and body["type"] == "server_error"
    assert "secret" not in body["message"]
    assert broken.headers.get("connection", "").lower() != "close"
    monkeypatch.undo()
    fine = client.post(CHAT, json=chat_body(max_tokens=2))
    assert fine.status_code == 200, fine.text
    assert local_port(fine) == local_port(broken)  # the same keep-alive connection


def test_an_engine_failure_mid_stream_ends_the_stream_properly(
    served: tuple[str, GenerationEngine], client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = served[1].model
    embed_tokens = model.embed_tokens
    calls = {"n": 0}

    def failing_later(ids: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 6:  # prefill and a few decode steps pass
            raise RuntimeError("the device fell over")
        return embed_tokens(ids)

    monkeypatch.setattr(model, "embed_tokens", failing_later)
    body = chat_body(max_tokens=200, temperature=0, stream=True)
    body["messages"][0]["content"] = "Tell me a long story about a hostile request."
    with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
        port = local_port(response)
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "internal_error" and "device" not in error["message"]
    monkeypatch.undo()
    fine = client.post(CHAT, json=chat_body(max_tokens=2))
    assert fine.status_code == 200 and local_port(fine) == port
