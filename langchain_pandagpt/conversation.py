"""Plain data types for a PandaGPT conversation, shared by the engine, LangChain and training.

These are deliberately framework-free: the LangChain adapter, the HTTP server and the
training data reader each translate their own formats into :class:`Message` lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import numpy as np
import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import MODALITIES

Role: TypeAlias = Literal["system", "human", "assistant"]
#: Media kinds a user can attach. ``image`` and ``video`` both go through ImageBind's vision tower.
MEDIA_MODALITIES: tuple[str, ...] = ("image", "video", "audio", "thermal", "depth", "imu")
#: Which ImageBind tower embeds each media kind.
IMAGEBIND_TOWER: dict[str, str] = {
    "image": "vision",
    "video": "vision",
    "audio": "audio",
    "thermal": "thermal",
    "depth": "depth",
    "imu": "imu",
}
assert set(IMAGEBIND_TOWER.values()) <= set(MODALITIES)

MediaData: TypeAlias = str | bytes | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class MediaItem:
    """One piece of media: its kind and its data.

    ``data`` is a local path (str), raw file bytes, an array/tensor (IMU signals, depth maps),
    or an already computed ImageBind embedding when ``is_embedding`` is true (the training
    feature cache uses that to skip the encoder).
    """

    modality: str
    data: MediaData
    is_embedding: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if self.modality not in MEDIA_MODALITIES:
            raise ValueError(
                f"unknown modality {self.modality!r}; use one of {', '.join(MEDIA_MODALITIES)}"
            )

    @property
    def tower(self) -> str:
        """The ImageBind tower that embeds this item."""
        return IMAGEBIND_TOWER[self.modality]

    def content_hash(self) -> str:
        """SHA-256 over the modality and the content (file bytes for paths), for caching.

        An unreadable path raises :class:`MediaError`: a vanished file is the user's media
        problem, not an engine crash.
        """
        digest = hashlib.sha256(self.modality.encode())
        data = self.data
        if isinstance(data, str):
            try:
                with open(data, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
            except OSError as exc:
                raise MediaError(self.describe(), f"cannot be read: {exc.strerror or exc}") from exc
        elif isinstance(data, bytes):
            digest.update(data)
        else:
            array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data
            array = np.ascontiguousarray(array)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        digest.update(b"embedding" if self.is_embedding else b"media")
        return digest.hexdigest()

    def describe(self) -> str:
        """Short name for error messages."""
        if self.name:
            return self.name
        if isinstance(self.data, str):
            return self.data
        if isinstance(self.data, bytes):
            return f"<{self.modality} bytes: {len(self.data)} B>"
        return f"<{self.modality} array {tuple(self.data.shape)}>"


@dataclass
class Message:
    """One turn: a role, its text, and media attached to it (in order)."""

    role: Role
    text: str = ""
    media: list[MediaItem] = field(default_factory=list)
