"""Tool calls and JSON answers on the chat path: what a request may ask for, the answer format
it gets, its tool history, and tool calls in responses (whole or streamed).

Everything goes through :mod:`langchain_pandagpt.structured`, as ``ChatPandaGPT`` does, so an
HTTP request decodes under the same always-valid grammar and sees the same prompt as the
equivalent in-process call:

* ``tools`` (function tools), ``tool_choice`` (``auto``, ``none``, ``required``, or a named
  function) and ``response_format`` (``text``, ``json_object``, ``json_schema``) become an
  :class:`~langchain_pandagpt.structured.formats.AnswerFormat`;
* assistant ``tool_calls`` and ``tool`` messages in the history are written as
  ``ChatPandaGPT`` writes AI-message tool calls and ``ToolMessage``s. OpenAI ``tool`` messages
  carry no tool name, so it is looked up from the call they answer;
* an answer holds at most one call (``parallel_tool_calls`` is accepted either way: one call
  satisfies both). A call answers with ``message.tool_calls``, ``content: null`` and
  ``finish_reason: "tool_calls"``; streamed, it opens with the call's id and name and an empty
  ``arguments``, then sends argument fragments.

Parameters the server cannot honour get a 400 naming them (:func:`check_supported`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.generation.registry import shared_grammar
from langchain_pandagpt.serving.protocol import APIError, ChatCompletionRequest, ChatMessage
from langchain_pandagpt.structured.formats import (
    AnswerFormat,
    ToolTranscript,
    answer_format,
    parse_answer,
)
from langchain_pandagpt.structured.streaming import AnswerDelta, AnswerStream, TextDelta

_RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def _unsupported(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_parameter")


def check_supported(body: ChatCompletionRequest) -> None:
    """Refuses (400, naming the parameter) what this server cannot do, rather than ignore it."""
    if body.n > 1:
        raise _unsupported("n", f"n={body.n} is not supported: send n=1 (one choice a request)")
    if body.logprobs or body.top_logprobs:
        param = "logprobs" if body.logprobs else "top_logprobs"
        raise _unsupported(param, f"{param} is not supported by this server; leave it unset")
    for param in ("presence_penalty", "frequency_penalty"):
        if getattr(body, param):
            raise _unsupported(param, f"{param} is not supported by this server; leave it at 0")
    if body.logit_bias:
        raise _unsupported("logit_bias", "logit_bias is not supported by this server")
    if body.functions is not None or body.function_call is not None:
        param = "functions" if body.functions is not None else "function_call"
        raise _unsupported(param, f"{param} is deprecated; use tools and tool_choice")
    if body.modalities and set(body.modalities) != {"text"}:
        raise _unsupported("modalities", "modalities: this server answers in text only")
    if body.audio is not None:
        raise _unsupported("audio", "audio output is not supported: this server answers in text")
    if body.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "reasoning_effort: this model does not reason")
    if body.web_search_options is not None:
        raise _unsupported("web_search_options", "web_search_options: no web search here")


def request_answer_format(body: ChatCompletionRequest) -> AnswerFormat:
    """The answer format of a request (its grammar compiled now, so that a schema this decoder
    cannot handle fails as a 400 naming ``tools`` or ``response_format``)."""
    tools = _function_tools(body.tools)
    choice = _tool_choice(body.tool_choice, tools)
    response_format = _response_format(body.response_format)
    try:
        answer = answer_format(tools or None, choice, response_format)
    except ValueError as error:
        raise APIError(400, str(error), param="tool_choice") from error
    if answer.schema is not None:
        try:
            shared_grammar(answer.schema)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
            param = "tools" if answer.tools else "response_format"
            raise APIError(
                400, f"{param}: unsupported JSON schema ({error})", param=param
            ) from error
    return answer


def _function_tools(tools: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    checked: list[dict[str, Any]] = []
    for index, tool in enumerate(tools or ()):
        where = f"tools[{index}]"
        if tool.get("type") != "function":
            raise _unsupported(
                "tools",
                f"{where}: {tool.get('type')!r} tools are not supported; use function tools",
            )
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(
                400,
                f"{where}.function: a function tool needs a string name",
                param=f"{where}.function",
            )
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise APIError(
                400,
                f"{where}.function.parameters must be a JSON schema object",
                param=f"{where}.function.parameters",
            )
        if any(other["function"]["name"] == function["name"] for other in checked):
            raise APIError(
                400,
                f"{where}.function.name: tool name {function['name']!r} is given twice",
                param=f"{where}.function.name",
            )
        checked.append({"type": "function", "function": function})
    return checked


def _tool_choice(choice: str | dict[str, Any] | None, tools: Sequence[dict[str, Any]]) -> str:
    """``auto``, ``any``, ``none`` or a tool name (as :func:`answer_format` takes it) from
    OpenAI's ``tool_choice``; a plain tool name is accepted too."""
    names = [tool["function"]["name"] for tool in tools]
    if isinstance(choice, dict):
        if choice.get("type") != "function":
            raise _unsupported(
                "tool_choice",
                f"tool_choice type {choice.get('type')!r} is not supported; use 'auto', "
                "'none', 'required' or {'type': 'function', 'function': {'name': ...}}",
            )
        function = choice.get("function")
        choice = function.get("name") if isinstance(function, dict) else None
        if not isinstance(choice, str):
            raise APIError(
                400, "tool_choice: a function choice needs function.name", param="tool_choice"
            )
    if choice in (None, "auto", "none"):
        return choice or "auto"
    if choice in ("required", "any") and tools:
        return "any"
    if choice in names:
        return choice
    offered = f"the tools are {', '.join(map(repr, names))}" if names else "no tools are given"
    raise APIError(400, f"tool_choice {choice!r} names no tool: {offered}", param="tool_choice")


def _response_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``response_format`` as ``answer_format`` reads it (``None`` for text)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind not in _RESPONSE_FORMATS:
        raise _unsupported(
            "response_format",
            f"response_format type {kind!r} is not supported; use {', '.join(_RESPONSE_FORMATS)}",
        )
    if kind == "text":
        return None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise APIError(
                400,
                "response_format.json_schema.schema must be a JSON schema object",
                param="response_format",
            )
        return {"type": "json_schema", "json_schema": {"schema": spec["schema"]}}
    return {"type": "json_object"}


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


def with_tool_history(messages: Sequence[ChatMessage], turns: list[Message]) -> list[Message]:
    """``turns`` (one per request message) with assistant tool calls and tool results written
    in as ``ChatPandaGPT`` writes them."""
    transcript = ToolTranscript()
    for index, (message, turn) in enumerate(zip(messages, turns, strict=True)):
        if message.tool_calls:
            if message.role != "assistant":
                raise APIError(
                    400,
                    f"messages[{index}]: only assistant messages have tool_calls",
                    param=f"messages[{index}].tool_calls",
                )
            calls = [
                (
                    call.function.name,
                    _arguments(call.function.arguments, index, position),
                    call.id,
                )
                for position, call in enumerate(message.tool_calls)
            ]
            turn.text = transcript.assistant_turn(turn.text, calls)
        elif message.role == "tool":
            turn.text = transcript.tool_result(turn.text, message.name, message.tool_call_id)
    return turns


def _arguments(text: str, index: int, position: int) -> dict[str, Any]:
    where = f"messages[{index}].tool_calls[{position}].function.arguments"
    try:
        arguments = json.loads(text)
    except json.JSONDecodeError as error:
        raise APIError(400, f"{where} is not valid JSON ({error})", param=where) from error
    if not isinstance(arguments, dict):
        raise APIError(400, f"{where} must be a JSON object", param=where)
    return arguments


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def completion_message(
    text: str, answer: AnswerFormat, finish_reason: str
) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason of a finished answer (call arguments as compact
    JSON, the form the model writes and streaming sends)."""
    parsed = parse_answer(text, answer)
    if not parsed.tool_calls:
        return {"role": "assistant", "content": text}, finish_reason
    calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {
                "name": call.name,
                "arguments": json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":")),
            },
        }
        for call in parsed.tool_calls
    ]
    return {"role": "assistant", "content": None, "tool_calls": calls}, _call_finish(finish_reason)


def _call_finish(finish_reason: str) -> str:
    return "tool_calls" if finish_reason == "stop" else finish_reason


class DeltaStream:
    """The OpenAI ``delta`` objects of one streamed answer, from the engine's text deltas."""

    def __init__(self, answer: AnswerFormat) -> None:
        self._parser = AnswerStream(answer)

    def feed(self, text: str, *, final: bool = False) -> list[dict[str, Any]]:
        """Deltas for ``text``; ``final`` flushes what the parser held back."""
        pieces = self._parser.feed(text)
        if final:
            pieces += self._parser.finish()
        return [delta for piece in pieces for delta in _deltas(piece)]

    def finish_reason(self, finish_reason: str) -> str:
        return _call_finish(finish_reason) if self._parser.is_call else finish_reason


def _deltas(piece: AnswerDelta) -> list[dict[str, Any]]:
    if isinstance(piece, TextDelta):
        return [{"content": piece.text}]
    fragment = {"tool_calls": [{"index": piece.index, "function": {"arguments": piece.arguments}}]}
    if piece.name is None:
        return [fragment]
    function = {"name": piece.name, "arguments": ""}
    opening = {"index": piece.index, "id": piece.id, "type": "function", "function": function}
    return [{"tool_calls": [opening]}, *([fragment] if piece.arguments else [])]
