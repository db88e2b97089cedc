"""Fetching ``http(s)`` media without becoming a tool against the network around us (SSRF).

A fetch (the caller checks ``allow_remote_media`` first):

* takes ``http`` and ``https`` URLs only, and follows at most :data:`MAX_REDIRECTS` redirects,
  each one to ``http(s)`` again and checked like the first URL;
* resolves the host itself and refuses it unless every address it resolves to is public
  (:func:`is_public_address`: no loopback, private, link-local, shared, multicast, reserved
  or unspecified address, nor one embedded in an IPv6 address), or the host or its network
  is in the caller's allow-list (``MediaPolicy.remote_allow_hosts``, for intranets);
* connects to exactly the address it checked, never re-resolving the name, so a DNS answer
  that changes between check and connection (DNS rebinding) cannot redirect it; TLS is still
  verified against the host name; environment proxies are never used (a proxy would connect
  to an address we did not check);
* ends within ``timeout`` seconds in total (DNS, connection, TLS, headers, redirects and body
  together, however slowly the server trickles bytes): a watchdog shuts the socket down at
  the deadline;
* reads at most ``max_bytes`` bytes (refused earlier when Content-Length says more);
* reports every network-level failure with one message (DNS failure, refused address,
  closed port, a non-HTTP answer, TLS failure, timeout), so errors cannot be used to map
  hosts and ports; the detail is logged at debug level. HTTP errors (404...) from an allowed
  address are reported as such.

Why ``http.client`` rather than urllib's opener, httpx (a dev dependency only) or requests:
none of them lets the caller connect to a pre-checked address (they resolve the host again
when connecting) or bounds a whole fetch in time (their timeouts are per socket operation,
so a body trickled one byte per timeout never ends). ``http.client`` takes a connection
factory, which makes pinning a few lines, and the deadline is a watchdog either way, so a
new runtime dependency would buy nothing.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

from langchain_pandagpt.errors import MediaError

logger = logging.getLogger(__name__)

REMOTE_SCHEMES: Final = ("http", "https")
#: Most redirects followed per fetch.
MAX_REDIRECTS: Final = 5
#: Content types that say nothing about the medium (the caller sniffs the bytes instead).
_GENERIC_TYPES: Final = frozenset({"application/octet-stream", "text/plain", "binary/octet-stream"})
_REDIRECT_CODES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK: Final = 1 << 16
_LABEL: Final = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NAT64_PREFIXES: Final = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
#: The one message for every network-level failure (see the module docstring).
UNAVAILABLE: Final = "cannot be fetched: no HTTP answer from an allowed address in time"
_UNAVAILABLE_FIX: Final = (
    "check the URL, or send the data inline; hosts on loopback, private or link-local "
    "networks are fetched only when listed in remote_allow_hosts"
)

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
SockAddr: TypeAlias = tuple[Any, ...]


class _Unavailable(Exception):
    """A failure reported as :data:`UNAVAILABLE`; its text is logged, never shown."""


def is_public_address(address: Address) -> bool:
    """Whether ``address`` is a public unicast address a fetch may connect to.

    Refused: loopback, private, link-local, shared (100.64/10), documentation, benchmarking,
    reserved, unspecified, multicast and IPv6 site-local addresses, and IPv6 addresses that
    embed a refused IPv4 address (IPv4-mapped, 6to4, NAT64).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        embedded = [address.sixtofour]
        if any(address in prefix for prefix in _NAT64_PREFIXES):
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if any(inner is not None and not is_public_address(inner) for inner in embedded):
            return False
        if address.is_site_local:
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved)


def allow_entry(entry: str) -> Network | str:
    """An allow-list entry as an IP network (``"10.0.0.0/8"``, ``"::1"``, ``"[::1]"``) or a
    normalised host name (lower case, no trailing dot); anything else is a ValueError."""
    text = entry.strip().lower()
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    name = text.rstrip(".")
    if not (0 < len(name) <= 253 and all(_LABEL.fullmatch(part) for part in name.split("."))):
        raise ValueError(f"{entry!r} is neither a host name nor an IP network")
    return name


class AllowList:
    """Host names and networks a fetch may reach although they are not public."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.networks: list[Network] = []
        for entry in map(allow_entry, entries):
            if isinstance(entry, str):
                self.names.add(entry)
            else:
                self.networks.append(entry)

    def allows(self, host: str, address: Address) -> bool:
        """Whether ``host``, resolved to ``address``, may be fetched."""
        if host.rstrip(".").lower() in self.names:
            return True
        return is_public_address(address) or any(address in net for net in self.networks)


class _Deadline:
    """The end of one fetch: ``remaining()`` for each blocking step, and a watchdog that
    shuts down the watched sockets when time is up, whatever they are blocked in."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._descriptors: set[int] = set()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise _Unavailable("deadline reached")
        return left

    def watch(self, descriptor: int) -> None:
        with self._lock:
            self._descriptors.add(descriptor)
        if self.expired:
            _shutdown(descriptor)

    def unwatch(self, descriptor: int | None = None) -> None:
        """Forget ``descriptor`` (default: all); call before closing sockets, so that a
        descriptor number reused after the close is never shut down."""
        with self._lock:
            if descriptor is None:
                self._descriptors.clear()
            else:
                self._descriptors.discard(descriptor)

    def cancel(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._descriptors.clear()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for descriptor in self._descriptors:
                _shutdown(descriptor)


def _shutdown(descriptor: int) -> None:
    """Shut a socket down by descriptor: blocked reads, writes and TLS handshakes return at
    once. By descriptor because ``ssl`` moves the descriptor to a new socket object."""
    sock = socket.socket(fileno=descriptor)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


@functools.cache
def _dns_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Name lookups run here so that a hanging resolver cannot outlast the deadline."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="media-dns")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _resolve(host: str, port: int, allow: AllowList, deadline: _Deadline) -> list[SockAddr]:
    """The checked socket addresses of ``host``; any refused address refuses the host."""
    lookup = _dns_pool().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = lookup.result(timeout=deadline.remaining())
    except concurrent.futures.TimeoutError:
        raise _Unavailable(f"DNS lookup of {host!r} timed out") from None
    except (OSError, UnicodeError) as exc:
        raise _Unavailable(f"DNS lookup of {host!r} failed: {exc}") from exc
    addresses = []
    for family, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not allow.allows(host, address):
            raise _Unavailable(f"{host!r} resolves to {address}, which is not allowed")
        addresses.append((family, sockaddr))
    if not addresses:
        raise _Unavailable(f"{host!r} has no address")
    return addresses


def _connect(addresses: Sequence[SockAddr], deadline: _Deadline) -> socket.socket:
    """A TCP connection to the first reachable checked address (never the name again)."""
    failures = []
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining())
            deadline.watch(sock.fileno())
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            deadline.unwatch(sock.fileno())
            sock.close()
            failures.append(f"{sockaddr[0]}: {exc}")
    raise _Unavailable("cannot connect: " + "; ".join(failures))


def _open_connection(
    scheme: str, host: str, port: int, addresses: Sequence[SockAddr], deadline: _Deadline
) -> http.client.HTTPConnection:
    """An HTTP(S) connection to ``host`` whose socket goes to the checked ``addresses``."""
    timeout = deadline.remaining()
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=_tls_context()
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def pinned(*_: object) -> socket.socket:  # replaces socket.create_connection((host, port))
        return _connect(addresses, deadline)

    connection._create_connection = pinned  # type: ignore[attr-defined]
    return connection


def _target(url: str, label: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and request path of an http(s) URL; anything else is refused."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MediaError(label, f"is not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise MediaError(label, "is not an http(s) URL", "fetch only http:// or https:// URLs")
    if not parts.hostname:
        raise MediaError(label, "is not a valid URL (no host)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80), path


def fetch_remote_media(
    url: str,
    max_bytes: int,
    timeout: float,
    *,
    limit_name: str = "max_bytes",
    allow_hosts: Iterable[str] = (),
    label: str | None = None,
) -> tuple[bytes, str | None]:
    """Bytes and Content-Type of an http(s) URL (see the module docstring for the rules).

    ``timeout`` bounds the whole fetch; ``allow_hosts`` lists host names and networks that
    may be reached although not public. ``limit_name`` is the caller's setting for the byte
    cap, so the error says what to raise; ``label`` names the input in errors (default: the
    URL). The Content-Type is ``None`` when it is generic (``application/octet-stream``...).
    """
    label = label or url
    _target(url, label)  # refuse non-http(s) URLs before anything starts
    allow = AllowList(allow_hosts)  # a bad entry is the caller's ValueError, not a network one
    deadline = _Deadline(timeout)
    try:
        return _fetch(url, max_bytes, allow, deadline, limit_name, label)
    except (_Unavailable, OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(exc, MediaError):
            raise
        logger.debug("remote fetch of %s failed: %s: %s", url, type(exc).__name__, exc)
        raise MediaError(label, UNAVAILABLE, _UNAVAILABLE_FIX) from None
    finally:
        deadline.cancel()


def _fetch(
    url: str, max_bytes: int, allow: AllowList, deadline: _Deadline, limit_name: str, label: str
) -> tuple[bytes, str | None]:
    too_big = f"over the {limit_name} limit of {max_bytes} bytes"
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, path = _target(url, label)
        connection = _open_connection(
            scheme, host, port, _resolve(host, port, allow, deadline), deadline
        )
        response = None
        try:
            connection.request("GET", path, headers={"User-Agent": "langchain-pandagpt"})
            response = connection.getresponse()
            location = response.getheader("Location")
            if response.status in _REDIRECT_CODES and location:
                next_url = urllib.parse.urljoin(url, location.strip())
                next_scheme = urllib.parse.urlsplit(next_url).scheme.lower()
                if next_scheme not in REMOTE_SCHEMES:
                    raise MediaError(label, f"redirect to {next_scheme}: refused (http(s) only)")
                url = next_url
                continue
            if response.status != 200:
                phrase = _phrase(response.status)
                raise MediaError(label, f"cannot be fetched (HTTP {response.status}{phrase})")
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise MediaError(label, f"is {length} bytes, {too_big}", f"raise {limit_name}")
            data = _read_body(response, max_bytes, deadline)
            if data is None:
                raise MediaError(label, f"is {too_big}", f"raise {limit_name}")
            content_type = response.headers.get_content_type()
            return data, None if content_type in _GENERIC_TYPES else content_type
        finally:
            deadline.unwatch()
            if response is not None:
                response.close()
            connection.close()
    raise MediaError(label, f"cannot be fetched (more than {MAX_REDIRECTS} redirects)")


def _read_body(
    response: http.client.HTTPResponse, max_bytes: int, deadline: _Deadline
) -> bytes | None:
    """The body, or ``None`` past ``max_bytes``; a body cut short (by the server or by the
    deadline's watchdog) is :class:`_Unavailable`."""
    chunks, total = [], 0
    while chunk := response.read(min(_CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            return None
    if deadline.expired:
        raise _Unavailable(f"deadline reached after {total} bytes of the body")
    if response.length:  # Content-Length bytes still missing
        raise _Unavailable(f"body cut short after {total} bytes")
    return b"".join(chunks)


def _phrase(status: int) -> str:
    """`` Not Found`` for 404: the standard phrase, never the server's own text."""
    try:
        return f" {http.HTTPStatus(status).phrase}"
    except ValueError:
        return ""
