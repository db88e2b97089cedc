"""The media layer, each concern once: policy, locations and URLs, blocks, detection, hashing,
remote fetches (a real ``http.server`` on loopback) and the loader map."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from media_files import loopback_server, write_depth, write_image, write_imu, write_wav

from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.imagebind.model import ImageBindConfig
from langchain_pandagpt.media import (
    EMBEDDING_MODALITIES,
    MediaItem,
    MediaPolicy,
    block_to_media_item,
    content_digest,
    fetch_remote_media,
    guess_file_modality,
    guess_mime_type,
    guess_modality,
    parse_data_url,
    resolve_data,
    resolve_location,
    sniff_mime_type,
)
from langchain_pandagpt.media.loaders import (
    LOADER_NAMES,
    load_batch,
    loader_input,
    preprocess_kwargs,
)
from langchain_pandagpt.media.policy import DEFAULT_REMOTE_MAX_BYTES, DEFAULT_REMOTE_TIMEOUT_S

#: The test servers listen on loopback, which remote fetches refuse unless allowed.
LOOPBACK = ("127.0.0.1",)
OPEN = MediaPolicy(allow_local_files=True, allow_remote_media=True, remote_allow_hosts=LOOPBACK)
CLOSED = MediaPolicy(allow_local_files=False, allow_remote_media=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media files")  # a space: URLs must quote it
    return {
        "image": write_image(folder / "cat.png"),
        "jpeg": write_image(folder / "cat.jpg", seed=1),
        "audio": write_wav(folder / "bark.wav", seconds=0.25),
        "depth": write_depth(folder / "room.npy"),
        "imu": write_imu(folder / "steps.npy"),
        "hinted": write_image(folder / "night.thermal.png", seed=2),
        "notes": _write(folder / "notes.txt", b"hello"),
        "imu_octets": _write(folder / "walk.imu.npy", write_imu(folder / "w.npy").read_bytes()),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime_type: str = "image/png") -> str:
    return f"data:{mime_type};base64,{b64(data)}"


# --------------------------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------------------------


def test_policy_defaults_are_one_pair_of_remote_limits() -> None:
    policy = MediaPolicy()
    assert (policy.allow_local_files, policy.allow_remote_media) == (True, False)
    assert policy.remote_media_max_bytes == DEFAULT_REMOTE_MAX_BYTES == 50 * 2**20
    assert policy.remote_media_timeout == DEFAULT_REMOTE_TIMEOUT_S == 10.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"remote_media_max_bytes": 0}, "remote_media_max_bytes must be a positive"),
        ({"remote_media_max_bytes": 1.5}, "remote_media_max_bytes must be a positive"),
        ({"remote_media_max_bytes": True}, "remote_media_max_bytes must be a positive"),
        (
            {"remote_media_max_bytes": -1, "max_bytes_setting": "max_remote_bytes"},
            "max_remote_bytes must be a positive",
        ),
        ({"remote_media_timeout": 0}, "remote_media_timeout must be positive"),
        ({"remote_media_timeout": float("inf")}, "remote_media_timeout must be positive"),
        ({"remote_media_timeout": float("nan")}, "remote_media_timeout must be positive"),
        ({"remote_media_timeout": "10"}, "remote_media_timeout must be seconds"),
    ],
)
def test_policy_is_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MediaPolicy(**kwargs)


def test_closed_policy_refuses_every_local_and_remote_form(files: dict[str, Path]) -> None:
    image = files["image"]
    for location in (str(image), image.as_uri(), "relative/cat.png", "~/cat.png"):
        with pytest.raises(MediaError, match="local files are disabled") as caught:
            resolve_location(location, CLOSED)
        assert caught.value.source == location
        assert "allow_local_files=True" in str(caught.value)
    with pytest.raises(MediaError, match=r"^http://127\.0\.0\.1:9/x\.png: remote media are disa"):
        resolve_location("http://127.0.0.1:9/x.png", CLOSED)
    block = {"type": "image", "url": "https://example.com/cat.png"}
    with pytest.raises(
        MediaError,
        match=r"^block 3: remote media are disabled: https://example\.com/cat\.png "
        r"\(set allow_remote_media=True",
    ):
        block_to_media_item(block, CLOSED, "block 3")
    with pytest.raises(MediaError, match=r"^block 4: local files are disabled: /etc/hostname"):
        block_to_media_item({"type": "image", "url": "/etc/hostname"}, CLOSED, "block 4")
    # Inline data needs no permission.
    png = image.read_bytes()
    assert resolve_location(data_url(png), CLOSED).data == png
    assert block_to_media_item({"type": "image", "base64": b64(png)}, CLOSED).data == png


# --------------------------------------------------------------------------------------------
# data: URLs
# --------------------------------------------------------------------------------------------


def test_data_url_forms(files: dict[str, Path]) -> None:
    png = files["image"].read_bytes()
    assert parse_data_url(data_url(png), "x") == (png, "image/png")
    assert parse_data_url(f"data:IMAGE/PNG;BASE64,{b64(png)}", "x") == (png, "image/png")
    assert parse_data_url(f"data:image/png;name=a.png;base64,{b64(png)}", "x") == (png, "image/png")
    assert parse_data_url(f"data:;base64,{b64(png)}", "x") == (png, None)
    quoted = urllib.parse.quote_from_bytes(png)
    assert parse_data_url(f"data:image/png,{quoted}", "x") == (png, "image/png")
    item = resolve_location(f"data:;base64,{b64(png)}", CLOSED)  # MIME sniffed
    assert (item.modality, item.data) == ("image", png)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png;base64", "malformed data: URL (no comma)"),
        ("data:image/png;base64,@@@", "base64 data cannot be decoded"),
        ("data:image/png;base64,", "is empty (0 bytes)"),
        ("data:image/png,", "is empty (0 bytes)"),
        ("data:application/pdf;base64,JVBERi0=", "unknown media type (application/pdf)"),
    ],
)
def test_bad_data_urls(url: str, message: str) -> None:
    with pytest.raises(MediaError, match=re.escape(message)) as caught:
        resolve_location(url, CLOSED)
    assert caught.value.source == url[:40] + ("..." if len(url) > 40 else "")


def test_long_data_urls_are_cut_in_errors() -> None:
    url = "data:application/pdf;base64," + b64(b"%PDF" + bytes(200))
    with pytest.raises(MediaError) as caught:
        resolve_location(url, CLOSED)
    assert caught.value.source == url[:40] + "..."
    assert "(send images, audio or video" in str(caught.value)


# --------------------------------------------------------------------------------------------
# Local files: plain paths and file: URLs
# --------------------------------------------------------------------------------------------


def test_file_urls_and_paths_name_the_same_file(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = files["image"]
    assert " " in str(image) and "%20" in image.as_uri()
    monkeypatch.setenv("HOME", str(image.parent))
    forms = [
        str(image),
        image.as_uri(),
        "file://localhost" + image.as_uri()[len("file://") :],
        "~/cat.png",
    ]
    for location in forms:
        item = resolve_location(location, OPEN)
        assert (item.modality, Path(str(item.data))) == ("image", image), location
        assert item.name == location
    assert resolve_data(image, "thermal", OPEN).modality == "thermal"  # declared wins


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("/nowhere/cat.png", "/nowhere/cat.png: file not found (check the path)"),
        ("file:///nowhere/cat.png", "file:///nowhere/cat.png: file not found: /nowhere/cat.png"),
        ("file://server/share/cat.png", "file: URL on another host (server)"),
        ("ftp://example.com/cat.png", "unsupported URL scheme 'ftp'"),
        ("s3://bucket/cat.png", "use a path, or a file:, data: or http(s): URL"),
        ("http://[::1/cat.png", "is not a valid path or URL"),
    ],
)
def test_bad_locations(location: str, message: str) -> None:
    with pytest.raises(MediaError, match=re.escape(message)):
        resolve_location(location, OPEN)


def test_local_file_problems(files: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match=r"is not a regular file \(check the path\)"):
        resolve_location(str(files["image"].parent), OPEN)
    with pytest.raises(MediaError, match=r"notes\.txt: unknown media type \(text/plain\)"):
        resolve_location(str(files["notes"]), OPEN)


# --------------------------------------------------------------------------------------------
# Data and blocks
# --------------------------------------------------------------------------------------------


def test_resolve_data_forms_and_refusals(files: dict[str, Path]) -> None:
    imu = np.load(files["imu"])
    assert resolve_data(imu, "imu", CLOSED, label="walk").name == "walk"
    assert resolve_data(bytearray(b"\x89PNG"), "image", CLOSED).data == b"\x89PNG"
    assert resolve_data(torch.zeros(4, 4), "depth", CLOSED).modality == "depth"
    cases: list[tuple[Any, str, str]] = [
        (np.zeros(16000), "audio", "<audio array>: audio arrays are not accepted"),
        (torch.zeros(3, 8), "video", "video arrays are not accepted (pass the encoded file"),
        (b"", "image", "<image bytes>: is empty (0 bytes)"),
        (3.5, "image", "<float>: unsupported image data type float"),
        (b"x", "lidar", "<lidar data>: unknown modality 'lidar' (use one of image, video"),
    ]
    for data, modality, message in cases:
        with pytest.raises(MediaError, match=re.escape(message)):
            resolve_data(data, modality, OPEN)


def test_block_modality_rules(files: dict[str, Path]) -> None:
    png, npy = files["image"].read_bytes(), files["imu"].read_bytes()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "image", "base64": b64(png)}, "image"),
        ({"type": "file", "base64": b64(png), "mime_type": "image/png"}, "image"),  # by MIME
        ({"type": "file", "base64": b64(png)}, "image"),  # by signature
        ({"type": "file", "base64": b64(npy)}, "imu"),  # by the .npy shape
        ({"type": "file", "base64": b64(png), "extras": {"filename": "a.depth.png"}}, "depth"),
        ({"type": "file", "base64": b64(png), "extras": {"modality": "thermal"}}, "thermal"),
        ({"type": "image", "base64": b64(png), "extras": {"filename": "a.depth.png"}}, "image"),
        ({"type": "file", "url": str(files["hinted"])}, "thermal"),  # name hint of a path
        ({"type": "image", "source_type": "base64", "data": b64(png)}, "image"),  # v0
        ({"type": "image", "source_type": "url", "url": str(files["image"])}, "image"),  # v0
    ]
    for block, modality in cases:
        assert block_to_media_item(block, OPEN, "b").modality == modality, block


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "file", "base64": "JVBERi0=", "mime_type": "application/pdf"}, "unknown media"),
        ({"type": "file", "base64": "AAAA", "extras": {"modality": "lidar"}}, "modality 'lidar'"),
        ({"type": "image", "base64": "%%%"}, "base64 data cannot be decoded"),
        ({"type": "image", "base64": ""}, "is empty (0 bytes)"),
        ({"type": "image", "base64": 12}, "base64 data must be a string, not int"),
        ({"type": "image", "file_id": "f-1"}, "file_id references cannot be resolved"),
        ({"type": "image", "source_type": "id", "id": "f-1"}, "file_id references"),
        ({"type": "image"}, "has neither base64 data nor a url"),
        ({"type": "image", "url": "/no/photo.png"}, "file not found: /no/photo.png"),
    ],
)
def test_bad_blocks_name_the_block(block: dict[str, Any], message: str) -> None:
    with pytest.raises(MediaError, match=re.escape(message)) as caught:
        block_to_media_item(block, OPEN, "message 0, content block 1 (image)")
    assert caught.value.source == "message 0, content block 1 (image)"
    with pytest.raises(MediaError, match=r"^<(image|file) block>: "):
        block_to_media_item(block, OPEN)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("a.png", "image"),
        ("a.JPG", "image"),
        ("a.webp", "image"),
        ("a.wav", "audio"),
        ("a.mp3", "audio"),
        ("a.flac", "audio"),
        ("a.mp4", "video"),
        ("a.webm", "video"),
        ("a.mkv", "video"),
        ("night.thermal.png", "thermal"),
        ("room.depth.png", "depth"),
        ("walk.imu.npy", "imu"),
        ("ROOM.DEPTH.TIFF", "depth"),
        ("/videos/walk.imu.npy", "imu"),
        ("notes.txt", None),
        ("weights.bin", None),
        ("noext", None),
        ("a.npy", None),  # an array needs its header
    ],
)
def test_guess_modality_from_name(name: str, modality: str | None) -> None:
    assert guess_modality(name) == modality


def _npy(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.float32))
    return buffer.getvalue()[:256]


def test_guess_modality_from_mime_and_header() -> None:
    assert guess_modality(mime_type="video/webm") == "video"
    assert guess_modality(mime_type="Audio/WAV") == "audio"
    assert guess_mime_type("x.npy") == "application/x-npy"
    for shape, modality in [
        ((6, 2000), "imu"),
        ((2000, 6), "imu"),
        ((48, 64), "depth"),
        ((48, 64, 1), "depth"),
        ((48, 64, 3), None),
        ((10,), None),
    ]:
        assert guess_modality("x.npy", header=_npy(shape)) == modality, shape
        assert guess_modality(header=_npy(shape)) == modality, shape  # sniffed as .npy
    # Candidates in order: given MIME, the name's MIME, the sniffed bytes.
    png = b"\x89PNG\r\n\x1a\n" + bytes(8)
    assert guess_modality("clip.mp4", mime_type="audio/wav", header=png) == "audio"
    assert guess_modality("clip.mp4", mime_type="application/x-foo", header=png) == "video"
    assert guess_modality("blob", mime_type="application/x-foo", header=png) == "image"
    assert guess_modality("x.thermal.png", mime_type="audio/wav") == "thermal"  # hints first


@pytest.mark.parametrize(
    ("data", "mime_type"),
    [
        (b"\x93NUMPY\x01\x00", "application/x-npy"),
        (b"\x89PNG\r\n\x1a\n....", "image/png"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"II*\x00", "image/tiff"),
        (b"MM\x00*", "image/tiff"),
        (b"GIF89a", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "video/x-msvideo"),
        (b"fLaC\x00", "audio/flac"),
        (b"OggS\x00", "audio/ogg"),
        (b"ID3\x04", "audio/mpeg"),
        (b"\x00\x00\x00\x20ftypisom", "video/mp4"),
        (b"\x00\x00\x00\x20ftypM4A ", "audio/mp4"),
        (b"\x00\x00\x00\x14ftypqt  ", "video/quicktime"),
        (b"\x1a\x45\xdf\xa3\x01", "video/webm"),
        (b"%PDF-1.7", None),
        (b"RIFF\x00\x00\x00\x00XXXX", None),
        (b"", None),
    ],
)
def test_sniff_mime_type(data: bytes, mime_type: str | None) -> None:
    assert sniff_mime_type(data) == mime_type


def test_real_files_are_sniffed(files: dict[str, Path]) -> None:
    for key, mime in [("image", "image/png"), ("jpeg", "image/jpeg"), ("audio", "audio/wav")]:
        assert sniff_mime_type(files[key].read_bytes()[:64]) == mime


def test_guess_file_modality_reads_only_arrays(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert guess_file_modality(files["imu"]) == "imu"
    assert guess_file_modality(files["depth"]) == "depth"
    assert guess_file_modality(files["imu_octets"]) == "imu"
    opened: list[Path] = []
    original = Path.open

    def recording_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", recording_open)
    assert guess_file_modality(files["image"]) == "image"
    assert guess_file_modality(tmp_path / "absent.wav") == "audio"  # never opened
    assert guess_file_modality(files["notes"]) is None
    assert opened == []
    with pytest.raises(MediaError, match=r"absent\.npy: cannot be read"):
        guess_file_modality(tmp_path / "absent.npy")


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def test_one_digest_for_every_form_of_the_same_content(files: dict[str, Path]) -> None:
    image = files["image"]
    png = image.read_bytes()
    items = [
        resolve_location(str(image), OPEN),
        resolve_location(image.as_uri(), OPEN),
        resolve_location(data_url(png), OPEN),
        resolve_location(f"data:;base64,{b64(png)}", OPEN),
        resolve_data(png, "image", OPEN),
        resolve_data(image, "image", OPEN),
        block_to_media_item({"type": "image", "base64": b64(png)}, OPEN),
        block_to_media_item({"type": "image", "url": image.as_uri()}, OPEN),
        block_to_media_item({"type": "file", "base64": b64(png), "mime_type": "image/png"}, OPEN),
        MediaItem("image", str(image), name="named"),
    ]
    digests = {item.content_hash() for item in items}
    assert len(digests) == 1
    # The stable format that on-disk caches rely on.
    assert digests == {hashlib.sha256(b"image" + png + b"media").hexdigest()}
    assert content_digest("image", image) in digests


def test_digest_separates_what_differs(files: dict[str, Path]) -> None:
    png = files["image"].read_bytes()
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert content_digest("depth", array) == content_digest("depth", torch.from_numpy(array))
    assert content_digest("depth", array) == content_digest("depth", np.asfortranarray(array))
    distinct = {
        content_digest("image", png),
        content_digest("thermal", png),
        content_digest("image", png, is_embedding=True),
        content_digest("depth", array),
        content_digest("depth", array.astype(np.float64)),
        content_digest("depth", array.reshape(4, 3)),
        content_digest("text", "a cat"),
        content_digest("text", "a dog"),
        content_digest("image", b"a cat"),
    }
    assert len(distinct) == 9
    expected = hashlib.sha256(b"text" + "a cät".encode() + b"media").hexdigest()
    assert content_digest("text", "a cät") == expected


def test_digest_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"^photo: cannot be read"):
        MediaItem("image", str(tmp_path / "gone.png"), name="photo").content_hash()
    with pytest.raises(MediaError, match=r"gone\.png: cannot be read"):
        content_digest("image", tmp_path / "gone.png")
    with pytest.raises(TypeError, match="cannot hash image data of type float"):
        content_digest("image", 1.5)
    with pytest.raises(TypeError, match="text must be a str"):
        content_digest("text", b"bytes")


# --------------------------------------------------------------------------------------------
# Remote fetches against a real server on loopback
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(files: dict[str, Path]) -> Iterator[str]:
    """``/cat.png`` (image/png), ``/steps.octets`` and ``/walk.imu.npy`` (no useful type),
    ``/stream.png`` (no Content-Length), ``/slow.png`` (answers late), ``/to-file``,
    ``/to-ftp`` and ``/to-cat`` (redirects); anything else is 404."""
    png, npy = files["image"].read_bytes(), files["imu"].read_bytes()
    redirects = {
        "/to-file": "file:///etc/hostname",
        "/to-ftp": "ftp://127.0.0.1/x",
        "/to-cat": "/cat.png",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes: dict[str, tuple[bytes, str]] = {
                "/cat.png": (png, "image/png"),
                "/steps.octets": (npy, "application/octet-stream"),
                "/walk.imu.npy": (npy, "application/octet-stream"),
            }
            if self.path in routes:
                body, content_type = routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/stream.png":  # HTTP/1.0: the body ends when the socket closes
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()
                self.wfile.write(png)
            elif self.path == "/slow.png":
                time.sleep(1.0)
                self.send_error(404)
            elif self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.end_headers()
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    with loopback_server(Handler) as base:
        yield base


def test_remote_fetch_returns_bytes_and_a_useful_type(
    http_server: str, files: dict[str, Path]
) -> None:
    png, npy = files["image"].read_bytes(), files["imu"].read_bytes()
    fetch = functools.partial(fetch_remote_media, max_bytes=10**6, timeout=5, allow_hosts=LOOPBACK)
    assert fetch(f"{http_server}/cat.png") == (png, "image/png")
    assert fetch(f"{http_server}/steps.octets") == (npy, None)
    assert fetch(f"{http_server}/to-cat") == (png, "image/png")


def test_remote_locations_resolve_under_the_policy(
    http_server: str, files: dict[str, Path]
) -> None:
    png = files["image"].read_bytes()
    item = resolve_location(f"{http_server}/cat.png", OPEN)
    assert (item.modality, item.data, item.name) == ("image", png, f"{http_server}/cat.png")
    assert resolve_location(f"{http_server}/steps.octets", OPEN).modality == "imu"  # sniffed
    assert resolve_location(f"{http_server}/walk.imu.npy", OPEN).modality == "imu"  # name hint
    block = {"type": "file", "url": f"{http_server}/cat.png", "extras": {"modality": "depth"}}
    assert block_to_media_item(block, OPEN).modality == "depth"


def test_remote_size_cap_with_and_without_content_length(http_server: str) -> None:
    small = MediaPolicy(
        allow_remote_media=True, remote_media_max_bytes=100, remote_allow_hosts=LOOPBACK
    )
    with pytest.raises(
        MediaError, match=r"cat\.png: is \d+ bytes, over the remote_media_max_bytes limit of 100"
    ):
        resolve_location(f"{http_server}/cat.png", small)
    renamed = MediaPolicy(
        allow_remote_media=True,
        remote_media_max_bytes=100,
        max_bytes_setting="max_remote_bytes",
        remote_allow_hosts=LOOPBACK,
    )
    with pytest.raises(
        MediaError,
        match=r"stream\.png: is over the max_remote_bytes limit of 100 bytes "
        r"\(raise max_remote_bytes\)",
    ):
        resolve_location(f"{http_server}/stream.png", renamed)


def test_remote_failures_are_media_errors(http_server: str) -> None:
    cases = [
        (f"{http_server}/missing.png", 5.0, "cannot be fetched (HTTP 404 Not Found)"),
        (f"{http_server}/to-file", 5.0, "redirect to file: refused (http(s) only)"),
        (f"{http_server}/to-ftp", 5.0, "redirect to ftp: refused (http(s) only)"),
        (f"{http_server}/slow.png", 0.2, "cannot be fetched"),
        ("http://127.0.0.1:9/closed.png", 5.0, "cannot be fetched"),
    ]
    for url, timeout, message in cases:
        with pytest.raises(MediaError, match=re.escape(message)) as caught:
            fetch_remote_media(url, 10**6, timeout, allow_hosts=LOOPBACK)
        assert caught.value.source == url
    with pytest.raises(MediaError, match="is not an http"):
        fetch_remote_media("file:///etc/hostname", 10**6, 5)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def test_one_loader_per_embedding_modality() -> None:
    assert tuple(LOADER_NAMES) == EMBEDDING_MODALITIES
    config = ImageBindConfig(audio_num_mel_bins=64, audio_target_len=100)
    assert preprocess_kwargs("audio", config) == {"num_mel_bins": 64, "target_length": 100}
    assert preprocess_kwargs("image", config) == {}


def test_loader_inputs(files: dict[str, Path]) -> None:
    png = files["image"].read_bytes()
    stream = loader_input(MediaItem("image", png, name="message 0 (image)"))
    assert isinstance(stream, io.BytesIO) and stream.name == "message 0 (image)"
    assert stream.read() == png
    assert loader_input(MediaItem("image", str(files["image"]))) == str(files["image"])
    assert isinstance(loader_input(MediaItem("depth", torch.zeros(2, 2))), np.ndarray)
    assert isinstance(loader_input(MediaItem("imu", torch.zeros(6, 2000))), torch.Tensor)
    assert loader_input("a cat") == "a cat"


def test_load_batch_reads_paths_and_bytes_alike(files: dict[str, Path]) -> None:
    image = files["image"]
    batch = load_batch(
        "image", [MediaItem("image", str(image)), MediaItem("image", image.read_bytes())]
    )
    assert batch.shape == (2, 3, 224, 224)
    torch.testing.assert_close(batch[0], batch[1])
    with pytest.raises(MediaError, match=r"^upload 7: "):
        load_batch("image", [MediaItem("image", b"not an image", name="upload 7")])


@pytest.mark.slow
def test_media_and_serving_never_import_langchain() -> None:
    code = (
        "import sys, langchain_pandagpt.media, langchain_pandagpt.model.embedder, "
        "langchain_pandagpt.serving.server; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'langchain_core' or m in "
        "('langchain_pandagpt.embeddings', 'langchain_pandagpt.content_blocks')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
