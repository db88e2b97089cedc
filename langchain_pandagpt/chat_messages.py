"""LangChain messages -> a PandaGPT conversation (the LangChain side of ``ChatPandaGPT``).

The PandaGPT prompt (``generation/prompt.py`` lays it out) gets:

* Human messages are ``### Human:`` turns. Their media (image, audio, video, depth, thermal,
  IMU blocks) sits in front of their text, in order, as ``<Img>[media]</Img>``; their text
  blocks are joined with newlines. Consecutive messages of one role merge into one turn.
* AI messages are ``### Assistant:`` answers. Their tool calls are written back as the JSON the
  model emits for them (below); reasoning and provider-specific blocks are dropped.
* Tool messages become human turns: ``Tool result from <name>: <content>`` (``Tool error`` for
  ``status="error"``); media in them is attached to that turn.
* System messages, wherever they appear, are joined into the plain system segment before the
  first ``###`` (default fidelity). Reference fidelity has no system segment; instructions this
  class adds then go in front of the last human message.
* A history that opens with an AI message gets an empty human turn before it.

Tool calls and results are written by :mod:`~langchain_pandagpt.structured.formats`, which the
server uses for OpenAI ``tool_calls`` and ``tool`` messages too, so both paths give the model
the same text.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.media.sources import block_to_media_item
from langchain_pandagpt.structured.formats import ToolTranscript

#: AI-message blocks that carry no answer text (tool calls are rendered from ``tool_calls``).
_SKIPPED_AI_BLOCKS = frozenset(
    {
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "reasoning",
        "non_standard",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
    }
)
_MEDIA_BLOCKS = frozenset({"image", "audio", "video", "file"})
_CHAT_ROLES: dict[str, Literal["system", "human", "assistant"]] = {
    "system": "system",
    "user": "human",
    "human": "human",
    "tool": "human",
    "assistant": "assistant",
    "ai": "assistant",
}


def messages_to_conversation(
    messages: Sequence[BaseMessage], policy: MediaPolicy | None = None
) -> list[Message]:
    """The PandaGPT conversation of LangChain messages (see the module docstring).

    Unsupported blocks and unreadable media raise ``ValueError`` naming the message and block.
    """
    policy = policy or MediaPolicy()
    transcript = ToolTranscript()
    conversation = [_convert_message(m, i, policy, transcript) for i, m in enumerate(messages)]
    first = next((i for i, m in enumerate(conversation) if m.role != "system"), None)
    if first is not None and conversation[first].role == "assistant":
        conversation.insert(first, Message("human", ""))
    return conversation


def _convert_message(
    message: BaseMessage, index: int, policy: MediaPolicy, transcript: ToolTranscript
) -> Message:
    if isinstance(message, HumanMessage):
        return _content_message("human", message, index, policy)
    if isinstance(message, AIMessage):
        converted = _content_message("assistant", message, index, policy)
        calls = [(call["name"], call["args"], call["id"]) for call in message.tool_calls]
        converted.text = transcript.assistant_turn(converted.text, calls)
        return converted
    if isinstance(message, SystemMessage):
        return _content_message("system", message, index, policy)
    if isinstance(message, ToolMessage | FunctionMessage):
        converted = _content_message("human", message, index, policy)
        failed = getattr(message, "status", "success") == "error"
        call_id = getattr(message, "tool_call_id", None)
        converted.text = transcript.tool_result(
            converted.text, message.name, call_id, failed=failed
        )
        return converted
    if isinstance(message, ChatMessage) and message.role.lower() in _CHAT_ROLES:
        return _content_message(_CHAT_ROLES[message.role.lower()], message, index, policy)
    raise ValueError(
        f"message {index}: {type(message).__name__} is not supported; use system, human, AI "
        "or tool messages"
    )


def _content_message(
    role: Literal["system", "human", "assistant"],
    message: BaseMessage,
    index: int,
    policy: MediaPolicy,
) -> Message:
    """Text and media of a message, read through ``content_blocks``."""
    texts: list[str] = []
    media: list[MediaItem] = []
    for position, original in enumerate(message.content_blocks):
        block: dict[str, Any] = dict(original)
        kind = block["type"]
        label = f"message {index}, content block {position} ({kind})"
        if kind == "non_standard":
            block = _openai_image_url(block) or block
            kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "text-plain":
            texts.append(_plain_text(block, label))
        elif kind in _MEDIA_BLOCKS and role != "system":
            if role == "assistant":
                raise MediaError(
                    label, "AI messages cannot carry media", "attach it to a human turn"
                )
            media.append(block_to_media_item(block, policy, label))
        elif role != "assistant" or kind not in _SKIPPED_AI_BLOCKS:
            raise ValueError(f"{label}: {role} messages cannot hold {kind!r} content blocks")
    return Message(role, "\n".join(texts), media)


def _openai_image_url(block: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI ``image_url`` blocks whose value is a plain string, which ``content_blocks``
    leaves as ``non_standard``."""
    value = block.get("value") or {}
    if value.get("type") != "image_url":
        return None
    url = value.get("image_url")
    url = url.get("url") if isinstance(url, Mapping) else url
    return {"type": "image", "url": url} if isinstance(url, str) else None


def _plain_text(block: Mapping[str, Any], label: str) -> str:
    """The text of a ``text-plain`` block (``text``, or UTF-8 ``base64``)."""
    if isinstance(block.get("text"), str):
        return str(block["text"])
    try:
        return base64.b64decode(block.get("base64") or "", validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{label}: text-plain blocks need text or UTF-8 base64 ({exc})") from exc
