"""The framework-free answer formats shared by ChatPandaGPT and the server: formats from tools,
tool_choice and response_format, the tool transcript, answer parsing and the streaming parser."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_pandagpt.conversation import Message
from langchain_pandagpt.structured import JsonGrammar
from langchain_pandagpt.structured.formats import (
    AnswerFormat,
    ToolTranscript,
    answer_format,
    normalize_tool_choice,
    parse_answer,
    with_instructions,
)
from langchain_pandagpt.structured.streaming import AnswerStream, TextDelta, ToolCallDelta

POINT = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
PLOT = {
    "type": "function",
    "function": {
        "name": "plot",
        "description": "Plot points.",
        "parameters": {
            "type": "object",
            "$defs": {"P": POINT},
            "properties": {"points": {"type": "array", "items": {"$ref": "#/$defs/P"}}},
        },
    },
}
ECHO = {"type": "function", "function": {"name": "echo", "parameters": POINT}}
JOKE = {"type": "json_schema", "json_schema": {"name": "Joke", "schema": POINT}}


def test_formats_from_tools_tool_choice_and_response_format() -> None:
    assert answer_format(None, None, None) == AnswerFormat()
    assert answer_format([PLOT], "none", None) == AnswerFormat()
    auto = answer_format([PLOT], "auto", None)
    assert auto.optional and auto.tools == {"plot"} and "Otherwise" in str(auto.instructions)
    forced = answer_format([PLOT, ECHO], "echo", None)
    assert not forced.optional and forced.tools == {"echo"} and forced.schema is not None
    assert forced.schema["properties"]["name"] == {"const": "echo"}
    both = answer_format([PLOT, ECHO], "any", JOKE)
    assert both.schema is not None and len(both.schema["anyOf"]) == 3 and not both.optional
    grammar = JsonGrammar(both.schema)  # the rebased $ref resolves inside the anyOf
    call = b'{"name":"plot","arguments":{"points":[{"x":1}]}}'
    assert grammar.state_cost(grammar.advance(grammar.start(), call)) == 0
    structured = answer_format(None, None, JOKE)
    assert structured.schema == POINT and "JSON schema" in str(structured.instructions)
    assert answer_format(None, None, {"type": "json_object"}).instructions is None
    with pytest.raises(ValueError, match="names no bound tool"):
        answer_format([PLOT], "echo", None)
    with pytest.raises(ValueError, match="response_format type 'grammar'"):
        answer_format(None, None, {"type": "grammar"})


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("required", "any"),
        (True, "any"),
        (False, "none"),
        ("plot", "plot"),
        ({"type": "function", "function": {"name": "plot"}}, "plot"),
    ],
)
def test_tool_choice_forms(choice: Any, expected: str) -> None:
    assert normalize_tool_choice(choice, ["plot"]) == expected


def test_bad_tool_choices_name_the_tools() -> None:
    for choice in ("magic", {"type": "function", "function": "plot"}):
        with pytest.raises(ValueError, match=r"is not 'auto', 'any', 'none' or one of the tools"):
            normalize_tool_choice(choice, ["plot"])


def test_the_transcript_names_tool_results_by_their_call() -> None:
    transcript = ToolTranscript()
    turn = transcript.assistant_turn("Let me see.", [("plot", {"points": []}, "c1")])
    assert turn == 'Let me see.\n{"name":"plot","arguments":{"points":[]}}'
    assert transcript.assistant_turn("", [("echo", {"x": 1}, None)]) == (
        '{"name":"echo","arguments":{"x":1}}'
    )
    assert transcript.tool_result("ok", None, "c1") == "Tool result from plot: ok"
    assert transcript.tool_result("no", "echo", "c9", failed=True) == "Tool error from echo: no"
    assert transcript.tool_result("?", None, "c9") == "Tool result from c9: ?"
    assert transcript.tool_result("?", None, None) == "Tool result from the tool: ?"


def test_instructions_go_to_the_system_or_the_last_human_turn() -> None:
    conversation = [Message("human", "a"), Message("assistant", "b"), Message("human", "c")]
    default = with_instructions(conversation, "Use JSON.", "default")
    assert default[-1] == Message("system", "Use JSON.") and default[:3] == conversation
    reference = with_instructions(conversation, "Use JSON.", "reference")
    assert [m.text for m in reference] == ["a", "b", "Use JSON.\nc"]


def test_parsing_finished_answers() -> None:
    tools = answer_format([PLOT, ECHO], "auto", None)
    assert parse_answer("Hello", tools).content == "Hello"
    parsed = parse_answer(' {"name":"echo","arguments":{"x":2}}', tools)
    (call,) = parsed.tool_calls
    assert (parsed.content, call.name, call.arguments) == ("", "echo", {"x": 2})
    assert call.id.startswith("call_") and not parsed.invalid_tool_calls
    broken = parse_answer('{"name":"echo","arg', tools)
    assert broken.content == "" and broken.invalid_tool_calls[0].text == '{"name":"echo","arg'
    other = parse_answer('{"x":1}', tools)
    assert other.content == '{"x":1}' and not other.tool_calls
    assert parse_answer('{"name":"echo","arguments":{}}', AnswerFormat()).tool_calls == []


def _stream(answer: AnswerFormat, text: str) -> list[TextDelta | ToolCallDelta]:
    parser = AnswerStream(answer)
    pieces = [piece for char in text for piece in parser.feed(char)]
    return pieces + parser.finish()


def test_streamed_calls_open_with_name_and_id_then_stream_arguments() -> None:
    answer = answer_format([PLOT, ECHO], "auto", None)
    arguments = '{"points":[{"x":12},{"x":-3}]}'
    pieces = _stream(answer, ' {"name":"plot","arguments":' + arguments + "}")
    assert all(isinstance(piece, ToolCallDelta) for piece in pieces)
    opening, *rest = pieces
    assert isinstance(opening, ToolCallDelta) and opening.name == "plot" and opening.id
    assert all(isinstance(p, ToolCallDelta) and p.name is None and p.id is None for p in rest)
    assert "".join(p.arguments for p in pieces if isinstance(p, ToolCallDelta)) == arguments
    assert len(pieces) > 5


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        (answer_format([PLOT], "auto", None), "  Plain words."),
        (answer_format([PLOT], "auto", None), '{"name":"plo'),  # cut short: text, not a call
        (answer_format([PLOT], "auto", None), '{"x":1}'),
        (answer_format(None, None, JOKE), '{"x":1}'),
    ],
)
def test_everything_else_streams_as_text(answer: AnswerFormat, text: str) -> None:
    pieces = _stream(answer, text)
    assert all(isinstance(piece, TextDelta) for piece in pieces)
    assert "".join(p.text for p in pieces if isinstance(p, TextDelta)) == text
    parser = AnswerStream(answer)
    parser.feed(text)
    assert not parser.is_call
