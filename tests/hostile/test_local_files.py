"""Item 13: in-process local files.

Before: ``ChatPandaGPT()`` and ``ImageBindEmbeddings()`` read any local path, including
``/proc``, devices and FIFOs (``/dev/zero`` or a FIFO hung the caller for good), and "file not
found" vs "not an image" told whether a file exists. Now: regular files only, an optional
``media_root`` confining them with one answer for everything outside, and ``file://`` URLs
still work.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from media_files import write_image

from langchain_pandagpt.chat_models import ChatPandaGPT
from langchain_pandagpt.embeddings import ImageBindEmbeddings
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.sources import DEFAULT_MAX_BYTES
from langchain_pandagpt.imagebind.vision import load_and_transform_vision_data
from langchain_pandagpt.media import MediaItem, MediaPolicy, resolve_location
from langchain_pandagpt.media.loaders import load_batch

LOCAL = MediaPolicy()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.timeout(10)
def test_fifos_and_devices_are_refused_without_blocking(fifo: Path, tmp_path: Path) -> None:
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    for path in (fifo, Path("/dev/zero"), link, Path("/dev/null")):
        with pytest.raises(MediaError, match="is not a regular file"):
            resolve_location(str(path), LOCAL)
        with pytest.raises(MediaError, match="is not a regular file"):
            load_and_transform_vision_data([path])
        with pytest.raises(MediaError, match="cannot be read: is not a regular file"):
            MediaItem("image", str(path)).content_hash()


@pytest.mark.parametrize("path", ["/proc/self/environ", "/proc/self/status", "/sys/kernel/mm"])
def test_pseudo_files_are_refused(path: str, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="is not a regular file"):
        resolve_location(path, LOCAL)
    link = tmp_path / "innocent.png"
    link.symlink_to(path)
    with pytest.raises(MediaError, match="is not a regular file"):
        resolve_location(str(link), LOCAL)
    with pytest.raises(MediaError, match="is not a regular file"):
        load_and_transform_vision_data([link])


def test_local_files_keep_their_size_cap(tmp_path: Path) -> None:
    sparse = tmp_path / "huge.png"
    with sparse.open("wb") as handle:
        handle.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(MediaError, match=r"huge\.png: file is 1073741825 bytes, over the"):
        resolve_location(str(sparse), LOCAL)
    movie = tmp_path / "long.mp4"
    with movie.open("wb") as handle:
        handle.truncate(DEFAULT_MAX_BYTES + 1)
    assert resolve_location(str(movie), LOCAL).modality == "video"  # streamed, never read


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[MediaPolicy, Path, Path]:
    root = tmp_path / "media"
    (root / "cats").mkdir(parents=True)
    inside = write_image(root / "cats" / "tom.png")
    outside = write_image(tmp_path / "secret.png")
    (root / "escape.png").symlink_to(outside)
    (root / "inner.png").symlink_to(inside)
    return MediaPolicy(media_root=root), root, outside


def test_media_root_accepts_files_inside(rooted: tuple[MediaPolicy, Path, Path]) -> None:
    policy, root, _ = rooted
    inside = root / "cats" / "tom.png"
    for location in ("cats/tom.png", str(inside), inside.as_uri(), "inner.png"):
        item = resolve_location(location, policy)
        assert (item.modality, item.data) == ("image", str(inside.resolve())), location
    assert load_batch("image", [item]).shape == (1, 3, 224, 224)


def test_media_root_gives_one_answer_outside(
    rooted: tuple[MediaPolicy, Path, Path], fifo: Path
) -> None:
    policy, root, outside = rooted
    os.mkfifo(root / "pipe.png")
    probes = [
        str(outside),  # exists, outside
        str(outside.with_name("missing.png")),  # missing, outside
        "cats/missing.png",  # missing, inside
        "../secret.png",  # traversal
        "escape.png",  # symlink out of the root
        "cats",  # a directory
        "pipe.png",  # a FIFO inside
        str(fifo),
        "/proc/self/environ",
        "/etc/passwd",
        outside.as_uri(),
    ]
    messages = set()
    for location in probes:
        with pytest.raises(MediaError) as caught:
            resolve_location(location, policy, label="file 1")
        messages.add(str(caught.value))
    assert messages == {
        "file 1: is not a readable media file under media_root (pass the path of a regular "
        "file inside media_root (relative paths are relative to it))"
    }


def test_media_root_must_be_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        MediaPolicy(media_root=tmp_path / "absent")


def test_media_root_on_the_langchain_classes(tiny_bundle: Path, tmp_path: Path) -> None:
    chat = ChatPandaGPT(model=str(tiny_bundle), media_root=tmp_path)
    assert chat._media_policy.media_root == tmp_path.resolve()
    embeddings = ImageBindEmbeddings(media_root=tmp_path, remote_allow_hosts=["10.0.0.0/8"])
    policy = embeddings._media_policy()
    assert (policy.media_root, policy.remote_allow_hosts) == (tmp_path.resolve(), ("10.0.0.0/8",))
    with pytest.raises(ValueError, match="is not a folder"):
        ChatPandaGPT(model=str(tiny_bundle), media_root=tmp_path / "absent")
    with pytest.raises(ValueError, match="neither a host name nor an IP network"):
        ImageBindEmbeddings(remote_allow_hosts=["http://intranet/"])
