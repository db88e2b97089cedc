"""The one content digest of media and text: the key of every cache of encoded media.

``MediaItem.content_hash``, the model's in-memory ImageBind cache, the training feature cache
and the embeddings' on-disk vector cache all key on :func:`content_digest`, so one medium
gets one key whether it arrived as a path, a ``file:``/``data:`` URL, base64 or bytes.

The format is stable (training feature caches on disk depend on it): SHA-256 over the
modality name, the content (file bytes for paths, UTF-8 for text, ``(dtype, shape)`` then the
raw buffer for arrays and tensors) and ``b"embedding"`` or ``b"media"``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final

import numpy as np
import torch

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import open_regular_file

_CHUNK: Final = 1 << 20


def content_digest(
    modality: str, data: object, *, is_embedding: bool = False, source: str | None = None
) -> str:
    """Hex SHA-256 of ``data`` as ``modality`` (see the module docstring).

    A ``str`` is text when ``modality`` is ``"text"`` and a local path otherwise. ``source``
    names the input in errors (default: the path). An unreadable path, or one that is not a
    regular file, raises :class:`MediaError`; an unsupported type raises ``TypeError``.
    """
    digest = hashlib.sha256(modality.encode())
    if modality == "text":
        if not isinstance(data, str):
            raise TypeError(f"text must be a str, got {type(data).__name__}")
        digest.update(data.encode("utf-8"))
    elif isinstance(data, str | os.PathLike):
        name = source or os.fspath(data)
        try:
            # Regular files only: hashing /dev/zero or a FIFO would never end.
            with open_regular_file(data, name, max_bytes=None) as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise MediaError(name, f"cannot be read: {exc.strerror or exc}") from exc
        except MediaError as exc:
            raise MediaError(name, f"cannot be read: {exc.problem}", exc.fix) from None
    elif isinstance(data, bytes | bytearray | memoryview):
        digest.update(data)
    elif isinstance(data, np.ndarray | torch.Tensor):
        array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(array.tobytes())
    else:
        raise TypeError(
            f"cannot hash {modality} data of type {type(data).__name__}; "
            "use a path, bytes, an array or a tensor"
        )
    digest.update(b"embedding" if is_embedding else b"media")
    return digest.hexdigest()
