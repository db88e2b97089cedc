"""The one modality -> ImageBind loader map, and what each loader is handed.

Used by the PandaGPT model (media items) and the embedder (media items and texts). The
loaders live in :mod:`langchain_pandagpt.imagebind.data`, imported on first use: they pull in
PyAV, soundfile and the tokenizer, which a process that never decodes media does not need.
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable, Sequence
from typing import Any, Final

import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import ImageBindConfig
from langchain_pandagpt.media.item import EMBEDDING_MODALITIES, MediaItem

#: Loader (in ``langchain_pandagpt.imagebind.data``) for each modality, text included.
LOADER_NAMES: Final[dict[str, str]] = {
    "text": "load_and_transform_text",
    "image": "load_and_transform_vision_data",
    "video": "load_and_transform_video_data",
    "audio": "load_and_transform_audio_data",
    "thermal": "load_and_transform_thermal_data",
    "depth": "load_and_transform_depth_data",
    "imu": "load_and_transform_imu_data",
}
assert tuple(LOADER_NAMES) == EMBEDDING_MODALITIES


def loader_for(modality: str) -> Callable[..., torch.Tensor]:
    """The official ImageBind loader of ``modality`` (``text`` or a media kind)."""
    data = importlib.import_module("langchain_pandagpt.imagebind.data")
    loader: Callable[..., torch.Tensor] = getattr(data, LOADER_NAMES[modality])
    return loader


def preprocess_kwargs(modality: str, config: ImageBindConfig) -> dict[str, Any]:
    """Loader options that depend on the encoder's config (the audio spectrogram's shape)."""
    if modality != "audio":
        return {}
    return {"num_mel_bins": config.audio_num_mel_bins, "target_length": config.audio_target_len}


def loader_input(item: MediaItem | str) -> object:
    """What a loader takes for one input: a text as is, a path itself (so videos are never
    read whole), bytes as an in-memory file named after the item (errors then name it), and
    arrays (tensors as numpy, except the IMU loader's tensors)."""
    if isinstance(item, str):
        return item
    data = item.data
    if isinstance(data, bytes):
        stream = io.BytesIO(data)
        stream.name = item.describe()
        return stream
    if isinstance(data, torch.Tensor) and item.modality != "imu":
        return data.detach().cpu().numpy()
    if isinstance(data, os.PathLike):
        return os.fspath(data)
    return data


def load_batch(modality: str, items: Sequence[MediaItem | str], **options: Any) -> torch.Tensor:
    """One batch tensor of ``items``, all of ``modality`` (strings are texts).

    ``options`` go to the loader: ``device``, and :func:`preprocess_kwargs` for the encoder.
    A loader's :class:`MediaError` names the item's label (``MediaItem.name``, e.g.
    ``messages[2].content[1]``) when it has one, rather than its path or batch position.
    """
    inputs = [loader_input(item) for item in items]
    try:
        return loader_for(modality)(inputs, **options)
    except MediaError as exc:
        label = _label_of(exc.source, items, inputs)
        if label is None or label == exc.source:
            raise
        raise MediaError(label, exc.problem, exc.fix) from exc


def _label_of(
    source: str, items: Sequence[MediaItem | str], inputs: Sequence[object]
) -> str | None:
    """The label of the item a loader named ``source`` (its path, or its type and batch index)."""
    from langchain_pandagpt.imagebind.vision import item_name  # loaded with the loaders

    for index, (item, value) in enumerate(zip(items, inputs, strict=True)):
        if isinstance(item, MediaItem) and item.name and item_name(value, index) == source:
            return item.name
    return None
