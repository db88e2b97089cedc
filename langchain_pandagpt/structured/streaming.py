"""An incremental parser for streamed answers: engine text deltas -> text and tool-call deltas.

Text (and plain JSON) answers pass through as :class:`TextDelta`. With tools, the answer is
held back until its first characters decide: ``{"name":"<tool>","arguments":`` makes it a call,
whose opening :class:`ToolCallDelta` carries the name and a fresh id and whose ``arguments``
object then streams in fragments (the call's closing brace is held back and never sent);
anything else is text. With ``tool_choice="auto"`` the decision waits for the first non-space
character.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, TypeAlias

from langchain_pandagpt.structured.formats import AnswerFormat, new_call_id


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call: its first piece has ``name`` and ``id``."""

    arguments: str
    name: str | None = None
    id: str | None = None
    index: int = 0


AnswerDelta: TypeAlias = TextDelta | ToolCallDelta


class AnswerStream:
    """Feeds on the text deltas of one answer of ``answer``'s format (not thread-safe)."""

    def __init__(self, answer: AnswerFormat) -> None:
        self._tools = answer.tools
        self._text = ""
        self._emitted = 0  # characters of text already sent as content or arguments
        self._mode: Literal["undecided", "text", "call"] = "undecided" if answer.tools else "text"
        self._name = ""  # the called tool, once known
        self._opened = False  # whether the call's first delta (name and id) went out

    @property
    def is_call(self) -> bool:
        """Whether the answer turned out to be a tool call."""
        return self._mode == "call"

    def feed(self, delta: str) -> list[AnswerDelta]:
        self._text += delta
        if self._mode == "undecided":
            self._decide()
        if self._mode == "text":
            return self._content()
        if self._mode == "call":
            return self._arguments()
        return []

    def finish(self) -> list[AnswerDelta]:
        """Whatever was held back, at the end of the answer."""
        if self._mode == "call":
            return self._arguments()
        self._mode = "text"
        return self._content()

    def _decide(self) -> None:
        head = self._text.lstrip()
        if not head:
            return
        if not head.startswith("{"):
            self._mode = "text"
            return
        for name in self._tools:
            prefix = '{"name":' + json.dumps(name, ensure_ascii=False) + ',"arguments":'
            if head.startswith(prefix):
                self._mode = "call"
                self._name = name
                self._emitted = len(self._text) - len(head) + len(prefix)
                return
            if prefix.startswith(head):
                return  # may still become this call
        self._mode = "text"

    def _content(self) -> list[AnswerDelta]:
        delta = self._text[self._emitted :]
        self._emitted = len(self._text)
        return [TextDelta(delta)] if delta else []

    def _arguments(self) -> list[AnswerDelta]:
        """The arguments written since the last call, holding back the last character: it may
        be the call's closing brace, which is not part of the arguments."""
        end = len(self._text) - 1
        fragment = self._text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        if self._opened and not fragment:
            return []
        if self._opened:
            return [ToolCallDelta(fragment)]
        self._opened = True
        return [ToolCallDelta(fragment, name=self._name, id=new_call_id())]
