"""The OpenAI wire format the server speaks: requests, responses and errors.

Kept apart from the HTTP code so the request checks and the response shapes can be read (and
tested) on their own. The fields PandaGPT honours are modelled, and so are those it must refuse
rather than ignore; other unknown request fields are ignored, as OpenAI-compatible servers
commonly do, so stock clients keep working.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from langchain_pandagpt.generation.engine import Usage


class APIError(Exception):
    """An error answered as OpenAI error JSON: ``{"error": {"message", "type", "param",
    "code"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionCall(_Request):
    name: str
    arguments: str
    """The arguments object as a JSON string."""


class MessageToolCall(_Request):
    """A tool call of an earlier assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    """One message; ``content`` is a string or a list of content parts (see server.py).
    Assistant messages may carry ``tool_calls``; ``tool`` messages answer one by
    ``tool_call_id``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``. ``max_completion_tokens`` wins over ``max_tokens``;
    ``top_k`` is an extension (vLLM spells it the same).

    Fields PandaGPT cannot honour are modelled too, so that asking for them gets a 400 naming
    them (:func:`~langchain_pandagpt.serving.tools.check_supported`) instead of silence; other
    unknown fields (``user``, ``metadata``, ``store``, ...) change nothing here and are ignored.
    """

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    # Asked for, never granted (400): see serving/tools.py.
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    web_search_options: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if not all(stops):
            raise ValueError("stop strings must not be empty")
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings are allowed")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: texts, or (extension) media content parts, or a mix."""

    model: str
    input: str | list[str | dict[str, Any]] = Field(min_length=1)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI usage; tokens served from the prefix cache are reported as cached."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_response(
    completion_id: str, model: str, message: dict[str, Any], finish_reason: str, usage: Usage
) -> dict[str, Any]:
    """A ``chat.completion`` of one choice; ``message`` is the assistant message (``role``,
    ``content`` and maybe ``tool_calls``)."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_dict(usage),
    }


def completion_chunk(
    completion_id: str,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``. A usage-only chunk (``delta=None``) has no choices, as
    OpenAI sends it last when ``stream_options.include_usage`` is set."""
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": None if usage is None else usage_dict(usage),
    }


def embedding_response(
    vectors: Sequence[Sequence[float]], model: str, encoding: str, prompt_tokens: int
) -> dict[str, Any]:
    """``base64`` is little-endian float32, what the ``openai`` client decodes by default."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str = list(vector)
        if encoding == "base64":
            raw = np.asarray(vector, dtype="<f4").tobytes()
            embedding = base64.b64encode(raw).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "langchain-pandagpt"}
