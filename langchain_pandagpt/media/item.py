"""One piece of media (:class:`MediaItem`) and the modality names every layer agrees on.

Framework-free on purpose: the LangChain adapters, the HTTP server, the engine and training all
hand media to the model as :class:`MediaItem` lists, however the media arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import MODALITIES
from langchain_pandagpt.media.hashing import content_digest

#: Media kinds a user can attach. ``image`` and ``video`` both go through ImageBind's vision tower.
MEDIA_MODALITIES: Final[tuple[str, ...]] = ("image", "video", "audio", "thermal", "depth", "imu")
#: Everything the embedder can embed: text plus the media kinds.
EMBEDDING_MODALITIES: Final[tuple[str, ...]] = ("text", *MEDIA_MODALITIES)
#: Which ImageBind tower embeds each media kind.
IMAGEBIND_TOWER: Final[dict[str, str]] = {
    "image": "vision",
    "video": "vision",
    "audio": "audio",
    "thermal": "thermal",
    "depth": "depth",
    "imu": "imu",
}
assert set(IMAGEBIND_TOWER.values()) <= set(MODALITIES)

MediaData: TypeAlias = str | bytes | np.ndarray | torch.Tensor


def check_modality(modality: object, source: str) -> str:
    """``modality`` if it is a media kind, else a :class:`MediaError` naming ``source``."""
    if modality not in MEDIA_MODALITIES:
        raise MediaError(
            source, f"unknown modality {modality!r}", f"use one of {', '.join(MEDIA_MODALITIES)}"
        )
    return str(modality)


@dataclass(frozen=True)
class MediaItem:
    """One piece of media: its kind and its data.

    ``data`` is a local path (str), raw file bytes, an array/tensor (IMU signals, depth maps),
    or an already computed ImageBind embedding when ``is_embedding`` is true (the training
    feature cache uses that to skip the encoder). ``name`` labels the item in errors.
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
        """The item's :func:`~langchain_pandagpt.media.hashing.content_digest`, for caching.

        An unreadable path raises :class:`MediaError`: a vanished file is the user's media
        problem, not an engine crash.
        """
        return content_digest(
            self.modality, self.data, is_embedding=self.is_embedding, source=self.describe()
        )

    def describe(self) -> str:
        """Short name for error messages."""
        if self.name:
            return self.name
        if isinstance(self.data, str):
            return self.data
        if isinstance(self.data, bytes):
            return f"<{self.modality} bytes: {len(self.data)} B>"
        return f"<{self.modality} array {tuple(self.data.shape)}>"
