"""Tool calls, structured output and refused parameters over real HTTP: ``pandagpt serve`` on
loopback driven by ``create_agent(ChatOpenAI(...))``, ``ChatOpenAI.with_structured_output``, the
``openai`` client and raw requests. The tiny model is random, so only what the grammar forces
is asserted: forced calls, their shape, and arguments that validate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import jsonschema
import openai
import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import _convert_message_to_dict
from pydantic import BaseModel, Field, SecretStr

from langchain_pandagpt.chat_messages import messages_to_conversation
from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.content_blocks import MediaPolicy
from langchain_pandagpt.serving.parts import request_messages
from langchain_pandagpt.serving.protocol import ChatCompletionRequest
from langchain_pandagpt.serving.server import serve_in_subprocess
from langchain_pandagpt.serving.tools import with_tool_history

API_KEY = "tools-key"
MODEL = "tiny"
CHAT = "/v1/chat/completions"


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a city."""
    return f"sunny and 21 degrees {unit} in {city}"


WEATHER = convert_to_openai_tool(get_weather)
WEATHER_PARAMETERS = WEATHER["function"]["parameters"]


class Joke(BaseModel):
    """A joke."""

    setup: str = Field(description="question to set up a joke")
    punchline: str
    rating: int = Field(ge=1, le=10)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[str]:
    options = ["--model-name", MODEL, "--api-key", API_KEY, "--device", "cpu", "--threads", "1"]
    with serve_in_subprocess(tiny_bundle, *options, "--log-level", "warning") as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)


def _chat_openai(server: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server}/v1", api_key=SecretStr(API_KEY), model=MODEL, max_retries=0, **kwargs
    )


def _post(server: str, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.post(f"{server}{CHAT}", json=body, headers=headers, timeout=60)


def _ask(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    return {"model": MODEL, "messages": messages, "max_tokens": 24, **extra}


def test_an_agent_calls_a_forced_tool_then_answers(server: str) -> None:
    """``create_agent`` over HTTP, made deterministic on a random model: a middleware forces
    ``get_weather`` on the first model call and sets ``tool_choice="none"`` once a tool result
    is in the history, so the second call answers in text and the agent stops. The second
    request carries the assistant's ``tool_calls`` and the ``tool`` message, which the server
    must accept and render."""
    seen: list[Any] = []

    @wrap_model_call
    def force_then_answer(request: ModelRequest, handler: Any) -> ModelResponse:
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        seen.append("none" if answered else "get_weather")
        return cast(ModelResponse, handler(request.override(tool_choice=seen[-1])))

    model = _chat_openai(server, max_completion_tokens=24, temperature=0)
    agent = create_agent(model, tools=[get_weather], middleware=[force_then_answer])
    result = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]})
    _human, call_message, tool_result, final = result["messages"]
    (call,) = call_message.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], WEATHER_PARAMETERS)
    assert call_message.response_metadata["finish_reason"] == "tool_calls"
    assert isinstance(tool_result, ToolMessage) and tool_result.tool_call_id == call["id"]
    assert tool_result.content == get_weather.invoke(call["args"])
    assert isinstance(final, AIMessage) and not final.tool_calls
    assert isinstance(final.content, str) and final.content
    assert seen == ["get_weather", "none"]


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_with_structured_output_returns_a_parsed_object(server: str, method: Any) -> None:
    model = _chat_openai(server, max_completion_tokens=40)
    if method == "json_schema":
        joke = model.with_structured_output(Joke, method=method).invoke("Tell me a joke.")
        assert isinstance(joke, Joke) and 1 <= joke.rating <= 10
    else:
        result = model.with_structured_output(None, method=method).invoke("Any JSON object.")
        assert isinstance(result, dict)


def test_a_forced_call_comes_back_as_tool_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        **_ask(
            tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
        )
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)


def test_streamed_tool_call_deltas_reassemble_to_valid_arguments(
    server: str, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        **_ask(tools=[WEATHER], tool_choice="required", stream=True, temperature=0)
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    opening, *fragments = calls
    assert opening.index == 0 and opening.id and opening.type == "function"
    assert opening.function.name == "get_weather" and opening.function.arguments == ""
    assert len(fragments) > 2 and all(f.id is None and f.function.name is None for f in fragments)
    arguments = json.loads("".join(f.function.arguments for f in fragments))
    jsonschema.validate(arguments, WEATHER_PARAMETERS)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks)
    # ChatOpenAI reassembles the same call from the stream (greedy: the same arguments).
    bound = _chat_openai(server, max_completion_tokens=24, temperature=0).bind_tools(
        [get_weather], tool_choice="get_weather"
    )
    pieces = [cast(AIMessageChunk, p) for p in bound.stream("What is the weather in Paris?")]
    (call,) = sum(pieces[1:], pieces[0]).tool_calls
    assert call["name"] == "get_weather" and call["args"] == arguments


def test_tool_choice_none_and_json_object_answers(client: openai.OpenAI) -> None:
    text = client.chat.completions.create(**_ask(tools=[WEATHER], tool_choice="none"))
    assert text.choices[0].message.tool_calls is None
    assert text.choices[0].finish_reason in ("stop", "length")
    data = client.chat.completions.create(
        **_ask(response_format={"type": "json_object"}, max_tokens=4)
    )
    assert isinstance(json.loads(data.choices[0].message.content or ""), dict)
    assert data.choices[0].finish_reason == "stop"


def _history() -> list[Any]:
    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}
    return [
        HumanMessage("Weather in Paris and Rome?"),
        AIMessage("Let me check.", tool_calls=[call]),
        ToolMessage("sunny", tool_call_id="call_1", name="get_weather"),
        AIMessage("", tool_calls=[{**call, "args": {"city": "Rome"}, "id": "call_2"}]),
        ToolMessage("rain", tool_call_id="call_2", status="error"),
        HumanMessage("Thanks. Summarise."),
    ]


def test_tool_history_is_written_as_chat_pandagpt_writes_it() -> None:
    """ChatOpenAI's wire form of a history (tool names dropped from tool messages) reads back
    into the same PandaGPT turns as ``ChatPandaGPT`` makes of the messages themselves (the one
    difference: OpenAI has no error status for tool messages)."""
    history = _history()
    wire = [_convert_message_to_dict(message) for message in history]
    body = ChatCompletionRequest.model_validate({"model": MODEL, "messages": wire})
    turns = with_tool_history(body.messages, request_messages(body.messages, MediaPolicy()))
    expected = messages_to_conversation(history)
    expected[4].text = expected[4].text.replace("Tool error", "Tool result")
    assert [(t.role, t.text) for t in turns] == [(m.role, m.text) for m in expected]
    assert turns[1].text == 'Let me check.\n{"name":"get_weather","arguments":{"city":"Paris"}}'
    assert turns[4].text == "Tool result from get_weather: rain"


def test_the_server_prompt_matches_chat_pandagpt(server: str, tiny_bundle: Path) -> None:
    """Same history, same tools: the server's prompt has as many tokens as ChatPandaGPT's."""
    history = [*_history()[:4], ToolMessage("rain", tool_call_id="call_2"), _history()[5]]
    body = {
        "model": MODEL,
        "messages": [_convert_message_to_dict(message) for message in history],
        "tools": [WEATHER],
        "max_tokens": 1,
    }
    response = _post(server, body)
    assert response.status_code == 200, response.text
    local = ChatPandaGPT(model=str(tiny_bundle), device="cpu")
    expected = local.get_num_tokens_from_messages(history, tools=[get_weather])
    assert response.json()["usage"]["prompt_tokens"] == expected


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"response_format": {"type": "grammar", "grammar": "x"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"$ref": "http://x"}},
                    }
                ]
            },
            "tools",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
    ],
)
def test_unsupported_parameters_get_a_400_naming_them(
    server: str, extra: dict[str, Any], param: str
) -> None:
    response = _post(server, _ask(**extra))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_bad_tool_history_gets_a_400(server: str) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    error = _post(server, {"model": MODEL, "messages": messages}).json()["error"]
    assert error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert error["param"] in error["message"]


def test_harmless_unknown_fields_are_ignored(server: str) -> None:
    body = _ask(user="u1", metadata={"k": "v"}, store=False, parallel_tool_calls=True)
    response = _post(server, {**body, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 2})
    assert response.status_code == 200, response.text
