"""An interactive PandaGPT conversation: history, attached media and slash commands.

This is the logic of ``pandagpt chat`` without any terminal code: :func:`run_repl` reads
lines and writes text through two callables, so the same loop serves a terminal, a pipe
(``pandagpt chat < script.txt``) and tests. Media attached with ``/image PATH`` (etc.) go into
the next question, as in the reference demo, and the conversation is re-sent every turn, so the
engine's prefix cache only computes the new turn.

Ctrl-C while an answer streams cancels that answer (the engine stops decoding it) and keeps
the conversation as it was before the question; Ctrl-C at the prompt asks for a second one to
quit, as a long-running REPL should.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

from langchain_pandagpt.cli.common import utf8_problem
from langchain_pandagpt.conversation import MEDIA_MODALITIES, MediaItem, Message
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams, StreamChunk

#: Slash commands and what they do, in the order ``/help`` lists them.
COMMANDS: dict[str, str] = {
    **{f"/{m} PATH": f"attach this {m} file to your next message" for m in MEDIA_MODALITIES},
    "/reset": "forget the conversation and any attached media",
    "/help": "show this list",
    "/quit": "leave (Ctrl-D works too)",
}


@dataclass
class ChatSession:
    """A conversation with one engine: the turns so far and the media waiting for the next
    question."""

    engine: GenerationEngine
    params: SamplingParams = field(default_factory=SamplingParams)
    system: str | None = None
    history: list[Message] = field(default_factory=list)
    pending: list[MediaItem] = field(default_factory=list)

    def attach(self, modality: str, path: str | Path) -> MediaItem:
        """Queue a media file for the next question; a missing file is refused at once."""
        file = Path(path).expanduser()
        if not file.is_file():
            problem = "is not a regular file" if file.exists() else "file not found"
            raise MediaError(str(path), problem, "check the path")
        item = MediaItem(modality, str(file), name=file.name)
        self.pending.append(item)
        return item

    def reset(self) -> None:
        self.history.clear()
        self.pending.clear()

    def ask(self, question: str) -> Generator[StreamChunk, None, None]:
        """Streams the answer to ``question`` (with the pending media).

        The turn joins the history only once the answer is complete, so a failed, cancelled
        or abandoned question leaves the conversation as it was. Media that cannot be read are
        dropped (they would fail every later question too); other media stay attached for a
        retry. Closing this iterator (or an exception in it) cancels the request in the engine.
        """
        turn = Message("human", question, media=list(self.pending))
        messages = [*self._system(), *self.history, turn]
        answer: list[str] = []
        stream = self.engine.stream(messages, self.params)
        try:
            for chunk in stream:
                answer.append(chunk.text)
                yield chunk
        except MediaError:
            self.pending.clear()
            raise
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # the engine's stream cancels the request unless it finished
        self.history += [turn, Message("assistant", "".join(answer))]
        self.pending.clear()

    def _system(self) -> list[Message]:
        return [Message("system", self.system)] if self.system else []


def help_text() -> str:
    width = max(len(command) for command in COMMANDS)
    lines = [f"  {command.ljust(width)}  {text}" for command, text in COMMANDS.items()]
    return (
        "Commands:\n"
        + "\n".join(lines)
        + '\nQuote paths with spaces (/image "my cat.jpg"); several paths attach several files.'
        + "\nAnything else is a question. Ctrl-C stops an answer; Ctrl-C twice or Ctrl-D quits.\n"
    )


def run_repl(
    session: ChatSession,
    read_line: Callable[[], str | None],
    write: Callable[[str], None],
    write_error: Callable[[str], None],
    *,
    answer_prefix: str = "",
) -> None:
    """Reads lines until ``/quit``, end of input (``read_line`` returns ``None``) or two
    Ctrl-C in a row at the prompt (``read_line`` raises ``KeyboardInterrupt`` twice).

    Answers stream through ``write`` as they are decoded, after ``answer_prefix``. Ctrl-C
    during an answer cancels it and keeps the conversation; problems with one line (a missing
    file, bad media, text that is not UTF-8, an overlong conversation) go to ``write_error``;
    either way the loop goes on.
    """
    interrupted = False
    number = 0
    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            write("\n")
            if interrupted:
                return
            interrupted = True
            write_error("press Ctrl-C again, or Ctrl-D, to quit")
            continue
        if line is None:
            return
        interrupted = False
        number += 1
        line = line.strip()
        if not line:
            continue
        try:
            if not line.startswith("/"):  # a question (paths after a command may be any bytes)
                if problem := utf8_problem(line):
                    raise ValueError(f"line {number} {problem}; type UTF-8 text")
                _answer(session, line, write, answer_prefix)
            elif _command(session, line, write):
                return
        except KeyboardInterrupt:
            write("\n")
            write_error("answer cancelled; the conversation is as it was before that question")
        except ValueError as exc:  # MediaError, PandaGPTError subclasses, prompt too long
            write_error(str(exc))


def _answer(session: ChatSession, question: str, write: Callable[[str], None], prefix: str) -> None:
    stream = session.ask(question)
    try:
        for index, chunk in enumerate(stream):
            write((prefix if index == 0 else "") + chunk.text)
    finally:
        stream.close()  # on Ctrl-C between chunks: cancel the request, leave the history
    write("\n")


def _command(session: ChatSession, line: str, write: Callable[[str], None]) -> bool:
    """Runs one slash command; returns True for ``/quit``."""
    name, _, argument = line[1:].partition(" ")
    argument = argument.strip()
    if name in MEDIA_MODALITIES:
        for path in _paths(name, argument):
            item = session.attach(name, path)
            write(f"[attached {name}: {item.describe()}]\n")
    elif name == "reset":
        session.reset()
        write("[conversation cleared]\n")
    elif name == "help":
        write(help_text())
    elif name in ("quit", "exit"):
        return True
    else:
        raise ValueError(f"unknown command /{name}; type /help for the list")
    return False


def _paths(command: str, argument: str) -> list[str]:
    """The paths after ``/image`` (etc.), split as a shell would (quotes, backslashes). An
    argument that names an existing file as it stands is taken whole, so unquoted paths with
    spaces or apostrophes keep working."""
    if not argument:
        raise ValueError(f'/{command} needs a file: /{command} PATH (quote spaces: "a b.png")')
    if Path(argument).expanduser().is_file():
        return [argument]
    try:
        paths = shlex.split(argument)
    except ValueError as exc:
        raise ValueError(
            f'/{command} {argument}: {exc}; quote a path as /{command} "a b.png"'
        ) from None
    if not paths:
        raise ValueError(f"/{command} needs a file: /{command} PATH")
    return paths
