"""Raw TCP servers on loopback that misbehave on purpose (no external network involved)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Behaviour = Callable[[socket.socket, bytes], None]


class LoopbackServer:
    """Accepts connections on ``host`` (a loopback address) and runs ``behaviour`` on each
    with the request bytes received so far; counts connections and keeps the requests."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.requests: list[bytes] = []
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str = "/media.png") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            try:
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.requests.append(request)
                self.behaviour(conn, request)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=2)


@contextmanager
def loopback(behaviour: Behaviour, host: str = "127.0.0.1") -> Iterator[LoopbackServer]:
    server = LoopbackServer(behaviour, host)
    try:
        yield server
    finally:
        server.close()


def respond(body: bytes, content_type: str = "image/png") -> Behaviour:
    def behaviour(conn: socket.socket, _: bytes) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode() + body)

    return behaviour


def redirect(location: str) -> Behaviour:
    def behaviour(conn: socket.socket, _: bytes) -> None:
        conn.sendall(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    return behaviour


def trickle(head: bytes, tail: bytes, interval: float) -> Behaviour:
    """Send ``head`` at once, then ``tail`` one byte every ``interval`` seconds."""

    def behaviour(conn: socket.socket, _: bytes) -> None:
        conn.sendall(head)
        for byte in tail:
            time.sleep(interval)
            conn.sendall(bytes([byte]))

    return behaviour


def speak(data: bytes, then_wait: float = 0.0) -> Behaviour:
    """Send ``data`` (not HTTP), wait, close."""

    def behaviour(conn: socket.socket, _: bytes) -> None:
        conn.sendall(data)
        time.sleep(then_wait)

    return behaviour


def chunked(total: int) -> Behaviour:
    """A chunked body of ``total`` bytes with no Content-Length."""

    def behaviour(conn: socket.socket, _: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"x" * 4096
        for _ in range(total // len(block)):
            conn.sendall(b"1000\r\n" + block + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    return behaviour


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])
