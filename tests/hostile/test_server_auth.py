"""Item 8 of the hardening issue: an empty API key is refused at start, and the key is checked
from the headers before the body is read."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from langchain_pandagpt.cli import app as cli
from langchain_pandagpt.serving.server import ServerSettings

from .server_support import CHAT, chat_body, refusal, serving, tiny_app

KEY = "hostile-key"


@pytest.mark.parametrize("key", ["", "   ", " padded", "tab\there", "naïve"])
def test_settings_refuse_an_empty_or_unsendable_key(key: str) -> None:
    with pytest.raises(ValueError, match="api_key"):
        ServerSettings(api_key=key)


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--api-key", ""], {}), ([], {"PANDAGPT_API_KEY": ""}), ([], {"PANDAGPT_API_KEY": "  "})],
)
def test_serve_refuses_an_empty_key_before_loading(
    tiny_bundle: Path, args: list[str], env: dict[str, str]
) -> None:
    result = CliRunner().invoke(cli, ["serve", "--bundle", str(tiny_bundle), *args], env=env)
    assert result.exit_code == 1, result.output
    assert "api_key is empty" in " ".join(result.output.split())


@pytest.fixture(scope="module")
def base(tiny_bundle: Path) -> Iterator[str]:
    app, engine = tiny_app(tiny_bundle, embeddings=False, api_key=KEY, max_request_bytes=2**26)
    with serving(app) as url:
        yield url
    engine.close()


def test_no_key_is_a_401_even_for_a_broken_body(base: str) -> None:
    headers = {"Content-Type": "application/json"}
    error = refusal(httpx.post(f"{base}{CHAT}", content=b"{not json", headers=headers), 401)
    assert error["code"] == "invalid_api_key"
    wrong = {**headers, "Authorization": "Bearer nope"}
    assert httpx.post(f"{base}{CHAT}", content=b"{", headers=wrong).status_code == 401
    right = {**headers, "Authorization": f"Bearer {KEY}"}
    assert httpx.post(f"{base}{CHAT}", content=b"{", headers=right).status_code == 400
    ok = httpx.post(f"{base}{CHAT}", json=chat_body(max_tokens=1), headers=right)
    assert ok.status_code == 200
    assert httpx.get(f"{base}/health").status_code == 200  # no key needed


def _answer_to_headers_only(base: str, authorization: bytes) -> bytes:
    """What the server sends within 2 s to a request announcing a 64 MB body that never
    comes (only the headers are sent)."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 67108864\r\n"
            + authorization
            + b"\r\n"
        )
        conn.settimeout(2)
        received = b""
        deadline = time.monotonic() + 2
        try:
            while b"\r\n\r\n" not in received and time.monotonic() < deadline:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                received += chunk
        except TimeoutError:
            pass
        return received


def test_the_key_is_checked_before_the_body_is_read(base: str) -> None:
    answer = _answer_to_headers_only(base, b"")
    assert answer.startswith(b"HTTP/1.1 401"), answer
    # With the key, the server waits for the body it was promised: nothing comes back.
    assert _answer_to_headers_only(base, f"Authorization: Bearer {KEY}\r\n".encode()) == b""
