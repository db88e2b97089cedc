"""``pandagpt chat`` (issue 13): Ctrl-C stops an answer and keeps the conversation, Ctrl-C
twice or Ctrl-D at the prompt quits, and ``/image`` takes quoted paths.

The loop is driven directly (``cli/session.py`` reads and writes through callables) on the
tiny model, and once as a real process that gets a real SIGINT in the middle of an answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from langchain_pandagpt.cli.session import ChatSession, run_repl
from langchain_pandagpt.conversation import Message
from langchain_pandagpt.demo import write_demo_media
from langchain_pandagpt.generation.engine import (
    GenerationEngine,
    RequestHandle,
    SamplingParams,
    StreamChunk,
)
from langchain_pandagpt.generation.registry import get_shared_model


class RecordingEngine:
    """The real engine, keeping the handle of every request (to see cancellations)."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self.handles: list[RequestHandle] = []

    def stream(
        self, messages: Sequence[Message], params: SamplingParams | None = None
    ) -> Iterator[StreamChunk]:
        handle = self.engine.submit(messages, params)
        self.handles.append(handle)
        return handle.stream()


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path) -> Iterator[GenerationEngine]:
    engine = GenerationEngine(get_shared_model(tiny_bundle, device="cpu"))
    yield engine
    engine.close()


@pytest.fixture
def session(engine: GenerationEngine) -> ChatSession:
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    return ChatSession(RecordingEngine(engine), params)  # type: ignore[arg-type]


class Terminal:
    """Lines to read (a ``KeyboardInterrupt`` instance is a Ctrl-C at the prompt), output and
    errors written; ``interrupt_answers`` Ctrl-Cs arrive during the first chunk of answers."""

    def __init__(self, lines: list[str | KeyboardInterrupt], interrupt_answers: int = 0) -> None:
        self.lines = list(lines)
        self.out: list[str] = []
        self.errors: list[str] = []
        self.interrupt_answers = interrupt_answers

    def read(self) -> str | None:
        if not self.lines:
            return None
        line = self.lines.pop(0)
        if isinstance(line, KeyboardInterrupt):
            raise line
        return line

    def write(self, text: str) -> None:
        if text.startswith("> ") and self.interrupt_answers:  # an answer's first chunk
            self.interrupt_answers -= 1
            raise KeyboardInterrupt
        self.out.append(text)

    def run(self, session: ChatSession) -> None:
        run_repl(session, self.read, self.write, self.errors.append, answer_prefix="> ")


def test_ctrl_c_mid_answer_cancels_it_and_keeps_the_conversation(session: ChatSession) -> None:
    recorder: Any = session.engine
    Terminal(["Hello there"]).run(session)
    assert [m.role for m in session.history] == ["human", "assistant"]
    before = list(session.history)

    terminal = Terminal(["What is a panda?", "And now?"], interrupt_answers=1)
    terminal.run(session)
    assert terminal.errors == [
        "answer cancelled; the conversation is as it was before that question"
    ]
    cancelled, answered = recorder.handles[1:]
    assert cancelled.cancelled  # the engine was told to stop decoding it
    assert answered.done and not answered.cancelled
    # The cancelled question is not in the history; the next one follows the first turn.
    assert session.history[:2] == before
    assert [m.text for m in session.history if m.role == "human"] == ["Hello there", "And now?"]


def test_ctrl_c_keeps_media_attached_for_a_retry(session: ChatSession, tmp_path: Path) -> None:
    image = write_demo_media(tmp_path)["image"]
    terminal = Terminal([f"/image {image}", "What is this?"], interrupt_answers=1)
    terminal.run(session)
    assert [item.name for item in session.pending] == [image.name]
    assert session.history == []


def test_ctrl_c_twice_at_the_prompt_quits_once_asks_to_confirm(session: ChatSession) -> None:
    terminal = Terminal([KeyboardInterrupt(), "Hi", KeyboardInterrupt(), KeyboardInterrupt(), "x"])
    terminal.run(session)
    assert terminal.errors == ["press Ctrl-C again, or Ctrl-D, to quit"] * 2
    assert len(session.history) == 2  # "Hi" was answered between the two
    assert terminal.lines == ["x"]  # never read: the second Ctrl-C in a row quit


def test_quoted_and_several_paths(session: ChatSession, tmp_path: Path) -> None:
    media = write_demo_media(tmp_path / "media")
    (tmp_path / "my files").mkdir()
    spaced = tmp_path / "my files" / "a b.png"
    spaced.write_bytes(media["image"].read_bytes())
    quote = tmp_path / "it's.png"
    quote.write_bytes(media["image"].read_bytes())
    terminal = Terminal(
        [
            f'/image "{spaced}" {media["image"]}',
            f"/image {spaced}",  # unquoted, but it names a file as it stands
            f"/image {quote}",  # an apostrophe, unquoted
            f"/audio '{media['audio']}'",
            '/image "unbalanced',
            "/image",
        ]
    )
    terminal.run(session)
    names = [item.name for item in session.pending]
    assert names == ["a b.png", "picture-0.png", "a b.png", "it's.png", "tone-0.wav"]
    assert "No closing quotation" in terminal.errors[0]
    assert "/image needs a file" in terminal.errors[1]


@pytest.mark.slow
def test_chat_process_survives_sigint_mid_answer(tiny_bundle: Path) -> None:
    """A real SIGINT while an answer streams: the answer stops and the chat goes on (a later
    command runs); at the prompt, one SIGINT asks for another, the second ends with status 0."""
    sampling = ["--max-tokens", "1500", "--temperature", "1", "--seed", "1"]
    process = subprocess.Popen(
        [sys.executable, "-m", "langchain_pandagpt.cli", "chat", "-b", str(tiny_bundle), *sampling],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = _Collector(process.stdout), _Collector(process.stderr)  # type: ignore[arg-type]
    try:
        assert process.stdin is not None
        process.stdin.write(b"Tell me a long story.\n")
        process.stdin.flush()
        out.wait_for(lambda data: len(data) > 0, timeout=240)  # the answer is streaming
        process.send_signal(signal.SIGINT)
        err.wait_for(lambda data: b"answer cancelled" in data, timeout=60)
        process.stdin.write(b"/reset\n")
        process.stdin.flush()
        out.wait_for(lambda data: b"[conversation cleared]" in data, timeout=60)
        process.send_signal(signal.SIGINT)  # at the prompt, waiting for a line
        err.wait_for(lambda data: b"press Ctrl-C again" in data, timeout=60)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    out.join()
    err.join()
    assert b"Traceback" not in err.data, err.data.decode()


class _Collector(threading.Thread):
    """Reads a pipe in the background so the test can wait for what it expects."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.data = b""
        self.start()

    def run(self) -> None:
        while chunk := self.stream.read1(4096):
            self.data += chunk

    def wait_for(self, condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self.data):
            assert time.monotonic() < deadline, f"timed out; got {self.data[-500:]!r}"
            time.sleep(0.05)
