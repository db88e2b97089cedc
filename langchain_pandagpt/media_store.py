"""How :class:`~langchain_pandagpt.media_rag.MediaIndex` uses any LangChain ``VectorStore``,
and how it keeps its state on disk.

Vector stores embed ``page_content``, which for media is only a file name, so the vectors
computed from the media themselves must reach the store another way: directly for
``InMemoryVectorStore``, through ``add_embeddings`` where a store has it (FAISS, PGVector...),
and otherwise through :class:`ReplayEmbeddings`, an embeddings object that hands the store the
computed vectors when it embeds the documents being added (Chroma and the rest). Queries come
as vectors too; stores that only search by text (with scores) get the query vector the same
way.

The index's state (what it indexed, and the vectors of an ``InMemoryVectorStore``) is one
JSON file, replaced atomically and fsynced with its folder, so a crash leaves the previous
state or the new one, never a mix.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.load import load
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore

logger = logging.getLogger(__name__)

#: The state file in an index folder.
STATE_FILE: Final = "manifest.json"
#: The vectors file of the first format (manifest.json + vectors.json); read, never written.
_LEGACY_VECTORS: Final = "vectors.json"
STATE_FORMAT: Final = 2
#: Attributes where stores keep their embeddings object (checked when none holds one).
_EMBEDDING_SLOTS: Final = (
    "embedding",
    "embeddings",
    "embedding_function",
    "_embedding",
    "_embeddings",
    "_embedding_function",
)
_GET_CHUNK: Final = 512
#: The text handed to stores that search by text only, while the query vector is replayed.
_VECTOR_QUERY: Final = "<media query vector>"


class ReplayEmbeddings(Embeddings):
    """Embeddings that return vectors computed elsewhere, for stores that embed themselves.

    While :meth:`documents` is armed, ``embed_documents`` of exactly those texts returns the
    given vectors; while :meth:`query` is armed, ``embed_query`` returns the given vector.
    Everything else goes to the store's own embeddings (``inner``), so a store that has it
    swapped in keeps working for anyone else.
    """

    def __init__(self, inner: Embeddings | None) -> None:
        self.inner = inner
        self._texts: list[str] | None = None
        self._vectors: list[list[float]] = []
        self._query: list[float] | None = None
        self.replayed = False

    def _delegate(self) -> Embeddings:
        if self.inner is None:
            raise TypeError("this vector store has no embeddings of its own to embed text with")
        return self.inner

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self._texts is not None and list(texts) == self._texts:
            self.replayed = True
            return self._vectors
        return self._delegate().embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        if self._query is not None:
            self.replayed = True
            return self._query
        return self._delegate().embed_query(text)

    @contextmanager
    def documents(self, texts: list[str], vectors: list[list[float]]) -> Iterator[None]:
        self._texts, self._vectors, self.replayed = list(texts), vectors, False
        try:
            yield
        finally:
            self._texts, self._vectors = None, []

    @contextmanager
    def query(self, vector: list[float]) -> Iterator[None]:
        self._query, self.replayed = vector, False
        try:
            yield
        finally:
            self._query = None


@contextmanager
def replaying(store: VectorStore) -> Iterator[ReplayEmbeddings]:
    """Swaps a :class:`ReplayEmbeddings` in for the store's embeddings object for a while."""
    try:
        attributes = vars(store)
    except TypeError:
        attributes = {}
    slots = [name for name, value in attributes.items() if isinstance(value, Embeddings)]
    if not slots:
        slots = [name for name in _EMBEDDING_SLOTS if name in attributes]
    if not slots:
        raise TypeError(f"{type(store).__name__} keeps no embeddings object that can be replayed")
    originals = {name: attributes[name] for name in slots}
    replay = ReplayEmbeddings(next((v for v in originals.values() if v is not None), None))
    for name in slots:
        setattr(store, name, replay)
    try:
        yield replay
    finally:
        for name, value in originals.items():
            setattr(store, name, value)


def _cannot_store(store: VectorStore, why: str) -> TypeError:
    return TypeError(
        f"{type(store).__name__} cannot store precomputed vectors ({why}); use a store with "
        "add_embeddings() or one whose add_texts() embeds through its embeddings object "
        "(InMemoryVectorStore, FAISS, Chroma, PGVector...)"
    )


def add_vectors(
    store: VectorStore, documents: Sequence[Document], vectors: list[list[float]], ids: list[str]
) -> None:
    """Stores ``documents`` under ``ids`` with the given vectors (not their ``page_content``'s)."""
    metadatas = [dict(doc.metadata) for doc in documents]
    if isinstance(store, InMemoryVectorStore):
        for doc_id, doc, vector, metadata in zip(ids, documents, vectors, metadatas, strict=True):
            store.store[doc_id] = {
                "id": doc_id,
                "vector": vector,
                "text": doc.page_content,
                "metadata": metadata,
            }
        return
    add_embeddings: Callable[..., Any] | None = getattr(store, "add_embeddings", None)
    if callable(add_embeddings):
        pairs = [(doc.page_content, v) for doc, v in zip(documents, vectors, strict=True)]
        add_embeddings(pairs, metadatas=metadatas, ids=ids)
        return
    texts = [doc.page_content for doc in documents]
    with replaying(store) as replay, replay.documents(texts, vectors):
        try:
            store.add_texts(texts, metadatas=metadatas, ids=ids)
        except NotImplementedError as exc:
            raise _cannot_store(store, "no add_embeddings and no add_texts") from exc
        if not replay.replayed:
            raise _cannot_store(store, "its add_texts did not ask its embeddings for vectors")


def stored_documents(store: VectorStore, ids: Sequence[str]) -> dict[str, Document] | None:
    """The store's documents among ``ids``, by id; None if the store cannot look them up."""
    found: dict[str, Document] = {}
    for start in range(0, len(ids), _GET_CHUNK):
        try:
            docs = store.get_by_ids(list(ids[start : start + _GET_CHUNK]))
        except NotImplementedError:
            return None
        found.update({doc.id: doc for doc in docs if doc.id is not None})
    return found


def delete_ids(store: VectorStore, ids: list[str]) -> None:
    """Deletes ``ids`` from the store, tolerating ids it does not have (FAISS refuses those)."""
    if not ids:
        return
    try:
        store.delete(ids)
    except ValueError:
        present = stored_documents(store, ids)
        if present is None:
            raise
        if present:
            store.delete(list(present))


def scored_search(
    store: VectorStore,
    vector: list[float],
    k: int,
    where: Callable[[Document], bool] | None = None,
) -> list[tuple[Document, float | None]]:
    """The ``k`` nearest documents with the store's own score (``similarity_search_with_score``
    style: a similarity or a distance, as the store defines it; None if it gives none).

    ``where`` filters exactly, for ``InMemoryVectorStore`` only; callers filter the others.
    """
    if isinstance(store, InMemoryVectorStore):
        found = store.similarity_search_with_score_by_vector(vector, k=k, filter=where)
        return [(doc, float(score)) for doc, score in found]
    by_vector = getattr(store, "similarity_search_with_score_by_vector", None)
    if callable(by_vector):
        try:
            return [(doc, float(score)) for doc, score in by_vector(vector, k=k)]
        except NotImplementedError:
            pass
    try:
        with replaying(store) as replay, replay.query(vector):
            found = store.similarity_search_with_score(_VECTOR_QUERY, k=k)
            if replay.replayed:
                return [(doc, float(score)) for doc, score in found]
    except (NotImplementedError, TypeError):
        pass
    return [(doc, None) for doc in store.similarity_search_by_vector(vector, k=k)]


# --------------------------------------------------------------------------------------------
# The state file
# --------------------------------------------------------------------------------------------


def _encode_vector(vector: Sequence[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _decode_vector(text: str) -> list[float]:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").tolist()


def _rows_to_documents(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        doc_id: {
            "text": row["text"],
            "metadata": row["metadata"],
            "vector": _encode_vector(row["vector"]),
        }
        for doc_id, row in rows.items()
    }


def dump_documents(store: InMemoryVectorStore) -> dict[str, dict[str, Any]]:
    """The store's documents for the state file (vectors as base64 float32)."""
    return _rows_to_documents(store.store)


def load_documents(store: InMemoryVectorStore, documents: dict[str, dict[str, Any]]) -> None:
    for doc_id, row in documents.items():
        store.store[doc_id] = {
            "id": doc_id,
            "vector": _decode_vector(row["vector"]),
            "text": row["text"],
            "metadata": row["metadata"],
        }


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Replaces the state file with ``state``: written, fsynced, renamed, folder fsynced."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{STATE_FILE}.*.tmp"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{STATE_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({"format": STATE_FORMAT, **state}, file, default=str)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, folder / STATE_FILE)
        _fsync_folder(folder)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    (folder / _LEGACY_VECTORS).unlink(missing_ok=True)  # superseded by the state file


def read_state(folder: Path) -> dict[str, Any] | None:
    """The saved state in ``folder`` (None if there is none), the first format included."""
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / STATE_FILE}: unreadable index state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") not in (1, STATE_FORMAT):
        found = state.get("format") if isinstance(state, dict) else None
        raise ValueError(f"{folder}: unsupported index format {found!r}")
    if state["format"] == 1:  # manifest.json + vectors.json (InMemoryVectorStore.dump)
        legacy = folder / _LEGACY_VECTORS
        if legacy.is_file():
            rows = load(json.loads(legacy.read_text(encoding="utf-8")), allowed_objects=[Document])
            state["store"] = InMemoryVectorStore.__name__
            state["documents"] = _rows_to_documents(rows)
    return state
