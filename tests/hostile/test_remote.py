"""Item 7: remote media must not be an SSRF tool.

Before: loopback and private addresses were fetched, redirects to them followed, a closed
port gave a different error than an open non-HTTP one, and the 10 s timeout applied per
socket read, so a body trickled at 1 byte / 2 s ran for minutes. Every server here listens
on loopback; addresses that must be refused are never connected to (``_connect`` is
replaced by a tripwire where a broken check could otherwise reach the network).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hostile.servers import (
    chunked,
    closed_port,
    loopback,
    redirect,
    respond,
    speak,
    trickle,
)
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media import MediaPolicy, remote, resolve_location
from langchain_pandagpt.media.remote import UNAVAILABLE, fetch_remote_media, is_public_address

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
LOOPBACK = ("127.0.0.1",)
LABEL = "messages[0].content[1]"


def _fetch(url: str, *, allow: tuple[str, ...] = LOOPBACK, timeout: float = 3.0) -> Any:
    return fetch_remote_media(url, 10_000, timeout, allow_hosts=allow, label=LABEL)


def _refusal(url: str, **kwargs: Any) -> str:
    with pytest.raises(MediaError) as caught:
        _fetch(url, **kwargs)
    return str(caught.value)


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fails the test if a connection is attempted at all."""
    attempts: list[object] = []

    def refuse(addresses: object, deadline: object) -> None:
        attempts.append(addresses)
        raise AssertionError(f"tried to connect to {addresses}")

    monkeypatch.setattr(remote, "_connect", refuse)
    yield attempts
    assert attempts == []


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Resolve the test host names to ``answers`` (one answer per call, the last repeating);
    other names fail. Returns the log of lookups."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            if host.replace(".", "").isdigit() or ":" in host or host == "localhost":
                return real(host, port, *args, **kwargs)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        lookups.append(host)
        address = answers[host][min(len(lookups), len(answers[host])) - 1]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("224.0.0.251", False),  # multicast
        ("239.255.255.250", False),
        ("240.0.0.1", False),  # reserved
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("fec0::1", False),  # site-local
        ("ff02::1", False),
        ("ff0e::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:10.0.0.1", False),
        ("2002:a00:1::1", False),  # 6to4 around 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 around 169.254.169.254
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_loopback_is_refused_without_an_allow_list_and_never_contacted() -> None:
    with loopback(respond(PNG)) as server:
        message = _refusal(server.url(), allow=())
        decimal = f"http://2130706433:{server.port}/media.png"  # 127.0.0.1 spelled as a number
        assert _refusal(decimal, allow=()) == message
        assert server.connections == 0
        assert _fetch(server.url()) == (PNG, "image/png")  # allowed for intranet use
        assert server.connections == 1
    assert message == f"{LABEL}: {UNAVAILABLE} ({remote._UNAVAILABLE_FIX})"
    assert "127.0.0.1" not in message


def test_the_policy_carries_the_allow_list() -> None:
    with loopback(respond(PNG)) as server:
        closed = MediaPolicy(allow_remote_media=True)
        with pytest.raises(MediaError, match="remote_allow_hosts"):
            resolve_location(server.url(), closed)
        opened = MediaPolicy(allow_remote_media=True, remote_allow_hosts=["127.0.0.0/8"])
        assert resolve_location(server.url(), opened).data == PNG
        by_name = MediaPolicy(allow_remote_media=True, remote_allow_hosts=["localhost"])
        url = f"http://localhost:{server.port}/media.png"
        assert resolve_location(url, by_name).data == PNG


@pytest.mark.parametrize("target", ["169.254.169.254", "10.0.0.1", "[::1]", "[fd00::1]"])
def test_private_literal_addresses_are_refused_before_connecting(
    target: str, tripwire: list[object]
) -> None:
    assert UNAVAILABLE in _refusal(f"http://{target}/latest/meta-data/")


def test_names_resolving_to_private_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, tripwire: list[object]
) -> None:
    _fake_dns(monkeypatch, {"metadata.test": ["169.254.169.254"], "mixed.test": ["10.0.0.7"]})
    assert UNAVAILABLE in _refusal("http://metadata.test/latest/")
    assert UNAVAILABLE in _refusal("https://mixed.test/cat.png")


def test_connections_go_to_the_checked_address_not_a_new_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: the first answer is allowed, a second lookup would say 127.0.0.2."""
    with loopback(lambda conn, _: None, host="127.0.0.2") as rebound:
        with loopback(respond(PNG)) as server:
            lookups = _fake_dns(monkeypatch, {"media.test": ["127.0.0.1", "127.0.0.2"]})
            assert _fetch(f"http://media.test:{server.port}/x.png") == (PNG, "image/png")
            assert lookups == ["media.test"]
            assert f"Host: media.test:{server.port}".encode() in server.requests[0]
        assert rebound.connections == 0


def test_redirects_are_checked_at_every_hop() -> None:
    with loopback(respond(PNG)) as private:  # 127.0.0.2 is loopback, but not allowed here
        with loopback(redirect(private.url().replace("127.0.0.1", "127.0.0.2"))) as bouncer:
            assert UNAVAILABLE in _refusal(bouncer.url())
            assert bouncer.connections == 1
        with loopback(redirect("ftp://127.0.0.1/x")) as to_ftp:
            assert "redirect to ftp: refused (http(s) only)" in _refusal(to_ftp.url())
        with loopback(redirect("/again")) as loop:
            assert "more than 5 redirects" in _refusal(loop.url())
            assert loop.connections == 6
        with loopback(redirect(private.url())) as good:
            assert _fetch(good.url()) == (PNG, "image/png")


def test_a_trickled_body_stops_at_the_total_deadline() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    with loopback(trickle(head, PNG * 20, interval=0.1)) as server:
        start = time.monotonic()
        message = _refusal(server.url(), timeout=1.0)
        elapsed = time.monotonic() - start
    assert UNAVAILABLE in message
    assert 0.9 < elapsed < 2.5  # the trickle alone would take 128 s


def test_trickled_headers_stop_at_the_total_deadline() -> None:
    status = b"HTTP/1.1 200 OK\r\n"
    with loopback(trickle(status, b"X-Slow: " + b"a" * 5000 + b"\r\n\r\n", 0.05)) as server:
        start = time.monotonic()
        assert UNAVAILABLE in _refusal(server.url(), timeout=1.0)
        assert time.monotonic() - start < 2.5  # the trickle alone would take 250 s


def test_port_states_are_indistinguishable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed, open but not HTTP, silent, truncated, unresolvable: one message."""
    _fake_dns(monkeypatch, {})
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"
    with (
        loopback(speak(b"SSH-2.0-OpenSSH_9.6\r\n", then_wait=0.5)) as ssh,
        loopback(speak(b"\x00\x01binary garbage\r\n\r\n")) as garbage,
        loopback(speak(b"", then_wait=3)) as silent,
        loopback(speak(head + b"only a part")) as truncated,
    ):
        messages = {
            "closed": _refusal(f"http://127.0.0.1:{closed_port()}/x.png", timeout=0.8),
            "ssh": _refusal(ssh.url(), timeout=0.8),
            "garbage": _refusal(garbage.url(), timeout=0.8),
            "silent": _refusal(silent.url(), timeout=0.8),
            "silent tls": _refusal(silent.url().replace("http:", "https:"), timeout=0.8),
            "tls to ssh": _refusal(ssh.url().replace("http:", "https:"), timeout=0.8),
            "truncated": _refusal(truncated.url(), timeout=0.8),
            "no such host": _refusal("http://nowhere.test/x.png", timeout=0.8),
            "not allowed": _refusal(ssh.url(), allow=(), timeout=0.8),
        }
    assert len(set(messages.values())) == 1, messages


def test_the_byte_budget_holds_without_content_length() -> None:
    with loopback(chunked(64 * 4096)) as server:
        assert "over the max_bytes limit of 10000 bytes" in _refusal(server.url())


def test_only_http_and_https() -> None:
    for url in ("ftp://127.0.0.1/x", "file:///etc/passwd", "gopher://127.0.0.1:70/"):
        with pytest.raises(MediaError, match="is not an http"):
            _fetch(url)
    with pytest.raises(MediaError, match="is not a valid URL"):
        _fetch("http://127.0.0.1:99999/x")
