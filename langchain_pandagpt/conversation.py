"""Plain data types for a PandaGPT conversation, shared by the engine, LangChain and training.

These are deliberately framework-free: the LangChain adapter, the HTTP server and the
training data reader each translate their own formats into :class:`Message` lists. The media
types live in :mod:`langchain_pandagpt.media`; they are re-exported here so that
``from langchain_pandagpt.conversation import MediaItem`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from langchain_pandagpt.media.item import IMAGEBIND_TOWER, MEDIA_MODALITIES, MediaData, MediaItem

__all__ = ["IMAGEBIND_TOWER", "MEDIA_MODALITIES", "MediaData", "MediaItem", "Message", "Role"]

Role: TypeAlias = Literal["system", "human", "assistant"]


@dataclass
class Message:
    """One turn: a role, its text, and media attached to it (in order)."""

    role: Role
    text: str = ""
    media: list[MediaItem] = field(default_factory=list)
