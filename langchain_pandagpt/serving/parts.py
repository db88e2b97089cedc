"""OpenAI-style content parts (and our media extensions) -> PandaGPT messages and media.

Each part is rewritten as the LangChain v1 content block it stands for (a plain dict) and read
by :func:`~langchain_pandagpt.media.sources.block_to_media_item`, so the server and
``ChatPandaGPT`` decode media and apply a :class:`~langchain_pandagpt.media.policy.MediaPolicy`
the same way: inline data (base64, ``data:`` URLs) is always accepted, ``http(s)`` URLs only
with ``allow_remote_media`` and server-side files only with ``allow_local_files``.

Accepted parts (``<m>`` is image, audio, video, thermal, depth or imu)::

    {"type": "text", "text": "..."}
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}       # OpenAI
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}  # OpenAI
    {"type": "<m>_url", "<m>_url": {"url": "data:...;base64,..."}}
    {"type": "input_<m>", "input_<m>": {"data": "<base64>", "format": "mp4"}}
    {"type": "file", "file": {"file_data": "data:...", "filename": "room.depth.png",
                              "modality": "depth"}}                            # OpenAI + modality

A ``file`` part without ``modality`` is classified by its name (``x.depth.png``,
``x.thermal.jpg``, ``x.imu.npy``) and then its MIME type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_pandagpt.conversation import Message, Role
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media.detect import guess_modality
from langchain_pandagpt.media.item import MEDIA_MODALITIES, MediaItem
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.media.sources import block_to_media_item
from langchain_pandagpt.model.embedder import EmbedderInput
from langchain_pandagpt.serving.protocol import ChatMessage

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "human",
    "assistant": "assistant",
    "tool": "human",  # a tool result is a human turn; serving/tools.py writes its header
}
_PART_HELP = "use text, image_url, input_audio, file, input_<modality> or <modality>_url parts"


def part_to_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The LangChain v1 block (``image``/``audio``/``video``/``file``) of a media part."""
    kind = part.get("type")
    body = part.get(kind) if isinstance(kind, str) else None
    if not isinstance(kind, str):
        raise MediaError(where, "content part has no 'type'", _PART_HELP)
    if kind == "file":
        fields = _fields(body, where, kind)
        if fields.get("file_id"):
            raise MediaError(where, "file_id references are not supported", "send file_data")
        filename = fields.get("filename")
        modality = fields.get("modality") or (guess_modality(filename) if filename else None)
        data = fields.get("file_data")
        inline = isinstance(data, str) and data.startswith("data:")
        return _block(modality, {"url": data} if inline else {"base64": data})
    if kind.startswith("input_") and kind[6:] in MEDIA_MODALITIES:
        fields = _fields(body, where, kind)
        mime_type = None
        if kind == "input_audio" and fields.get("format"):
            mime_type = f"audio/{fields['format']}"
        return _block(kind[6:], {"base64": fields.get("data"), "mime_type": mime_type})
    if kind.endswith("_url") and kind[:-4] in MEDIA_MODALITIES:
        url = body.get("url") if isinstance(body, Mapping) else body
        if not isinstance(url, str) or not url:
            raise MediaError(where, f"a {kind} part needs a url", f'{{"{kind}": {{"url": ...}}}}')
        return _block(kind[:-4], {"url": url})
    raise MediaError(where, f"unsupported content part type {kind!r}", _PART_HELP)


def part_media(part: Mapping[str, Any], where: str, policy: MediaPolicy) -> MediaItem:
    """The media item of one non-text part, read within ``policy``."""
    return block_to_media_item(part_to_block(part, where), policy, where)


def request_messages(messages: Sequence[ChatMessage], policy: MediaPolicy) -> list[Message]:
    """OpenAI chat messages -> PandaGPT messages (``developer`` counts as ``system``)."""
    turns = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise ValueError(
                f"messages[{index}]: {message.role} messages are not supported (no tool calling)"
            )
        content = message.content
        if content is None or isinstance(content, str):
            turns.append(Message(role, content or ""))
            continue
        texts, media = [], []
        for position, part in enumerate(content):
            where = f"messages[{index}].content[{position}]"
            if part.get("type") == "text":
                texts.append(_text(part, where))
            else:
                media.append(part_media(part, where, policy))
        turns.append(Message(role, "\n".join(texts), media=media))
    return turns


def embedding_inputs(
    inputs: Sequence[str | Mapping[str, Any]], policy: MediaPolicy
) -> list[EmbedderInput]:
    """``/v1/embeddings`` inputs -> :class:`~langchain_pandagpt.model.embedder.MediaEmbedder`
    inputs: strings are text (never paths), parts are media."""
    return [
        value if isinstance(value, str) else part_media(value, f"input[{i}]", policy)
        for i, value in enumerate(inputs)
    ]


def _block(modality: str | None, source: dict[str, Any]) -> dict[str, Any]:
    """A v1 block: ``image``/``audio``/``video`` by type, sensors as tagged ``file`` blocks."""
    data = {key: value for key, value in source.items() if value is not None}
    if modality in ("image", "audio", "video"):
        return {"type": modality, **data}
    extras = {"modality": modality} if modality is not None else {}
    return {"type": "file", **data, "extras": extras}


def _text(part: Mapping[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: a text part needs a string 'text'")
    return text


def _fields(value: object, where: str, kind: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MediaError(where, f"a {kind} part needs a {kind!r} object")
    return value
