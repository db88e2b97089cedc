"""Media RAG: folder loader metadata, indexing, text and media retrieval, persistence,
incremental re-indexing, content blocks, and the LangChain retriever suite."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests
from media_files import (
    make_tiny_checkpoint,
    write_depth,
    write_image,
    write_imu,
    write_mp4,
    write_wav,
)

from langchain_pandagpt.conversation import MEDIA_MODALITIES
from langchain_pandagpt.embeddings import ImageBindEmbeddings
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import ImageBindModel
from langchain_pandagpt.media_rag import (
    DEFAULT_INDEX_DIRNAME,
    IndexStats,
    MediaDirectoryLoader,
    MediaIndex,
    MediaRetriever,
    to_content_block,
)


def make_folder(root: Path) -> Path:
    """Nine media files of six modalities (one in a subfolder) plus files the loader skips."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "clips").mkdir()
    write_image(root / "cat.png", 0)
    write_image(root / "dog.jpg", 1, size=(60, 90))
    write_image(root / "night.thermal.png", 2)
    write_wav(root / "bark.wav", 3)
    write_wav(root / "meow.wav", 4, seconds=0.5)
    write_mp4(root / "clips" / "walk.mp4", 5)
    write_imu(root / "steps.imu.npy", 6)
    write_imu(root / "run.npy", 7)
    write_depth(root / "room.npy", 8)
    (root / "notes.txt").write_text("not media")
    write_image(root / ".hidden.png", 9)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ib") / "tiny.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("library") / "media")


@pytest.fixture(scope="module")
def embeddings(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> ImageBindEmbeddings:
    """With a disk cache: media queries and re-indexing of known files skip the encoder."""
    cache = tmp_path_factory.mktemp("vectors")
    return ImageBindEmbeddings(
        checkpoint=tiny_checkpoint, device="cpu", batch_size=4, cache_dir=cache
    )


@pytest.fixture(scope="module")
def index(embeddings: ImageBindEmbeddings, folder: Path) -> MediaIndex:
    built = MediaIndex(embeddings)
    built.index_directory(folder, show_progress=False)
    return built


@pytest.fixture
def encoder_items(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of items of every ImageBind forward pass."""
    sizes: list[int] = []
    original = ImageBindModel.encode

    def counting(self: ImageBindModel, modality: str, value: torch.Tensor, **kw: Any) -> Any:
        sizes.append(value.shape[0])
        return original(self, modality, value, **kw)

    monkeypatch.setattr(ImageBindModel, "encode", counting)
    return sizes


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------


def test_loader_metadata(folder: Path) -> None:
    docs = {doc.page_content: doc for doc in MediaDirectoryLoader(folder).lazy_load()}
    assert sorted(docs) == [
        "bark.wav",
        "cat.png",
        "clips/walk.mp4",
        "dog.jpg",
        "meow.wav",
        "night.thermal.png",
        "room.npy",
        "run.npy",
        "steps.imu.npy",
    ]
    expected = {
        "bark.wav": ("audio", "audio/wav"),
        "cat.png": ("image", "image/png"),
        "clips/walk.mp4": ("video", "video/mp4"),
        "dog.jpg": ("image", "image/jpeg"),
        "night.thermal.png": ("thermal", "image/png"),
        "room.npy": ("depth", "application/x-npy"),
        "run.npy": ("imu", "application/x-npy"),
        "steps.imu.npy": ("imu", "application/x-npy"),
    }
    for name, (modality, mime_type) in expected.items():
        meta = docs[name].metadata
        path = folder / name
        assert (meta["modality"], meta["mime_type"]) == (modality, mime_type)
        assert meta["source"] == str(path.resolve())
        assert meta["size_bytes"] == path.stat().st_size
        assert meta["mtime"] == path.stat().st_mtime
        assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert all(isinstance(v, str | int | float) for v in meta.values()), meta
    assert docs["dog.jpg"].metadata.items() >= {"width": 60, "height": 90}.items()
    assert docs["cat.png"].metadata["width"] == 80
    assert docs["bark.wav"].metadata["duration_s"] == pytest.approx(1.0)
    assert docs["meow.wav"].metadata["duration_s"] == pytest.approx(0.5)
    video = docs["clips/walk.mp4"].metadata
    assert (video["width"], video["height"]) == (64, 48)
    assert video["duration_s"] == pytest.approx(1.0, abs=0.15)
    assert (docs["room.npy"].metadata["height"], docs["room.npy"].metadata["width"]) == (48, 64)
    assert "duration_s" not in docs["run.npy"].metadata
    # Ids are stable per file, so re-indexing replaces instead of duplicating.
    again = MediaDirectoryLoader(folder, show_progress=False).load()
    assert {d.id for d in again} == {d.id for d in docs.values()}


def test_loader_filters(folder: Path) -> None:
    flat = MediaDirectoryLoader(folder, recursive=False, show_progress=False).load()
    assert "clips/walk.mp4" not in {d.page_content for d in flat}
    pngs = MediaDirectoryLoader(folder, "*.png", show_progress=False).load()
    assert sorted(d.page_content for d in pngs) == ["cat.png", "night.thermal.png"]
    sounds = MediaDirectoryLoader(folder, modalities=["audio", "video"], show_progress=False)
    assert sorted(d.metadata["modality"] for d in sounds.load()) == ["audio", "audio", "video"]
    with pytest.raises(ValueError, match="unknown modalities"):
        MediaDirectoryLoader(folder, modalities=["smell"])
    with pytest.raises(ValueError, match="not a directory"):
        MediaDirectoryLoader(folder / "cat.png")


# --------------------------------------------------------------------------------------------
# Indexing and retrieval
# --------------------------------------------------------------------------------------------


def test_text_query(index: MediaIndex) -> None:
    retriever = index.as_retriever(k=3)
    docs = retriever.invoke("a dog barking")
    assert len(docs) == 3
    assert all(isinstance(doc, Document) for doc in docs)
    audio = retriever.invoke("a dog barking", k=5, modalities=["audio"])
    assert [doc.metadata["modality"] for doc in audio] == ["audio", "audio"]


def test_media_query_finds_itself(index: MediaIndex, folder: Path) -> None:
    retriever = MediaRetriever(index=index, k=2)
    for name in ("cat.png", "bark.wav", "clips/walk.mp4", "room.npy", "steps.imu.npy"):
        top = retriever.invoke_media(folder / name)
        assert top[0].metadata["source"] == str((folder / name).resolve())
    image_only = retriever.invoke_media(folder / "bark.wav", modalities=["image"])
    assert {doc.metadata["modality"] for doc in image_only} == {"image"}


@pytest.mark.asyncio
async def test_async_media_query(index: MediaIndex, folder: Path) -> None:
    retriever = index.as_retriever(k=1)
    docs = await retriever.ainvoke_media((str(folder / "dog.jpg"), "image"))
    assert docs[0].page_content == "dog.jpg"
    assert len(await retriever.ainvoke("a cat", k=2)) == 2


def test_media_embedded_by_modality_not_page_content(
    index: MediaIndex, embeddings: ImageBindEmbeddings, folder: Path
) -> None:
    assert isinstance(index.vectorstore, VectorStore)
    doc_id = MediaDirectoryLoader(folder).load_file(folder / "cat.png").id
    assert doc_id is not None
    stored = index.vectorstore.store[doc_id]  # type: ignore[attr-defined]
    np.testing.assert_allclose(
        stored["vector"], embeddings.embed_image([folder / "cat.png"])[0], atol=1e-6
    )
    assert not np.allclose(stored["vector"], embeddings.embed_query("cat.png"), atol=1e-3)


def test_save_and_load_round_trip(
    index: MediaIndex, embeddings: ImageBindEmbeddings, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    index.save(tmp_path / "saved")  # one file: the records and the vectors cannot disagree
    assert [p.name for p in (tmp_path / "saved").iterdir()] == ["manifest.json"]
    loaded = MediaIndex.load(tmp_path / "saved", embeddings)
    assert loaded.sources == index.sources
    query = embeddings.embed_query("a cat on a sofa")
    before = index.search_by_vector(query, 5)
    after = loaded.search_by_vector(query, 5)
    assert [d.id for d in after] == [d.id for d in before]
    assert [d.metadata for d in after] == [d.metadata for d in before]
    assert all(isinstance(d.metadata["score"], float) for d in after)
    other = tmp_path / "other.safetensors"
    shutil.copy(tiny_checkpoint, other)
    with other.open("ab") as handle:  # same weights file plus a byte: another fingerprint
        handle.write(b"\0")
    with pytest.raises(ValueError, match="another ImageBind checkpoint"):
        MediaIndex.load(tmp_path / "saved", ImageBindEmbeddings(checkpoint=other))
    with pytest.raises(ValueError, match="not a saved MediaIndex"):
        MediaIndex.load(tmp_path, embeddings)


def test_incremental_reindex_encodes_only_changes(
    tiny_checkpoint: Path, tmp_path: Path, encoder_items: list[int]
) -> None:
    embeddings = ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu")  # no disk cache
    folder = make_folder(tmp_path / "media")
    index = MediaIndex(embeddings)
    assert index.index_directory(folder, show_progress=False) == IndexStats(added=9)
    assert sum(encoder_items) == 9
    assert len(index) == 9

    encoder_items.clear()
    assert index.index_directory(folder, show_progress=False) == IndexStats(unchanged=9)
    assert encoder_items == []

    write_image(folder / "cat.png", seed=42)  # changed content
    write_wav(folder / "new.wav", seed=43)  # new file
    (folder / "room.npy").unlink()  # deleted
    stat = (folder / "dog.jpg").stat()  # touched, same content
    os.utime(folder / "dog.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    stats = index.index_directory(folder, show_progress=False)
    assert stats == IndexStats(added=1, updated=1, removed=1, unchanged=7)
    assert sum(encoder_items) == 2
    assert len(index) == 9
    assert str((folder / "room.npy").resolve()) not in index.sources

    # The index saved itself next to the media as it went: a new index (as in a new process)
    # encodes nothing, without anyone calling save().
    assert (folder / DEFAULT_INDEX_DIRNAME / "manifest.json").is_file()
    encoder_items.clear()
    reopened = MediaIndex(embeddings)
    assert reopened.index_directory(folder, show_progress=False) == IndexStats(unchanged=9)
    assert encoder_items == []
    top = reopened.as_retriever(k=1).invoke_media(folder / "cat.png")
    assert top[0].page_content == "cat.png"
    index.save(tmp_path / "saved")
    assert MediaIndex.load(tmp_path / "saved", embeddings).sources == reopened.sources


def test_documents_need_source_and_modality(index: MediaIndex) -> None:
    with pytest.raises(ValueError, match="metadata lacks"):
        index.add_documents([Document(page_content="x", metadata={"source": "x.png"})])


class _ListStore(VectorStore):
    """A minimal third-party-style store with ``add_embeddings`` and no callable filter."""

    def __init__(self, embedding: Embeddings) -> None:
        self.rows: dict[str, tuple[Document, np.ndarray]] = {}
        self._embedding = embedding

    def add_embeddings(
        self,
        text_embeddings: Iterable[tuple[str, list[float]]],
        metadatas: list[dict[str, Any]],
        ids: list[str],
    ) -> list[str]:
        for (text, vector), metadata, doc_id in zip(text_embeddings, metadatas, ids, strict=True):
            doc = Document(page_content=text, metadata=metadata, id=doc_id)
            self.rows[doc_id] = (doc, np.asarray(vector))
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        for doc_id in ids or []:
            self.rows.pop(doc_id, None)
        return True

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        ranked = sorted(self.rows.values(), key=lambda row: -float(row[1] @ np.asarray(embedding)))
        return [doc for doc, _ in ranked[:k]]

    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> list[str]:
        raise NotImplementedError

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return self.similarity_search_by_vector(self._embedding.embed_query(query), k)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> _ListStore:
        raise NotImplementedError


def test_a_store_with_add_embeddings_and_no_scores(
    embeddings: ImageBindEmbeddings, folder: Path, tmp_path: Path
) -> None:
    store = _ListStore(embeddings)
    index = MediaIndex(embeddings, store, path=tmp_path / "list")
    index.index_directory(folder, show_progress=False)
    assert len(store.rows) == 9
    docs = index.as_retriever(k=2, modalities=["video"]).invoke("people walking")
    assert [doc.page_content for doc in docs] == ["clips/walk.mp4"]
    assert "score" not in docs[0].metadata  # this store gives none
    with pytest.raises(ValueError, match="pass the vectorstore"):
        MediaIndex.load(tmp_path / "list", embeddings)

    class NoVectors(_ListStore):
        add_embeddings = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="cannot store precomputed vectors"):
        MediaIndex(embeddings, NoVectors(embeddings), path=tmp_path / "none").index_directory(
            folder, show_progress=False
        )


# --------------------------------------------------------------------------------------------
# Faults: corrupt files, kills, crashes while saving
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_embeddings(tiny_checkpoint: Path) -> ImageBindEmbeddings:
    """No disk cache: every file embedded reaches the encoder (and ``encoder_items``)."""
    return ImageBindEmbeddings(checkpoint=tiny_checkpoint, device="cpu", batch_size=4)


def test_corrupt_files_are_reported_and_skipped(
    fresh_embeddings: ImageBindEmbeddings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path / "media")
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "cut.wav").write_bytes((folder / "bark.wav").read_bytes()[:60])
    (folder / "clips" / "noise.mp4").write_bytes(bytes(range(256)) * 8)
    index = MediaIndex(fresh_embeddings, path=tmp_path / "idx", save_every=4)
    with caplog.at_level("WARNING", logger="langchain_pandagpt.media_rag"):
        stats = index.index_directory(folder, show_progress=False)
    assert (stats.added, stats.unchanged, len(index)) == (9, 0, 9)
    failed = {Path(f.source).name: f.reason for f in stats.failed}
    assert sorted(failed) == ["broken.png", "cut.wav", "noise.mp4"]
    assert "not an image" in failed["broken.png"] and "too short" in failed["cut.wav"]
    assert "cannot be decoded as video" in failed["noise.mp4"]
    assert caplog.text.count("not indexed") == 3
    again = MediaIndex(fresh_embeddings, path=tmp_path / "idx").index_directory(
        folder, show_progress=False
    )
    assert (again.unchanged, len(again.failed)) == (9, 3)  # still broken: still reported

    with pytest.raises(MediaError, match=r"broken\.png|cut\.wav|noise\.mp4"):
        MediaIndex(fresh_embeddings, path=tmp_path / "strict").index_directory(
            folder, on_error="raise", show_progress=False
        )
    with pytest.raises(MediaError, match=r"cut\.wav"):
        index.add_documents([MediaDirectoryLoader(folder).load_file(folder / "cut.wav")])
    skipped = index.add_documents(
        [MediaDirectoryLoader(folder).load_file(folder / n) for n in ("cut.wav", "cat.png")],
        on_error="skip",
    )
    assert len(skipped) == 1


def test_a_killed_run_loses_at_most_save_every_files(
    fresh_embeddings: ImageBindEmbeddings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    encoder_items: list[int],
) -> None:
    folder = make_folder(tmp_path / "media")
    embedded = 0
    original = ImageBindEmbeddings.embed_media

    def dying(self: ImageBindEmbeddings, items: Sequence[Any]) -> list[list[float]]:
        nonlocal embedded
        embedded += len(items)
        if embedded > 5:  # Ctrl-C (or a kill) in the third group of two
            raise KeyboardInterrupt
        return original(self, items)

    with monkeypatch.context() as patch:
        patch.setattr(ImageBindEmbeddings, "embed_media", dying)
        with pytest.raises(KeyboardInterrupt):
            MediaIndex(fresh_embeddings, save_every=2).index_directory(folder, show_progress=False)
    resumed = MediaIndex(fresh_embeddings)  # as a new process would
    encoder_items.clear()
    assert resumed.index_directory(folder, show_progress=False) == IndexStats(added=5, unchanged=4)
    assert sum(encoder_items) == 5

    def crash(*args: object) -> None:  # the power goes while the state file is replaced
        raise KeyboardInterrupt

    write_image(folder / "cat.png", seed=42)
    with monkeypatch.context() as patch:
        patch.setattr("langchain_pandagpt.media_store.os.replace", crash)
        with pytest.raises(KeyboardInterrupt):
            resumed.index_directory(folder, show_progress=False)
    state = folder / DEFAULT_INDEX_DIRNAME
    assert [p.name for p in state.iterdir()] == ["manifest.json"]  # no torn or stray file
    reopened = MediaIndex(fresh_embeddings, path=state)
    assert len(reopened) == 9 and len(reopened.vectorstore.store) == 9  # type: ignore[attr-defined]
    assert reopened.index_directory(folder, show_progress=False) == IndexStats(
        updated=1, unchanged=8
    )


def test_a_read_only_media_folder_keeps_the_index_in_memory(
    fresh_embeddings: ImageBindEmbeddings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the default location may fail quietly; a path the user chose must be writable."""
    folder = make_folder(tmp_path / "media")

    def refused(folder: Path, state: object) -> None:  # root ignores chmod: simulate it
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr("langchain_pandagpt.media_rag.write_state", refused)
    index = MediaIndex(fresh_embeddings, save_every=4)
    with caplog.at_level("WARNING", logger="langchain_pandagpt.media_rag"):
        assert index.index_directory(folder, show_progress=False) == IndexStats(added=9)
    assert "cannot save the index there" in caplog.text and index.path is None
    assert len(index.as_retriever(k=2).invoke("a cat")) == 2
    with pytest.raises(PermissionError):
        MediaIndex(fresh_embeddings, path=tmp_path / "chosen").index_directory(
            folder, show_progress=False
        )


KILLED_CHILD = """
import os, signal, sys
from langchain_pandagpt.embeddings import ImageBindEmbeddings
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt import media_store
from langchain_pandagpt.media_rag import MediaIndex

replace, saves = os.replace, []
def dies_on_third_save(source, target):
    saves.append(target)
    if len(saves) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a power cut
    replace(source, target)
media_store.os.replace = dies_on_third_save
embeddings = ImageBindEmbeddings(checkpoint=sys.argv[1], device="cpu", batch_size=2)
MediaIndex(embeddings, save_every=2).index_directory(sys.argv[2], show_progress=False)
"""


@pytest.mark.slow
def test_sigkill_while_saving_leaves_the_last_saved_state(
    fresh_embeddings: ImageBindEmbeddings, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "media")
    child = [sys.executable, "-c", KILLED_CHILD, str(tiny_checkpoint), str(folder)]
    done = subprocess.run(child, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    state = folder / DEFAULT_INDEX_DIRNAME
    index = MediaIndex(fresh_embeddings, path=state)
    assert len(index) == 4  # two saves of two files made it; the third never replaced them
    assert index.index_directory(folder, show_progress=False) == IndexStats(added=5, unchanged=4)
    assert [p.name for p in state.iterdir()] == ["manifest.json"]  # the killed one's temp: gone


# --------------------------------------------------------------------------------------------
# Real vector stores: in-memory, FAISS, Chroma
# --------------------------------------------------------------------------------------------


def _faiss(embeddings: ImageBindEmbeddings) -> VectorStore:
    faiss = pytest.importorskip("faiss")
    community = pytest.importorskip("langchain_community.vectorstores")
    from langchain_community.docstore.in_memory import InMemoryDocstore

    dimension = len(embeddings.embed_query("x"))
    return community.FAISS(embeddings, faiss.IndexFlatL2(dimension), InMemoryDocstore(), {})


def _chroma(embeddings: ImageBindEmbeddings, directory: Path) -> VectorStore:
    chromadb = pytest.importorskip("chromadb")
    from langchain_chroma import Chroma

    return Chroma(
        collection_name="media",
        embedding_function=embeddings,
        persist_directory=str(directory),
        client_settings=chromadb.config.Settings(anonymized_telemetry=False),
    )


def _count(store: VectorStore) -> int:
    if hasattr(store, "index_to_docstore_id"):
        return len(store.index_to_docstore_id)
    if hasattr(store, "_collection"):
        return int(store._collection.count())
    return len(store.store)  # type: ignore[attr-defined]


def _reopened(kind: str, store: VectorStore, embeddings: Any, tmp_path: Path) -> Any:
    """The same store as a new process would open it (None: the index's own state has it)."""
    if kind == "in-memory":
        return None
    if kind == "faiss":
        from langchain_community.vectorstores import FAISS

        store.save_local(str(tmp_path / "faiss"))  # type: ignore[attr-defined]
        return FAISS.load_local(
            str(tmp_path / "faiss"), embeddings, allow_dangerous_deserialization=True
        )
    return _chroma(embeddings, tmp_path / "chroma")


@pytest.mark.parametrize("kind", ["in-memory", "faiss", "chroma"])
def test_real_vector_stores(
    kind: str, fresh_embeddings: ImageBindEmbeddings, tmp_path: Path, encoder_items: list[int]
) -> None:
    folder = make_folder(tmp_path / "media")
    store = {
        "in-memory": lambda: None,
        "faiss": lambda: _faiss(fresh_embeddings),
        "chroma": lambda: _chroma(fresh_embeddings, tmp_path / "chroma"),
    }[kind]()
    encoder_items.clear()  # FAISS asked for the vector size
    index = MediaIndex(fresh_embeddings, store, path=tmp_path / "idx")
    assert index.index_directory(folder, show_progress=False) == IndexStats(added=9)
    assert sum(encoder_items) == 9 and _count(index.vectorstore) == 9

    retriever = index.as_retriever(k=3)
    for name in ("cat.png", "bark.wav", "clips/walk.mp4", "steps.imu.npy"):
        top = retriever.invoke_media(folder / name)
        assert top[0].metadata["source"] == str((folder / name).resolve()), kind
        scores = [doc.metadata["score"] for doc in top]
        assert scores == sorted(scores, reverse=kind == "in-memory"), scores  # best first
    audio = retriever.invoke("a dog barking", k=5, modalities=["audio"])
    assert [doc.metadata["modality"] for doc in audio] == ["audio", "audio"]
    assert all(isinstance(doc.metadata["score"], float) for doc in audio)

    encoder_items.clear()
    again = MediaIndex(fresh_embeddings, _reopened(kind, store, fresh_embeddings, tmp_path),
                       path=tmp_path / "idx")  # fmt: skip
    assert again.index_directory(folder, show_progress=False) == IndexStats(unchanged=9)
    assert encoder_items == []
    write_image(folder / "cat.png", seed=42)
    assert again.index_directory(folder, show_progress=False) == IndexStats(updated=1, unchanged=8)
    assert _count(again.vectorstore) == 9  # replaced, not added
    top = again.as_retriever(k=1).invoke_media(folder / "cat.png")[0]
    assert top.page_content == "cat.png"


def test_a_store_that_lost_its_documents_gets_them_again(
    fresh_embeddings: ImageBindEmbeddings, tmp_path: Path, encoder_items: list[int]
) -> None:
    """The saved state is checked against the store: an empty one is filled, not trusted."""
    folder = make_folder(tmp_path / "media")
    MediaIndex(fresh_embeddings, _faiss(fresh_embeddings), path=tmp_path / "idx").index_directory(
        folder, show_progress=False
    )
    store = _faiss(fresh_embeddings)  # empty, as a new process's unsaved FAISS would be
    encoder_items.clear()
    empty = MediaIndex(fresh_embeddings, store, path=tmp_path / "idx")
    assert len(empty) == 0
    assert empty.index_directory(folder, show_progress=False) == IndexStats(added=9)
    assert sum(encoder_items) == 9


def test_cli_index_summary_and_search_scores(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from langchain_pandagpt.cli import app

    folder = make_folder(tmp_path / "media")
    (folder / "broken.png").write_bytes(b"not a png at all")
    monkeypatch.setenv("PANDAGPT_BUNDLE", str(tiny_bundle))
    runner = CliRunner()
    indexed = runner.invoke(app, ["index", str(folder)])
    assert indexed.exit_code == 0, indexed.output
    assert "9 files indexed" in indexed.output and "failed 1)" in indexed.output
    assert f"skipped {folder / 'broken.png'}: " in " ".join(indexed.output.split())
    found = runner.invoke(app, ["search", "a cat", "--index", str(folder), "-k", "2", "--json"])
    assert found.exit_code == 0, found.output
    results = json.loads(found.output)
    assert len(results) == 2 and results[0]["score"] >= results[1]["score"]
    table = runner.invoke(app, ["search", "a cat", "--index", str(folder), "-k", "2"])
    assert "score" in table.output and f"{results[0]['score']:.4f}" in table.output


# --------------------------------------------------------------------------------------------
# Content blocks
# --------------------------------------------------------------------------------------------


def test_to_content_block(index: MediaIndex, folder: Path) -> None:
    loader = MediaDirectoryLoader(folder)
    image = to_content_block(loader.load_file(folder / "cat.png"))
    assert (image["type"], image["mime_type"]) == ("image", "image/png")
    assert base64.b64decode(image["base64"]) == (folder / "cat.png").read_bytes()
    assert to_content_block(loader.load_file(folder / "bark.wav"))["type"] == "audio"
    video = to_content_block(loader.load_file(folder / "clips/walk.mp4"), inline=False)
    assert video["type"] == "video"
    assert video["url"] == (folder / "clips/walk.mp4").resolve().as_uri()
    imu = to_content_block(loader.load_file(folder / "steps.imu.npy"))
    assert (imu["type"], imu["mime_type"]) == ("file", "application/x-npy")
    assert imu["extras"] == {"modality": "imu", "filename": "steps.imu.npy"}
    thermal = to_content_block(loader.load_file(folder / "night.thermal.png"))
    assert thermal["extras"]["modality"] == "thermal"
    # Blocks go back into the embeddings unchanged: a retrieved item can query again.
    blocks = [imu, thermal, video]
    assert index.as_retriever(k=1).invoke_media(thermal)[0].page_content == "night.thermal.png"
    vectors = index.embeddings.embed_media(blocks)
    expected = index.embeddings.embed_media(
        [folder / "steps.imu.npy", folder / "night.thermal.png", folder / "clips/walk.mp4"]
    )
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# LangChain standard retriever suite
# --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")
class TestMediaRetrieverStandard(RetrieversIntegrationTests):
    media_index: MediaIndex

    @pytest.fixture(autouse=True)
    def _index(self, request: pytest.FixtureRequest, index: MediaIndex) -> None:
        request.cls.media_index = index

    @property
    def retriever_constructor(self) -> type[MediaRetriever]:
        return MediaRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"index": self.media_index, "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return "a cat sleeping in the sun"


def test_the_readme_media_rag_snippet_runs_as_written(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The README block, on the tiny bundle ($PANDAGPT_BUNDLE) and a folder named as in it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    (snippet,) = [block for block in blocks if "index_directory(" in block]
    make_folder(tmp_path / "holiday")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PANDAGPT_BUNDLE", str(tiny_bundle))
    for _ in range(2):  # the second run, as a later process would, encodes nothing
        exec(compile(snippet, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    first, results, again = lines[0], lines[1:5], lines[5]
    assert first == "9 files added; 0 unreadable ones skipped" and len(results) == 4
    assert again == "0 files added; 0 unreadable ones skipped"
    score, source, modality = results[0].split()
    assert float(score) and Path(source).is_file() and modality in MEDIA_MODALITIES
