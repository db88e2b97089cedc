"""Retrieval over folders of media: load, embed by modality with ImageBind, retrieve, chat.

ImageBind puts text and every medium in one space, so a folder of photos, recordings, clips
and sensor logs is searchable by a text query or by another medium, with no captions. The
retrieved documents point at the files; :func:`to_content_block` turns them into LangChain
content blocks a multimodal chat model (``ChatPandaGPT``) reads directly.

Example:
    .. code-block:: python

        from langchain_pandagpt.embeddings import ImageBindEmbeddings
        from langchain_pandagpt.media_rag import MediaIndex, to_content_block

        index = MediaIndex(ImageBindEmbeddings(checkpoint="imagebind.safetensors"))
        index.index_directory("~/holiday")  # later calls encode only new or changed files
        docs = index.as_retriever(k=4).invoke("a dog running on the beach")
        blocks = [to_content_block(doc) for doc in docs]
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import av
import numpy as np
import soundfile
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.messages.content import (
    DataContentBlock,
    create_audio_block,
    create_file_block,
    create_image_block,
    create_video_block,
)
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from PIL import Image
from pydantic import ConfigDict, Field
from tqdm.auto import tqdm

from langchain_pandagpt.conversation import MEDIA_MODALITIES, MediaItem
from langchain_pandagpt.downloads import sha256_of
from langchain_pandagpt.embeddings import ImageBindEmbeddings, MediaInput
from langchain_pandagpt.media.detect import NPY_MIME_TYPE, guess_file_modality, guess_mime_type

logger = logging.getLogger(__name__)

_MANIFEST: Final = "manifest.json"
_VECTORS: Final = "vectors.json"
_MANIFEST_FORMAT: Final = 1
#: Modalities whose files are images on disk (width and height are read from the header).
_IMAGE_FILES: Final = frozenset({"image", "thermal", "depth"})


def _document_id(source: str) -> str:
    """A stable id per file, so re-indexing a file replaces its vector instead of adding one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, source))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _av_info(path: Path) -> dict[str, float | int]:
    """Duration (and frame size for video) from the container, via PyAV."""
    info: dict[str, float | int] = {}
    with av.open(os.fspath(path)) as container:
        if container.streams.video:
            stream = container.streams.video[0]
            info["width"] = stream.codec_context.width
            info["height"] = stream.codec_context.height
            if stream.duration is not None and stream.time_base is not None:
                info["duration_s"] = float(stream.duration * stream.time_base)
        if "duration_s" not in info and container.duration is not None:
            info["duration_s"] = container.duration / av.time_base
    return info


def _media_info(path: Path, modality: str, mime_type: str) -> dict[str, float | int]:
    """Duration and frame size where the file says so cheaply (headers only, no decoding)."""
    if modality == "audio":
        try:
            return {"duration_s": float(soundfile.info(os.fspath(path)).duration)}
        except soundfile.SoundFileError:
            return _av_info(path)  # formats this libsndfile build cannot read
    if modality == "video":
        return _av_info(path)
    if modality in _IMAGE_FILES and mime_type.startswith("image/"):
        with Image.open(path) as image:
            return {"width": image.width, "height": image.height}
    if modality == "depth" and mime_type == NPY_MIME_TYPE:
        height, width = np.load(path, mmap_mode="r", allow_pickle=False).shape[:2]
        return {"height": int(height), "width": int(width)}
    return {}


class MediaDirectoryLoader(BaseLoader):
    """Turns a folder of media into one :class:`Document` per file, lazily.

    Each file's modality comes from
    :func:`~langchain_pandagpt.media.detect.guess_modality`: MIME type by extension, name hints
    for look-alike formats (``x.thermal.png``, ``x.depth.png``, ``x.imu.npy``) and the shape
    of ``.npy`` arrays. Files of unknown type and hidden files or folders (``.name``) are
    skipped.

    ``page_content`` is the file's path relative to the folder (``pets/dog.jpg``): a short,
    readable text for prompts and keyword filters. It is *not* what gets embedded;
    :class:`MediaIndex` embeds the media themselves. ``metadata`` is flat and scalar, so any
    vector store accepts it: ``source`` (absolute path), ``modality``, ``mime_type``,
    ``size_bytes``, ``mtime`` (seconds since the epoch), ``sha256``, and where the file
    header says so, ``duration_s`` (audio, video), ``width`` and ``height`` (images, video,
    depth maps).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        glob: str = "*",
        *,
        recursive: bool = True,
        modalities: Collection[str] | None = None,
        show_progress: bool = True,
    ) -> None:
        """``glob`` selects files (in every subfolder when ``recursive``); ``modalities``
        keeps only those kinds of media (default: all)."""
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: not a directory")
        unknown = sorted(set(modalities or ()) - set(MEDIA_MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; use {', '.join(MEDIA_MODALITIES)}")
        self.glob = glob
        self.recursive = recursive
        self.modalities = frozenset(modalities) if modalities else frozenset(MEDIA_MODALITIES)
        self.show_progress = show_progress

    def paths(self) -> list[tuple[Path, str]]:
        """The media files this loader yields, sorted, each with its modality."""
        candidates = self.path.rglob(self.glob) if self.recursive else self.path.glob(self.glob)
        found = []
        for path in sorted(candidates):
            relative = path.relative_to(self.path)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            modality = guess_file_modality(path)
            if modality in self.modalities:
                found.append((path, modality))
            elif modality is None:
                logger.debug("%s: unknown media type, skipped", path)
        return found

    def load_file(self, path: str | os.PathLike[str], modality: str | None = None) -> Document:
        """The document of one file (``modality`` is detected when not given)."""
        file = Path(path).expanduser().resolve()
        modality = modality or guess_file_modality(file)
        if modality is None:
            raise ValueError(f"{file}: unknown media type")
        stat = file.stat()
        mime_type = guess_mime_type(file.name) or "application/octet-stream"
        metadata: dict[str, Any] = {
            "source": os.fspath(file),
            "modality": modality,
            "mime_type": mime_type,
            "size_bytes": stat.st_size,
            "mtime": stat.st_mtime,
            "sha256": sha256_of(file),
        }
        try:
            metadata |= _media_info(file, modality, mime_type)
        except (OSError, ValueError, av.FFmpegError) as exc:
            logger.warning("%s: cannot read media info (%s)", file, exc)
        try:
            content = file.relative_to(self.path).as_posix()
        except ValueError:
            content = file.name
        return Document(
            page_content=content, metadata=metadata, id=_document_id(metadata["source"])
        )

    def lazy_load(self) -> Iterator[Document]:
        """Yields one document per media file, with a progress bar."""
        found = tqdm(self.paths(), desc="media", unit="file", disable=not self.show_progress)
        for path, modality in found:
            yield self.load_file(path, modality)


# --------------------------------------------------------------------------------------------
# Indexing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexStats:
    """What :meth:`MediaIndex.index_directory` did: files embedded and dropped."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


@dataclass
class _Record:
    """What the index knows of one indexed file, to detect changes without re-reading it."""

    id: str
    sha256: str | None
    size_bytes: int | None
    mtime: float | None


def _add_vectors(
    store: VectorStore, documents: Sequence[Document], vectors: list[list[float]], ids: list[str]
) -> None:
    """Store precomputed vectors: vector stores embed ``page_content``, which for media is
    only a name, so the vectors computed from the media go in directly."""
    if isinstance(store, InMemoryVectorStore):
        for doc_id, doc, vector in zip(ids, documents, vectors, strict=True):
            store.store[doc_id] = {
                "id": doc_id,
                "vector": vector,
                "text": doc.page_content,
                "metadata": doc.metadata,
            }
        return
    add_embeddings: Callable[..., Any] | None = getattr(store, "add_embeddings", None)
    if add_embeddings is None:
        raise TypeError(
            f"{type(store).__name__} cannot store precomputed vectors; use InMemoryVectorStore "
            "or a store with add_embeddings() (FAISS, PGVector, ...)"
        )
    pairs = [(doc.page_content, vector) for doc, vector in zip(documents, vectors, strict=True)]
    add_embeddings(pairs, metadatas=[doc.metadata for doc in documents], ids=ids)


class MediaIndex:
    """A vector store of media embedded by their modality, kept in sync with folders.

    Documents (from :class:`MediaDirectoryLoader`) are embedded from the files their
    ``source`` and ``modality`` metadata name, via ``ImageBindEmbeddings.embed_media``; the
    vectors go into ``vectorstore``: by default an ``InMemoryVectorStore``, or any store with
    ``add_embeddings`` (FAISS, PGVector...). Text queries are embedded with ``embed_query``.

    The index remembers each file's id, SHA-256, size and mtime, so
    :meth:`index_directory` re-encodes only new or changed files and drops deleted ones.
    It is not safe for concurrent writers.
    """

    def __init__(
        self, embeddings: ImageBindEmbeddings, vectorstore: VectorStore | None = None
    ) -> None:
        self.embeddings = embeddings
        self.vectorstore = (
            InMemoryVectorStore(embedding=embeddings) if vectorstore is None else vectorstore
        )
        self._records: dict[str, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    @property
    def sources(self) -> list[str]:
        """Absolute paths of the indexed files."""
        return sorted(self._records)

    def add_documents(
        self, documents: Sequence[Document], *, show_progress: bool = False
    ) -> list[str]:
        """Embed and store media documents (replacing earlier versions of the same files).

        Each document needs ``source`` (a path or URI) and ``modality`` metadata. Returns
        the ids used, in input order.
        """
        for doc in documents:
            missing = {"source", "modality"} - set(doc.metadata)
            if missing:
                raise ValueError(f"{doc.page_content!r}: metadata lacks {sorted(missing)}")
        ids = [doc.id or _document_id(doc.metadata["source"]) for doc in documents]
        vectors: list[list[float]] = [[] for _ in documents]
        # Sorting by modality makes each slice one batch of one encoder tower.
        order = sorted(range(len(documents)), key=lambda i: documents[i].metadata["modality"])
        step = self.embeddings.batch_size
        with tqdm(
            total=len(order), desc="embedding", unit="file", disable=not show_progress
        ) as bar:
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                found = self.embeddings.embed_media(
                    [
                        (documents[i].metadata["source"], documents[i].metadata["modality"])
                        for i in chunk
                    ]
                )
                for i, vector in zip(chunk, found, strict=True):
                    vectors[i] = vector
                bar.update(len(chunk))
        # Old versions go only once every new vector exists: a failure leaves the index intact.
        self.delete(doc.metadata["source"] for doc in documents)
        if documents:
            _add_vectors(self.vectorstore, documents, vectors, ids)
        for doc, doc_id in zip(documents, ids, strict=True):
            meta = doc.metadata
            self._records[meta["source"]] = _Record(
                doc_id, meta.get("sha256"), meta.get("size_bytes"), meta.get("mtime")
            )
        return ids

    def delete(self, sources: Iterable[str]) -> None:
        """Remove files (by ``source``) from the index; unknown sources are ignored."""
        ids = [self._records.pop(s).id for s in sources if s in self._records]
        if ids:
            self.vectorstore.delete(ids)

    def index_directory(
        self,
        path: str | os.PathLike[str],
        glob: str = "*",
        *,
        recursive: bool = True,
        modalities: Collection[str] | None = None,
        show_progress: bool = True,
    ) -> IndexStats:
        """Make the index's content under ``path`` match the folder, encoding only what changed.

        Files whose size and mtime match the index are skipped unread; files that were
        touched but kept their SHA-256 are not re-encoded; new and changed files are embedded;
        indexed files under ``path`` that the loader no longer finds are removed.
        """
        loader = MediaDirectoryLoader(
            path, glob, recursive=recursive, modalities=modalities, show_progress=False
        )
        found = loader.paths()
        current = {os.fspath(file) for file, _ in found}
        removed = [
            s for s in self._records if Path(s).is_relative_to(loader.path) and s not in current
        ]
        self.delete(removed)
        unchanged = 0
        to_embed: list[Document] = []
        updated = 0
        for file, modality in tqdm(found, desc="scanning", unit="file", disable=not show_progress):
            record = self._records.get(os.fspath(file))
            stat = file.stat()
            if record and (record.size_bytes, record.mtime) == (stat.st_size, stat.st_mtime):
                unchanged += 1
                continue
            doc = loader.load_file(file, modality)
            if record and record.sha256 == doc.metadata["sha256"]:
                record.size_bytes, record.mtime = stat.st_size, stat.st_mtime
                unchanged += 1
                continue
            if record:
                updated += 1
            to_embed.append(doc)
        self.add_documents(to_embed, show_progress=show_progress)
        return IndexStats(len(to_embed) - updated, updated, len(removed), unchanged)

    def search_by_vector(
        self, vector: list[float], k: int = 4, *, modalities: Collection[str] | None = None
    ) -> list[Document]:
        """The ``k`` nearest documents, optionally only of some modalities.

        ``InMemoryVectorStore`` filters exactly; other stores are over-fetched (``4 * k``)
        and filtered afterwards, which can return fewer than ``k`` documents.
        """
        if not modalities:
            return self.vectorstore.similarity_search_by_vector(vector, k=k)
        wanted = frozenset(modalities)
        if isinstance(self.vectorstore, InMemoryVectorStore):
            return self.vectorstore.similarity_search_by_vector(
                vector, k=k, filter=lambda doc: doc.metadata.get("modality") in wanted
            )
        docs = self.vectorstore.similarity_search_by_vector(vector, k=4 * k)
        return [doc for doc in docs if doc.metadata.get("modality") in wanted][:k]

    def as_retriever(self, **kwargs: Any) -> MediaRetriever:
        """A :class:`MediaRetriever` over this index (``k``, ``modalities``)."""
        return MediaRetriever(index=self, **kwargs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index to the folder ``path``: a manifest and, for the default
        ``InMemoryVectorStore``, its vectors. Other stores persist themselves; pass them to
        :meth:`load` again. Files are replaced atomically."""
        folder = Path(path).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(self.vectorstore, InMemoryVectorStore):
            _atomic_write(folder / _VECTORS, self.vectorstore.dump)
        manifest = {
            "format": _MANIFEST_FORMAT,
            "model_fingerprint": self.embeddings.model_fingerprint(),
            "records": {source: asdict(record) for source, record in self._records.items()},
        }
        _atomic_write(
            folder / _MANIFEST, lambda p: Path(p).write_text(json.dumps(manifest, indent=1))
        )
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embeddings: ImageBindEmbeddings,
        vectorstore: VectorStore | None = None,
    ) -> MediaIndex:
        """Reopen an index written by :meth:`save`.

        Raises ``ValueError`` when ``embeddings`` uses another checkpoint than the one that
        built the index: its vectors would not be comparable.
        """
        folder = Path(path).expanduser()
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
        except FileNotFoundError as exc:
            raise ValueError(f"{folder}: no {_MANIFEST}; not a saved MediaIndex") from exc
        if manifest.get("format") != _MANIFEST_FORMAT:
            raise ValueError(f"{folder}: unsupported index format {manifest.get('format')!r}")
        if manifest["model_fingerprint"] != embeddings.model_fingerprint():
            raise ValueError(
                f"{folder}: built with another ImageBind checkpoint or dtype; load it with the "
                "same embeddings settings, or rebuild it"
            )
        if vectorstore is None:
            if not (folder / _VECTORS).is_file():
                raise ValueError(f"{folder}: no {_VECTORS}; pass the vectorstore it was built on")
            vectorstore = InMemoryVectorStore.load(os.fspath(folder / _VECTORS), embeddings)
        index = cls(embeddings, vectorstore)
        index._records = {s: _Record(**r) for s, r in manifest["records"].items()}
        return index


def _atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """Run ``write`` on a temporary sibling of ``target``, then move it into place."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------


def _describe(media: MediaInput) -> str:
    """The query string shown in traces for a media query."""
    if isinstance(media, str | os.PathLike):
        return os.fspath(media)
    if isinstance(media, MediaItem):
        return media.describe()
    if isinstance(media, tuple):
        data, modality = media
        return f"{modality}: {data}" if isinstance(data, str) else f"<{modality} data>"
    return f"<{media.get('type')} block>"


class MediaRetriever(BaseRetriever):
    """Nearest media for a text query (``invoke("a dog")``) or a media query
    (``invoke_media("bark.wav")``), optionally limited to some modalities.

    ``k`` and ``modalities`` can be overridden per call: ``invoke("a dog", k=2,
    modalities=["image"])``. A media query takes any input of ``embed_media`` (path, URI,
    ``MediaItem``, ``(data, modality)`` pair, content block) and goes through ``invoke``, so
    callbacks and tracing see it like a text query.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: MediaIndex
    k: int = Field(default=4, gt=0)
    modalities: list[str] | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        modalities: Collection[str] | None = None,
        media: MediaInput | None = None,
    ) -> list[Document]:
        embeddings = self.index.embeddings
        if media is None:
            vector = embeddings.embed_query(query)
        else:
            vector = embeddings.embed_media([media])[0]
        return self.index.search_by_vector(
            vector, k or self.k, modalities=modalities or self.modalities
        )

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        modalities: Collection[str] | None = None,
        media: MediaInput | None = None,
    ) -> list[Document]:
        embeddings = self.index.embeddings
        if media is None:
            vector = await embeddings.aembed_query(query)
        else:
            vector = (await embeddings.aembed_media([media]))[0]
        return self.index.search_by_vector(
            vector, k or self.k, modalities=modalities or self.modalities
        )

    def invoke_media(
        self,
        media: MediaInput,
        config: Any = None,
        *,
        k: int | None = None,
        modalities: Collection[str] | None = None,
    ) -> list[Document]:
        """Documents nearest to a medium (image, audio, video, depth, thermal or IMU)."""
        return self.invoke(_describe(media), config, media=media, k=k, modalities=modalities)

    async def ainvoke_media(
        self,
        media: MediaInput,
        config: Any = None,
        *,
        k: int | None = None,
        modalities: Collection[str] | None = None,
    ) -> list[Document]:
        """Async :meth:`invoke_media`."""
        return await self.ainvoke(_describe(media), config, media=media, k=k, modalities=modalities)


# --------------------------------------------------------------------------------------------
# Handing retrieved media to a chat model
# --------------------------------------------------------------------------------------------


def to_content_block(doc: Document, *, inline: bool = True) -> DataContentBlock:
    """A LangChain v1 content block for a retrieved media document.

    Images, audio and video become ``image``/``audio``/``video`` blocks; depth, thermal and
    IMU become ``file`` blocks with ``extras={"modality": ..., "filename": ...}``, the form
    ``ChatPandaGPT`` reads and other providers see as an opaque file. ``inline`` embeds the
    file as base64 (any chat model accepts it); ``inline=False`` gives a ``file://`` URL,
    which keeps traces small but only works with models that can read local files.
    """
    source = Path(doc.metadata["source"])
    modality = doc.metadata["modality"]
    mime_type = doc.metadata.get("mime_type") or guess_mime_type(source.name)
    data: dict[str, Any] = {"mime_type": mime_type}
    if inline:
        data["base64"] = base64.b64encode(source.read_bytes()).decode("ascii")
    else:
        data["url"] = source.resolve().as_uri()
    if modality == "image":
        return create_image_block(**data)
    if modality == "audio":
        return create_audio_block(**data)
    if modality == "video":
        return create_video_block(**data)
    return create_file_block(**data, modality=modality, filename=source.name)
