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
        index.index_directory("~/holiday")  # later runs, in any process, encode only changes
        docs = index.as_retriever(k=4).invoke("a dog running on the beach")
        blocks = [to_content_block(doc) for doc in docs]  # doc.metadata["score"]: the store's
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

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
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media.detect import NPY_MIME_TYPE, guess_file_modality, guess_mime_type
from langchain_pandagpt.media_store import (
    STATE_FILE,
    add_vectors,
    delete_ids,
    dump_documents,
    load_documents,
    read_state,
    scored_search,
    stored_documents,
    write_state,
)

logger = logging.getLogger(__name__)

#: Where an index without a ``path`` keeps its state: inside the folder it indexes (hidden,
#: so indexing never picks it up), as ``pandagpt index DIR`` does.
DEFAULT_INDEX_DIRNAME: Final = ".pandagpt-index"
#: Embedded files between two saves of the index's state: a kill loses at most this much.
DEFAULT_SAVE_EVERY: Final = 100
OnError: TypeAlias = Literal["skip", "raise"]
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
class FailedFile:
    """A file that could not be indexed (unreadable, corrupt, not the media it claims)."""

    source: str
    reason: str


@dataclass(frozen=True)
class IndexStats:
    """What :meth:`MediaIndex.index_directory` did: files embedded, dropped, kept and failed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: tuple[FailedFile, ...] = ()


@dataclass
class _Record:
    """What the index knows of one indexed file, to detect changes without re-reading it."""

    id: str
    sha256: str | None
    size_bytes: int | None
    mtime: float | None


class MediaIndex:
    """A vector store of media embedded by their modality, kept in sync with folders.

    Documents (from :class:`MediaDirectoryLoader`) are embedded from the files their
    ``source`` and ``modality`` metadata name, via ``ImageBindEmbeddings.embed_media``, and
    the vectors go into ``vectorstore``: any LangChain ``VectorStore`` (default: an
    ``InMemoryVectorStore``; FAISS, Chroma, PGVector...). Text queries are embedded with
    ``embed_query``; results carry the store's score in ``metadata["score"]``.

    The index remembers each file's id, SHA-256, size and mtime, so :meth:`index_directory`
    re-encodes only new or changed files and drops deleted ones, also in a new process: the
    state lives in the folder ``path`` (default: ``.pandagpt-index`` inside the first folder
    indexed, where ``pandagpt index`` keeps it too), with the vectors when the store is the
    default in-memory one. It is saved every ``save_every`` embedded files, so a crash or a
    kill loses at most that much work. What the state claims is checked against the store when
    it is opened (``get_by_ids``), so a store that lost documents gets them re-encoded. Not
    safe for concurrent writers.
    """

    def __init__(
        self,
        embeddings: ImageBindEmbeddings,
        vectorstore: VectorStore | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        save_every: int = DEFAULT_SAVE_EVERY,
    ) -> None:
        """``path``: the folder of the index's state, opened if it holds one (checked against
        ``embeddings``' checkpoint and the store) and saved to as the index changes."""
        if save_every < 1:
            raise ValueError(f"save_every must be at least 1, got {save_every}")
        self.embeddings = embeddings
        self.vectorstore = (
            InMemoryVectorStore(embedding=embeddings) if vectorstore is None else vectorstore
        )
        self.save_every = save_every
        self.path: Path | None = None
        self._implicit_path = False  # chosen by index_directory, not by the user
        self._records: dict[str, _Record] = {}
        self._lock = threading.RLock()
        if path is not None:
            self._open(Path(path).expanduser())

    def __len__(self) -> int:
        return len(self._records)

    @property
    def sources(self) -> list[str]:
        """Absolute paths of the indexed files."""
        return sorted(self._records)

    # -- state --------------------------------------------------------------------------------

    def _open(self, folder: Path) -> None:
        """Binds the index to ``folder`` and merges the state saved there, if any."""
        self.path = folder
        state = read_state(folder)
        if state is None:
            return
        if state.get("model_fingerprint") != self.embeddings.model_fingerprint():
            raise ValueError(
                f"{folder}: built with another ImageBind checkpoint or dtype; use the same "
                "embeddings settings, or delete that folder to rebuild the index"
            )
        records = {s: _Record(**r) for s, r in state.get("records", {}).items()}
        documents = state.get("documents")
        if isinstance(self.vectorstore, InMemoryVectorStore) and documents is not None:
            load_documents(self.vectorstore, documents)
        present = stored_documents(self.vectorstore, [r.id for r in records.values()])
        if present is None and state.get("store") != type(self.vectorstore).__name__:
            present = {}  # another kind of store that cannot be checked: trust none of it
        if present is not None:
            lost = [s for s, r in records.items() if r.id not in present]
            for source in lost:
                del records[source]
            if lost:
                logger.info(
                    "%s: %d indexed files not in the store, to re-encode", folder, len(lost)
                )
        self._records.update(records)

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Writes the index's state to ``path`` (default: the folder it is bound to; an index
        without one is bound to ``path`` from now on). With the default
        ``InMemoryVectorStore`` the vectors go in too; other stores keep their own."""
        with self._lock:
            if path is None and self.path is None:
                raise ValueError("no path to save to: pass one, or create the index with path=")
            folder = Path(path).expanduser() if path is not None else self.path
            assert folder is not None
            self.path = self.path or folder
            state: dict[str, Any] = {
                "model_fingerprint": self.embeddings.model_fingerprint(),
                "store": type(self.vectorstore).__name__,
                "records": {source: asdict(r) for source, r in self._records.items()},
            }
            if isinstance(self.vectorstore, InMemoryVectorStore):
                state["documents"] = dump_documents(self.vectorstore)
            write_state(folder, state)
            return folder

    def _autosave(self) -> None:
        if self.path is None:
            return
        try:
            self.save()
        except OSError as exc:
            if not self._implicit_path:
                raise
            logger.warning(
                "%s: cannot save the index there (%s); it stays in memory only: pass "
                "MediaIndex(..., path=...) to keep it elsewhere",
                self.path,
                exc,
            )
            self.path, self._implicit_path = None, False

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embeddings: ImageBindEmbeddings,
        vectorstore: VectorStore | None = None,
        **kwargs: Any,
    ) -> MediaIndex:
        """Reopens an index saved in ``path`` (see :meth:`save`; ``kwargs`` as for the class).

        Raises ``ValueError`` when there is none, when ``embeddings`` uses another checkpoint
        than the one that built it (its vectors would not be comparable), or when it was built
        on another store and ``vectorstore`` is not given.
        """
        folder = Path(path).expanduser()
        state = read_state(folder)
        if state is None:
            raise ValueError(f"{folder}: no {STATE_FILE}; not a saved MediaIndex")
        if vectorstore is None and "documents" not in state:
            raise ValueError(f"{folder}: built on {state.get('store')}; pass the vectorstore")
        return cls(embeddings, vectorstore, path=folder, **kwargs)

    # -- adding and removing ------------------------------------------------------------------

    def add_documents(
        self,
        documents: Sequence[Document],
        *,
        show_progress: bool = False,
        on_error: OnError = "raise",
    ) -> list[str]:
        """Embed and store media documents (replacing earlier versions of the same files).

        Each document needs ``source`` (a path or URI) and ``modality`` metadata. Returns the
        ids stored, in input order. ``on_error="skip"`` logs and leaves out files that cannot
        be embedded instead of raising.
        """
        ids, _ = self._add(documents, on_error=on_error, show_progress=show_progress)
        self._autosave()
        return ids

    def _add(
        self, documents: Sequence[Document], *, on_error: OnError, show_progress: bool
    ) -> tuple[list[str], list[FailedFile]]:
        for doc in documents:
            missing = {"source", "modality"} - set(doc.metadata)
            if missing:
                raise ValueError(f"{doc.page_content!r}: metadata lacks {sorted(missing)}")
        vectors, failed = self._embed(documents, on_error=on_error, show_progress=show_progress)
        kept = [(doc, vector) for doc, vector in zip(documents, vectors, strict=True) if vector]
        ids = [doc.id or _document_id(doc.metadata["source"]) for doc, _ in kept]
        with self._lock:
            # Old versions go only once every new vector exists: a failure leaves them be.
            self.delete((doc.metadata["source"] for doc, _ in kept), save=False)
            known = {r.id for r in self._records.values()}
            present = stored_documents(self.vectorstore, [i for i in ids if i not in known])
            delete_ids(self.vectorstore, list(present or ()))  # left by a crash before a save
            if kept:
                add_vectors(self.vectorstore, [d for d, _ in kept], [v for _, v in kept], ids)
            for (doc, _), doc_id in zip(kept, ids, strict=True):
                meta = doc.metadata
                self._records[meta["source"]] = _Record(
                    doc_id, meta.get("sha256"), meta.get("size_bytes"), meta.get("mtime")
                )
        return ids, failed

    def _embed(
        self, documents: Sequence[Document], *, on_error: OnError, show_progress: bool
    ) -> tuple[list[list[float]], list[FailedFile]]:
        """One vector per document (empty for a failed one, with ``on_error="skip"``)."""
        vectors: list[list[float]] = [[] for _ in documents]
        failed: list[FailedFile] = []
        # Sorting by modality makes each slice one batch of one encoder tower.
        order = sorted(range(len(documents)), key=lambda i: documents[i].metadata["modality"])
        step = self.embeddings.batch_size
        with tqdm(
            total=len(order), desc="embedding", unit="file", disable=not show_progress
        ) as bar:
            for start in range(0, len(order), step):
                chunk = order[start : start + step]
                items = [_media_input(documents[i]) for i in chunk]
                try:
                    found = self.embeddings.embed_media(items)
                except _MEDIA_FAILURES:
                    if on_error == "raise":
                        raise
                    found = [self._embed_one(documents[i], failed) for i in chunk]
                for i, vector in zip(chunk, found, strict=True):
                    vectors[i] = vector
                bar.update(len(chunk))
        return vectors, failed

    def _embed_one(self, doc: Document, failed: list[FailedFile]) -> list[float]:
        """The vector of one document, or ``[]`` with the reason added to ``failed``."""
        try:
            return self.embeddings.embed_media([_media_input(doc)])[0]
        except _MEDIA_FAILURES as exc:
            failure = FailedFile(doc.metadata["source"], str(exc))
            logger.warning("%s: not indexed (%s)", failure.source, failure.reason)
            failed.append(failure)
            return []

    def delete(self, sources: Iterable[str], *, save: bool = True) -> None:
        """Remove files (by ``source``) from the index; unknown sources are ignored."""
        with self._lock:
            ids = [self._records.pop(s).id for s in sources if s in self._records]
            delete_ids(self.vectorstore, ids)
            if ids and save:
                self._autosave()

    def index_directory(
        self,
        path: str | os.PathLike[str],
        glob: str = "*",
        *,
        recursive: bool = True,
        modalities: Collection[str] | None = None,
        show_progress: bool = True,
        on_error: OnError = "skip",
    ) -> IndexStats:
        """Make the index's content under ``path`` match the folder, encoding only what changed.

        Files whose size and mtime match the index are skipped unread; files that were
        touched but kept their SHA-256 (or that the store already holds with that SHA-256) are
        not re-encoded; new and changed files are embedded, ``save_every`` at a time with the
        state saved after each group; indexed files under ``path`` that the loader no longer
        finds are removed. A file that cannot be read or decoded is logged and reported in
        :attr:`IndexStats.failed` (``on_error="raise"`` stops at it instead, keeping what was
        saved). An index without a ``path`` is bound to ``path/.pandagpt-index`` first.
        """
        loader = MediaDirectoryLoader(
            path, glob, recursive=recursive, modalities=modalities, show_progress=False
        )
        if self.path is None:
            self._open(loader.path / DEFAULT_INDEX_DIRNAME)
            self._implicit_path = True
        found = loader.paths()
        current = {os.fspath(file) for file, _ in found}
        removed = [
            s for s in self._records if Path(s).is_relative_to(loader.path) and s not in current
        ]
        self.delete(removed)
        to_embed, unchanged, failed = self._scan(loader, found, on_error, show_progress)
        added = updated = 0
        with tqdm(
            total=len(to_embed), desc="embedding", unit="file", disable=not show_progress
        ) as bar:
            for start in range(0, len(to_embed), self.save_every):
                group = to_embed[start : start + self.save_every]
                sources = {doc.metadata["source"] for doc in group}
                known = sources & set(self._records)
                _, group_failed = self._add(group, on_error=on_error, show_progress=False)
                failed += group_failed
                self._autosave()
                bar.update(len(group))
                done = sources - {failure.source for failure in group_failed}
                updated += len(done & known)
                added += len(done - known)
        if not to_embed:
            self._autosave()  # touched files: their new mtimes
        return IndexStats(added, updated, len(removed), unchanged, tuple(failed))

    def _scan(
        self,
        loader: MediaDirectoryLoader,
        found: list[tuple[Path, str]],
        on_error: OnError,
        show_progress: bool,
    ) -> tuple[list[Document], int, list[FailedFile]]:
        """The documents to embed, the number of unchanged files, and unreadable ones."""
        unchanged, candidates, failed = 0, [], []
        for file, modality in tqdm(found, desc="scanning", unit="file", disable=not show_progress):
            record = self._records.get(os.fspath(file))
            try:
                stat = file.stat()
                if record and (record.size_bytes, record.mtime) == (stat.st_size, stat.st_mtime):
                    unchanged += 1
                    continue
                doc = loader.load_file(file, modality)
            except (OSError, ValueError) as exc:
                if on_error == "raise":
                    raise
                failed.append(FailedFile(os.fspath(file), f"cannot be read: {exc}"))
                logger.warning("%s: not indexed (%s)", file, failed[-1].reason)
                continue
            if record and record.sha256 == doc.metadata["sha256"]:
                record.size_bytes, record.mtime = stat.st_size, stat.st_mtime
                unchanged += 1
                continue
            candidates.append(doc)
        # Files the store already holds in this version (saved before a crash lost the state).
        new = [doc for doc in candidates if doc.metadata["source"] not in self._records]
        present = stored_documents(self.vectorstore, [doc.id or "" for doc in new]) or {}
        to_embed = []
        for doc in candidates:
            stored = present.get(doc.id or "")
            if stored is not None and stored.metadata.get("sha256") == doc.metadata["sha256"]:
                meta = doc.metadata
                self._records[meta["source"]] = _Record(
                    stored.id or "", meta["sha256"], meta["size_bytes"], meta["mtime"]
                )
                unchanged += 1
            else:
                to_embed.append(doc)
        return to_embed, unchanged, failed

    # -- search -------------------------------------------------------------------------------

    def search_with_scores(
        self, vector: list[float], k: int = 4, *, modalities: Collection[str] | None = None
    ) -> list[tuple[Document, float | None]]:
        """The ``k`` nearest documents and the store's score of each, optionally only of some
        modalities. The score is the store's ``similarity_search_with_score`` value: cosine
        similarity for ``InMemoryVectorStore`` (higher is closer), a distance for FAISS and
        Chroma by default (lower is closer).

        ``InMemoryVectorStore`` filters exactly; other stores are searched with a growing
        ``k`` until ``k`` documents of the wanted modalities are found or the store runs out.
        """
        wanted = frozenset(modalities or ())
        store = self.vectorstore
        if isinstance(store, InMemoryVectorStore) or not wanted:
            where = (lambda doc: doc.metadata.get("modality") in wanted) if wanted else None
            with self._lock:
                return scored_search(store, vector, k, where)
        fetch = 4 * k
        while True:
            with self._lock:
                found = scored_search(store, vector, fetch)
            kept = [(doc, s) for doc, s in found if doc.metadata.get("modality") in wanted]
            if len(kept) >= k or len(found) < fetch:
                return kept[:k]
            fetch *= 4

    def search_by_vector(
        self, vector: list[float], k: int = 4, *, modalities: Collection[str] | None = None
    ) -> list[Document]:
        """As :meth:`search_with_scores`, with each score in a copy's ``metadata["score"]``."""
        return [
            _with_score(doc, score)
            for doc, score in self.search_with_scores(vector, k, modalities=modalities)
        ]

    def as_retriever(self, **kwargs: Any) -> MediaRetriever:
        """A :class:`MediaRetriever` over this index (``k``, ``modalities``)."""
        return MediaRetriever(index=self, **kwargs)


_MEDIA_FAILURES: Final = (MediaError, OSError, ValueError)


def _media_input(doc: Document) -> MediaInput:
    return (doc.metadata["source"], doc.metadata["modality"])


def _with_score(doc: Document, score: float | None) -> Document:
    metadata = dict(doc.metadata)
    if score is not None:
        metadata["score"] = score
    return Document(id=doc.id, page_content=doc.page_content, metadata=metadata)


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
