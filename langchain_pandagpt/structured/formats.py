"""Answer formats: free text, JSON of a schema, or a tool call, and how they meet the prompt.

Shared by ``ChatPandaGPT`` and the OpenAI-compatible server, so that a request means the same
prompt and the same grammar whichever way it arrives:

* :func:`answer_format` reads OpenAI-form ``tools``, a normalised ``tool_choice`` and a
  ``response_format`` (``json_object``/``json_schema``) into an :class:`AnswerFormat`: the JSON
  schema the answer is decoded under (``None``: free text), whether free text is allowed too,
  and the instructions the prompt gets (:func:`with_instructions` places them).
* The model writes one call as ``{"name": <tool>, "arguments": {...}}``; with several tools the
  schema is an ``anyOf`` of one such object per tool (``$ref``s rebased into it).
* :class:`ToolTranscript` writes past calls and their results back into the conversation the
  way the model emits them.
* :func:`parse_answer` turns a finished answer into plain :class:`ParsedAnswer` data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_pandagpt.conversation import Message

#: ``tool_choice`` values besides a tool name (after :func:`normalize_tool_choice`).
TOOL_CHOICES = ("auto", "any", "none")


@dataclass(frozen=True)
class AnswerFormat:
    """What an answer may be, and what the prompt says about it."""

    schema: dict[str, Any] | None = None  # JSON schema of the answer; None: free text
    optional: bool = False  # free text is allowed too (tool_choice="auto")
    tools: frozenset[str] = frozenset()  # JSON answers with these names are tool calls
    instructions: str | None = None

    @property
    def key(self) -> Hashable:
        """Equal for formats that decode the same way (batch prefetch matching)."""
        schema = None if self.schema is None else json.dumps(self.schema, sort_keys=True)
        return schema, self.optional


def answer_format(
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: str | None,
    response_format: Mapping[str, Any] | None,
) -> AnswerFormat:
    """The answer format for ``tools`` (OpenAI form), ``tool_choice`` (``None``, ``"auto"``,
    ``"any"``, ``"none"`` or a tool name) and ``response_format`` (OpenAI
    ``json_object``/``json_schema`` form, ``None`` for text)."""
    response = response_schema(response_format)
    functions = [tool["function"] for tool in tools or ()] if tool_choice != "none" else []
    if tool_choice not in (None, *TOOL_CHOICES):
        functions = [f for f in functions if f["name"] == tool_choice]
        if not functions:
            raise ValueError(f"tool_choice {tool_choice!r} names no bound tool")
    if not functions:
        if response is None:
            return AnswerFormat()
        schema, instructions = response
        return AnswerFormat(schema, instructions=instructions)
    names = frozenset(function["name"] for function in functions)
    forced = tool_choice not in (None, "auto")
    instructions = tool_instructions(functions, forced, response is not None)
    if len(functions) == 1 and response is None:
        schema = call_schema(functions[0], "#")
        return AnswerFormat(schema, optional=not forced, tools=names, instructions=instructions)
    options = [call_schema(f, f"#/anyOf/{i}") for i, f in enumerate(functions)]
    if response is None:
        return AnswerFormat(
            {"anyOf": options}, optional=not forced, tools=names, instructions=instructions
        )
    schema, extra = response
    options.append(rebase_refs(schema, f"#/anyOf/{len(options)}"))
    instructions = "\n".join(filter(None, (instructions, extra)))
    return AnswerFormat({"anyOf": options}, tools=names, instructions=instructions)


def response_schema(
    response_format: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], str | None] | None:
    """JSON schema and prompt instructions of a ``response_format`` (``None``: free text).

    ``json_object`` may carry a ``schema`` (``ChatPandaGPT``'s ``json_mode`` with a schema); it
    adds no instructions, as OpenAI leaves those to the prompt in JSON mode.
    """
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return dict(response_format.get("schema") or {"type": "object"}), None
    if kind == "json_schema":
        schema = dict(response_format["json_schema"]["schema"])
        text = json.dumps(schema, ensure_ascii=False)
        return schema, f"Answer with only a JSON object that matches this JSON schema: {text}"
    raise ValueError(
        f"response_format type {kind!r} is not supported; use json_schema or json_object"
    )


def call_schema(function: Mapping[str, Any], base: str) -> dict[str, Any]:
    """Schema of ``{"name": <this tool>, "arguments": {...}}``, placed at ``base``."""
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": rebase_refs(parameters, f"{base}/properties/arguments"),
        },
        "required": ["name", "arguments"],
    }


def rebase_refs(schema: Any, base: str) -> Any:
    """``schema`` with its local ``$ref``s rewritten for being placed at ``base`` inside a
    larger schema (``#/$defs/X`` becomes ``<base>/$defs/X``)."""
    if isinstance(schema, Mapping):
        rebased = {key: rebase_refs(value, base) for key, value in schema.items()}
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and base != "#":
            rebased["$ref"] = base + ref[1:]
        return rebased
    if isinstance(schema, list):
        return [rebase_refs(item, base) for item in schema]
    return schema


def tool_instructions(
    functions: Sequence[Mapping[str, Any]], forced: bool, structured: bool
) -> str:
    """The prompt's description of the tools and of how to call one."""
    lines = ["You can call these tools:"]
    for function in functions:
        parameters = json.dumps(function.get("parameters") or {}, ensure_ascii=False)
        description = function.get("description") or ""
        lines.append(f"- {function['name']}: {description} Arguments (JSON schema): {parameters}")
    lines.append(
        'To call a tool, answer with only a JSON object {"name": <tool name>, '
        '"arguments": <arguments object>}.'
    )
    if not forced and not structured:
        lines.append("Otherwise, answer in plain text.")
    return "\n".join(lines)


def normalize_tool_choice(tool_choice: Any, names: Sequence[str]) -> str:
    """``"auto"``, ``"any"``, ``"none"`` or a tool name, from LangChain's and OpenAI's forms:
    ``None``/``"auto"``, ``"any"``/``"required"``/``True``, ``"none"``/``False``, a tool name,
    or ``{"type": "function", "function": {"name": ...}}``."""
    if tool_choice is None or tool_choice == "auto":
        return "auto"
    if tool_choice is True or tool_choice in ("any", "required"):
        return "any"
    if tool_choice is False or tool_choice == "none":
        return "none"
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        named = function.get("name") if isinstance(function, dict) else None
        tool_choice = named or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    raise ValueError(
        f"tool_choice {tool_choice!r} is not 'auto', 'any', 'none' or one of the tools "
        f"({', '.join(names)})"
    )


def with_instructions(
    conversation: list[Message], instructions: str, fidelity: str
) -> list[Message]:
    """Adds prompt ``instructions``: a system message, or (reference fidelity, which has no
    system segment) a paragraph in front of the last human message."""
    if fidelity != "reference":
        return [*conversation, Message("system", instructions)]
    last = max(i for i, message in enumerate(conversation) if message.role == "human")
    target = conversation[last]
    updated = Message("human", f"{instructions}\n{target.text}", list(target.media))
    return [*conversation[:last], updated, *conversation[last + 1 :]]


# --------------------------------------------------------------------------------------------
# Past calls and results in the prompt
# --------------------------------------------------------------------------------------------


def render_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """A tool call as the model writes it (compact JSON)."""
    call = {"name": name, "arguments": dict(arguments)}
    return json.dumps(call, ensure_ascii=False, separators=(",", ":"))


class ToolTranscript:
    """Writes one conversation's past tool calls and results as the model sees them.

    An assistant turn is its text, then each call on its own line as the model writes it. A
    result is a human turn ``Tool result from <tool>: <text>`` (``Tool error`` when it failed);
    a result without a tool name (OpenAI ``tool`` messages never carry one) takes the name of
    the earlier call it answers, else the call id.
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}  # call id -> tool name

    def assistant_turn(
        self, text: str, calls: Iterable[tuple[str, Mapping[str, Any], str | None]]
    ) -> str:
        """``text`` and the ``(name, arguments, call id)`` calls of one assistant message."""
        rendered = []
        for name, arguments, call_id in calls:
            if call_id:
                self._names[call_id] = name
            rendered.append(render_tool_call(name, arguments))
        return "\n".join(part for part in (text, *rendered) if part)

    def tool_result(
        self, text: str, name: str | None, call_id: str | None, *, failed: bool = False
    ) -> str:
        """The text of the human turn that carries a tool's result (or error)."""
        source = name or self._names.get(call_id or "") or call_id or "the tool"
        return f"Tool {'error' if failed else 'result'} from {source}: {text}"


# --------------------------------------------------------------------------------------------
# Finished answers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True)
class InvalidToolCall:
    """A JSON answer of a tool format that does not parse (the raw text and the error)."""

    text: str
    error: str
    id: str


@dataclass(frozen=True)
class ParsedAnswer:
    """A finished answer: text content, or a tool call (content then empty)."""

    content: str
    tool_calls: list[ParsedToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)


def parse_answer(text: str, answer: AnswerFormat) -> ParsedAnswer:
    """Content, tool calls and invalid tool calls of a finished answer of ``answer``'s format:
    with tools, a JSON object ``{"name": <tool>, "arguments": {...}}`` is a call."""
    if not answer.tools or not text.lstrip().startswith("{"):
        return ParsedAnswer(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return ParsedAnswer("", invalid_tool_calls=[InvalidToolCall(text, str(exc), new_call_id())])
    if is_tool_call(data, answer.tools):
        call = ParsedToolCall(data["name"], data["arguments"], new_call_id())
        return ParsedAnswer("", tool_calls=[call])
    return ParsedAnswer(text)


def is_tool_call(data: Any, names: frozenset[str]) -> bool:
    return (
        isinstance(data, dict)
        and set(data) == {"name", "arguments"}
        and data["name"] in names
        and isinstance(data["arguments"], dict)
    )


def new_call_id() -> str:
    """A fresh tool-call id, in OpenAI's ``call_...`` form."""
    return f"call_{uuid.uuid4().hex[:24]}"
