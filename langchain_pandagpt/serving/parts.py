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

Every refusal is an :class:`~langchain_pandagpt.serving.protocol.APIError` (400) whose ``param``
is the JSON path of the bad part (``messages[2].content[1].file.file_data``). A request carries
at most :attr:`MediaLimits.max_items` media items of :attr:`MediaLimits.max_bytes` in all: the
count is checked before anything is decoded, the size of inline data before it is decoded (from
its base64 length) and again, exactly, once each item is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_pandagpt.conversation import Message, Role
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media.detect import guess_modality
from langchain_pandagpt.media.item import MEDIA_MODALITIES, MediaItem
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.media.sources import block_to_media_item
from langchain_pandagpt.model.embedder import EmbedderInput
from langchain_pandagpt.serving.protocol import APIError, ChatMessage, json_kind

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "human",
    "assistant": "assistant",
    "tool": "human",  # a tool result is a human turn; serving/tools.py writes its header
}
_PART_HELP = "use text, image_url, input_audio, file, input_<modality> or <modality>_url parts"


@dataclass(frozen=True)
class MediaLimits:
    """Per-request media caps: items, and their bytes in all (as decoded, not base64)."""

    max_items: int = 16
    max_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.max_items < 0 or self.max_bytes < 1:
            raise ValueError(
                f"media limits must be max_items >= 0 and max_bytes >= 1, got {self.max_items} "
                f"and {self.max_bytes}"
            )


@dataclass
class PartReader:
    """Reads one request's content parts within ``policy`` and ``limits``; :attr:`media` lists
    each media item read with the JSON path of its part."""

    policy: MediaPolicy
    limits: MediaLimits = field(default_factory=MediaLimits)
    media: list[tuple[str, MediaItem]] = field(default_factory=list)
    _bytes: int = 0

    def messages(self, messages: Sequence[ChatMessage]) -> list[Message]:
        """OpenAI chat messages -> PandaGPT messages (``developer`` counts as ``system``)."""
        parts = [
            (f"messages[{index}].content[{position}]", part)
            for index, message in enumerate(messages)
            if isinstance(message.content, list)
            for position, part in enumerate(message.content)
        ]
        self._check_count([where for where, part in parts if part.get("type") != "text"])
        turns = []
        for index, message in enumerate(messages):
            role = _ROLES[message.role]
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
                    media.append(self.part(part, where))
            turns.append(Message(role, "\n".join(texts), media=media))
        return turns

    def inputs(self, inputs: Sequence[str | Mapping[str, Any]]) -> list[EmbedderInput]:
        """``/v1/embeddings`` inputs -> embedder inputs: strings are text (never paths), parts
        are media."""
        media = [f"input[{i}]" for i, value in enumerate(inputs) if not isinstance(value, str)]
        self._check_count(media)
        return [
            value if isinstance(value, str) else self.part(value, f"input[{i}]")
            for i, value in enumerate(inputs)
        ]

    def part(self, part: Mapping[str, Any], where: str) -> MediaItem:
        """The media item of one non-text part, counted against the limits."""
        block = part_to_block(part, where)
        inline = block.get("base64") or block.get("url")
        estimate = _inline_size(inline) if isinstance(inline, str) else 0
        self._check_bytes(self._bytes + estimate, where)
        try:
            item = block_to_media_item(block, self.policy, where)
        except MediaError as error:
            raise APIError(400, str(error), param=where, code="invalid_media") from error
        size = len(item.data) if isinstance(item.data, bytes) else _file_size(item.data)
        self._bytes += size
        self._check_bytes(self._bytes, where)
        self.media.append((where, item))
        return item

    def _check_count(self, media_parts: list[str]) -> None:
        limit = self.limits.max_items
        if len(media_parts) > limit:
            where = media_parts[limit]
            raise APIError(
                400,
                f"{where}: the request has {len(media_parts)} media items but this server takes "
                f"at most {limit} per request; send fewer (the server's --max-media-items)",
                param=where,
                code="too_many_media_items",
            )

    def _check_bytes(self, total: int, where: str) -> None:
        limit = self.limits.max_bytes
        if total > limit:
            raise APIError(
                400,
                f"{where}: the request's media reach {total} bytes but this server takes at most "
                f"{limit} per request; send smaller or fewer media (the server's --max-media-mb)",
                param=where,
                code="media_too_large",
            )


def part_to_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The LangChain v1 block (``image``/``audio``/``video``/``file``) of a media part."""
    kind = part.get("type")
    if not isinstance(kind, str):
        raise APIError(
            400,
            f"{where}.type: a content part needs a string type ({_PART_HELP})",
            param=f"{where}.type",
        )
    body = part.get(kind)
    if kind == "file":
        fields = _fields(body, where, kind)
        if fields.get("file_id") is not None:
            raise APIError(
                400,
                f"{where}.file.file_id: file_id references are not supported; send file_data",
                param=f"{where}.file.file_id",
                code="invalid_media",
            )
        data = _string(fields, "file_data", f"{where}.file", required=True)
        filename = _string(fields, "filename", f"{where}.file")
        modality = _string(fields, "modality", f"{where}.file")
        modality = modality or (guess_modality(filename) if filename else None)
        return _block(modality, {"url": data} if data.startswith("data:") else {"base64": data})
    if kind.startswith("input_") and kind[6:] in MEDIA_MODALITIES:
        fields = _fields(body, where, kind)
        data = _string(fields, "data", f"{where}.{kind}", required=True)
        format_ = _string(fields, "format", f"{where}.{kind}")
        mime_type = f"audio/{format_}" if kind == "input_audio" and format_ else None
        return _block(kind[6:], {"base64": data, "mime_type": mime_type})
    if kind.endswith("_url") and kind[:-4] in MEDIA_MODALITIES:
        if isinstance(body, str):  # {"image_url": "data:..."}: older clients
            url = body
        else:
            url = _string(_fields(body, where, kind), "url", f"{where}.{kind}", required=True)
        if not url:
            raise APIError(
                400,
                f"{where}.{kind}.url: a {kind} part needs a url",
                param=f"{where}.{kind}.url",
                code="invalid_media",
            )
        return _block(kind[:-4], {"url": url})
    raise APIError(
        400,
        f"{where}.type: unsupported content part type {kind!r} ({_PART_HELP})",
        param=f"{where}.type",
    )


def part_media(part: Mapping[str, Any], where: str, policy: MediaPolicy) -> MediaItem:
    """The media item of one non-text part, read within ``policy`` (no request limits)."""
    return PartReader(policy, MediaLimits(2**31, 2**62)).part(part, where)


def request_messages(
    messages: Sequence[ChatMessage], policy: MediaPolicy, limits: MediaLimits | None = None
) -> list[Message]:
    """OpenAI chat messages -> PandaGPT messages (see :meth:`PartReader.messages`)."""
    return PartReader(policy, limits or MediaLimits()).messages(messages)


def embedding_inputs(
    inputs: Sequence[str | Mapping[str, Any]],
    policy: MediaPolicy,
    limits: MediaLimits | None = None,
) -> list[EmbedderInput]:
    """``/v1/embeddings`` inputs -> embedder inputs (see :meth:`PartReader.inputs`)."""
    return PartReader(policy, limits or MediaLimits()).inputs(inputs)


def _block(modality: str | None, source: dict[str, Any]) -> dict[str, Any]:
    """A v1 block: ``image``/``audio``/``video`` by type, sensors as tagged ``file`` blocks."""
    data = {key: value for key, value in source.items() if value is not None}
    if modality in ("image", "audio", "video"):
        return {"type": modality, **data}
    extras = {"modality": modality} if modality is not None else {}
    return {"type": "file", **data, "extras": extras}


def _inline_size(value: str) -> int:
    """An upper bound of the bytes inline data decodes to (0 for URLs and paths)."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        return len(payload) * 3 // 4 if ";base64" in header.lower() else len(payload)
    if "://" in value[:16] or value.startswith(("/", "~", ".")):
        return 0
    return len(value) * 3 // 4


def _file_size(data: object) -> int:
    try:
        return os.stat(data).st_size if isinstance(data, str) else 0
    except OSError:
        return 0


def _text(part: Mapping[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise APIError(
            400,
            f"{where}.text: a text part needs a string text, not {json_kind(text)}",
            param=f"{where}.text",
        )
    return text


def _fields(value: object, where: str, kind: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        path = f"{where}.{kind}"
        raise APIError(
            400,
            f"{path}: a {kind} part needs a {kind!r} object, not {json_kind(value)}",
            param=path,
        )
    return value


def _string(fields: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> Any:
    """``fields[key]`` if it is a string (``None`` when absent and optional)."""
    value = fields.get(key)
    path = f"{where}.{key}"
    if value is None and not required:
        return None
    if not isinstance(value, str):
        problem = "is missing" if value is None else f"must be a string, not {json_kind(value)}"
        raise APIError(400, f"{path} {problem}", param=path)
    return value
