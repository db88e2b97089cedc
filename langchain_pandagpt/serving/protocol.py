"""The OpenAI wire format the server speaks: requests, responses and errors.

Kept apart from the HTTP code so the request checks and the response shapes can be read (and
tested) on their own. The fields PandaGPT honours are modelled, and so are those it must refuse
rather than ignore; other unknown request fields are ignored, as OpenAI-compatible servers
commonly do, so stock clients keep working.
"""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch seeds take
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
    input: str | list[str | dict[str, Any]] = Field(min_length=1, max_length=2048)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


# --------------------------------------------------------------------------------------------
# Request bodies -> requests (every refusal a 400 naming the JSON path of the bad part)
# --------------------------------------------------------------------------------------------

#: How deep a request body may nest. Tool and response schemas nest, but nothing legitimate
#: nests this deep; the bound keeps every later walk (schemas, grammars) off the recursion limit.
MAX_JSON_DEPTH = 64

RequestT = TypeVar("RequestT", bound=BaseModel)


def json_path(*parts: str | int) -> str:
    """``messages[2].content[0].file`` from ``("messages", 2, "content", 0, "file")``."""
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.isidentifier():
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def decode_request(raw: bytes, model: type[RequestT]) -> RequestT:
    """The request ``model`` of a JSON body.

    The body must be strict JSON (no ``NaN``/``Infinity``) in UTF-8, an object, nested at most
    :data:`MAX_JSON_DEPTH` levels, with finite numbers and valid Unicode strings: a lone
    surrogate (``"\\ud800"``) parses as JSON but no tokenizer or encoder takes it.
    """
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise APIError(
            400, f"the request body is not valid UTF-8 (byte {error.start})", code="invalid_json"
        ) from None
    except RecursionError:
        raise APIError(
            400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json"
        ) from None
    except ValueError as error:
        message = f"the request body is not valid JSON ({error})"
        raise APIError(400, message, code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {json_kind(data)}")
    _check_values(data)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error, data) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_kind(value: object) -> str:
    """A JSON value's type, in JSON words."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")


def _check_values(data: dict[str, Any]) -> None:
    """Refuses (400 with the path) too deep nesting, non-finite numbers and lone surrogates."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, where = stack.pop()
        if len(where) >= MAX_JSON_DEPTH:
            path = json_path(*where)
            raise APIError(400, f"{path} nests deeper than {MAX_JSON_DEPTH} levels", param=path)
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, float) and not math.isfinite(value):
            path = json_path(*where)
            raise APIError(400, f"{path}: {value} is not a finite number", param=path)
        elif isinstance(value, dict):
            for key in value:
                _check_text(key, where)
            stack.extend((item, (*where, key)) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((item, (*where, i)) for i, item in reversed(list(enumerate(value))))


def _check_text(text: str, where: tuple[str | int, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        path = json_path(*where) or "the request body"
        code = f"\\u{ord(text[error.start]):04x}"
        raise APIError(
            400,
            f"{path}: a lone surrogate ({code}) at character {error.start} is not valid "
            "Unicode; encode the text as UTF-8 (escape non-BMP characters as surrogate pairs)",
            param=path,
        ) from None


def _validation_error(error: ValidationError, data: dict[str, Any]) -> APIError:
    """The 400 of a pydantic error, at the deepest JSON path it reaches (a value that fits no
    alternative of a union gets each alternative's complaint)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for problem in error.errors(include_url=False):
        where = _data_path(data, problem["loc"], problem["type"] == "missing")
        message = str(problem["msg"]).removeprefix("Value error, ")
        found.append((where, message))
    deepest = max(len(where) for where, _ in found)
    where = next(where for where, _ in found if len(where) == deepest)
    messages = list(dict.fromkeys(m for w, m in found if w == where))
    path = json_path(*where)
    return APIError(400, f"{path or 'body'}: {'; or '.join(messages)}", param=path or None)


def _data_path(data: Any, loc: Sequence[str | int], missing: bool) -> tuple[str | int, ...]:
    """The part of pydantic's ``loc`` that exists in ``data`` (union member tags such as
    ``list[dict[str,any]]`` are not in the data and are skipped), plus a missing field's name."""
    path: list[str | int] = []
    node = data
    for position, step in enumerate(loc):
        in_list = isinstance(step, int) and isinstance(node, list) and 0 <= step < len(node)
        if in_list or (isinstance(step, str) and isinstance(node, dict) and step in node):
            node = node[step]
        elif not (missing and position == len(loc) - 1 and isinstance(node, dict)):
            continue  # a union member's tag, not a key of the data
        path.append(step)
    return tuple(path)


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
