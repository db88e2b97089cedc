"""An interactive PandaGPT conversation: history, attached media and slash commands.

This is the logic of ``pandagpt chat`` without any terminal code: :func:`run_repl` reads
lines and writes text through two callables, so the same loop serves a terminal, a pipe
(``pandagpt chat < script.txt``) and tests. Media attached with ``/image PATH`` (etc.) go into
the next question, as in the reference demo, and the conversation is re-sent every turn, so the
engine's prefix cache only computes the new turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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

    def ask(self, question: str) -> Iterator[StreamChunk]:
        """Streams the answer to ``question`` (with the pending media).

        The turn joins the history only once the answer is complete, so a failed or abandoned
        question leaves the conversation as it was. Media that cannot be read are dropped
        (they would fail every later question too); other media stay attached for a retry.
        """
        turn = Message("human", question, media=list(self.pending))
        messages = [*self._system(), *self.history, turn]
        answer: list[str] = []
        try:
            for chunk in self.engine.stream(messages, self.params):
                answer.append(chunk.text)
                yield chunk
        except MediaError:
            self.pending.clear()
            raise
        self.history += [turn, Message("assistant", "".join(answer))]
        self.pending.clear()

    def _system(self) -> list[Message]:
        return [Message("system", self.system)] if self.system else []


def help_text() -> str:
    width = max(len(command) for command in COMMANDS)
    lines = [f"  {command.ljust(width)}  {text}" for command, text in COMMANDS.items()]
    return "Commands:\n" + "\n".join(lines) + "\nAnything else is a question.\n"


def run_repl(
    session: ChatSession,
    read_line: Callable[[], str | None],
    write: Callable[[str], None],
    write_error: Callable[[str], None],
    *,
    answer_prefix: str = "",
) -> None:
    """Reads lines until ``/quit`` or end of input (``read_line`` returns ``None``).

    Answers stream through ``write`` as they are decoded, after ``answer_prefix``; problems
    with one line (a missing file, bad media, an overlong conversation) go to ``write_error``
    and the loop goes on.
    """
    while (line := read_line()) is not None:
        line = line.strip()
        if not line:
            continue
        try:
            if not line.startswith("/"):
                for index, chunk in enumerate(session.ask(line)):
                    write((answer_prefix if index == 0 else "") + chunk.text)
                write("\n")
            elif _command(session, line, write):
                return
        except ValueError as exc:  # MediaError, PandaGPTError subclasses, prompt too long
            write_error(str(exc))


def _command(session: ChatSession, line: str, write: Callable[[str], None]) -> bool:
    """Runs one slash command; returns True for ``/quit``."""
    name, _, argument = line[1:].partition(" ")
    argument = argument.strip()
    if name in MEDIA_MODALITIES:
        if not argument:
            raise ValueError(f"/{name} needs a file: /{name} PATH")
        item = session.attach(name, argument)
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
