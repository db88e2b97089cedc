"""The one framework-free media layer: what a medium is, where it may come from, how it is
recognised, hashed and handed to ImageBind's loaders.

* :mod:`.item`: :class:`MediaItem`, ``MEDIA_MODALITIES``, ``IMAGEBIND_TOWER``;
* :mod:`.policy`: :class:`MediaPolicy` (local files, remote fetches and their limits);
* :mod:`.sources` and :mod:`.remote`: paths, ``file:``/``data:``/``http(s)`` URLs, base64 and
  content-block dicts -> :class:`MediaItem`;
* :mod:`.detect`: MIME table, magic bytes, name hints, ``.npy`` shapes -> modality;
* :mod:`.hashing`: the content digest every media cache keys on;
* :mod:`.loaders`: modality -> ImageBind loader, and the loaders' inputs and options.

Nothing here imports LangChain: the LangChain adapters, the server and the model build on it.
"""

from __future__ import annotations

from langchain_pandagpt.media.detect import (
    NPY_MIME_TYPE,
    guess_file_modality,
    guess_mime_type,
    guess_modality,
    sniff_mime_type,
)
from langchain_pandagpt.media.hashing import content_digest
from langchain_pandagpt.media.item import (
    EMBEDDING_MODALITIES,
    IMAGEBIND_TOWER,
    MEDIA_MODALITIES,
    MediaItem,
)
from langchain_pandagpt.media.policy import MediaPolicy
from langchain_pandagpt.media.remote import fetch_remote_media
from langchain_pandagpt.media.sources import (
    block_to_media_item,
    parse_data_url,
    resolve_data,
    resolve_location,
)

__all__ = [
    "EMBEDDING_MODALITIES",
    "IMAGEBIND_TOWER",
    "MEDIA_MODALITIES",
    "NPY_MIME_TYPE",
    "MediaItem",
    "MediaPolicy",
    "block_to_media_item",
    "content_digest",
    "fetch_remote_media",
    "guess_file_modality",
    "guess_mime_type",
    "guess_modality",
    "parse_data_url",
    "resolve_data",
    "resolve_location",
    "sniff_mime_type",
]
