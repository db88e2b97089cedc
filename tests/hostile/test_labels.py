"""Item 6 (media part): errors name the input's location, malformed block fields are
MediaErrors.

Before: a bad upload was reported as ``<bytes: 456 B> at index 0`` instead of the content
part the caller named, and non-string ``filename``/``mime_type`` values raised TypeError or
AttributeError (HTTP 500).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from media_files import make_tiny_checkpoint

from langchain_pandagpt.embeddings import ImageBindEmbeddings
from langchain_pandagpt.errors import MediaError
from langchain_pandagpt.media import (
    MediaItem,
    MediaPolicy,
    block_to_media_item,
    guess_modality,
    resolve_data,
    resolve_location,
)
from langchain_pandagpt.media.loaders import load_batch

POLICY = MediaPolicy()
LABEL = "messages[2].content[2]"
GARBAGE = b"\x00\x01 not media at all " * 20


def _block(modality: str, data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    if modality in ("image", "audio", "video"):
        return {"type": modality, "base64": encoded}
    return {"type": "file", "base64": encoded, "extras": {"modality": modality}}


@pytest.mark.parametrize("modality", ["image", "audio", "video", "thermal", "depth", "imu"])
def test_bad_uploads_are_named_by_their_label(modality: str) -> None:
    item = block_to_media_item(_block(modality, GARBAGE), POLICY, LABEL)
    with pytest.raises(MediaError) as caught:
        load_batch(modality, [item])
    message = str(caught.value)
    assert message.startswith(f"{LABEL}: "), message
    assert "<bytes" not in message and "at index" not in message


def test_paths_and_arrays_are_named_by_their_label_too(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(GARBAGE)
    items = [
        MediaItem("image", np.zeros((8, 8, 3), np.uint8), name="ok"),
        resolve_location(str(fake), POLICY, label="messages[1].content[0]"),
    ]
    with pytest.raises(MediaError, match=r"^messages\[1\]\.content\[0\]: "):
        load_batch("image", items)
    array = resolve_data(np.zeros((2, 3, 4)), "depth", POLICY, label="messages[0].content[3]")
    with pytest.raises(MediaError, match=r"^messages\[0\]\.content\[3\]: depth array"):
        load_batch("depth", [array])


def test_unlabelled_items_keep_their_own_names(tmp_path: Path) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(GARBAGE)
    with pytest.raises(MediaError, match=r"fake\.png: "):
        load_batch("image", [MediaItem("image", str(fake))])


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "image", "base64": 123}, "base64 data must be a string, not int"),
        ({"type": "file", "base64": ["AAAA"]}, "base64 data must be a string, not list"),
        ({"type": "image", "base64": "AAAA", "mime_type": 5}, "'mime_type' must be a string"),
        ({"type": "file", "base64": "AAAA", "filename": 5}, "'filename' must be a string"),
        (
            {"type": "file", "base64": "AAAA", "extras": {"filename": {"a": 1}}},
            "'filename' must be a string, not dict",
        ),
        ({"type": "image", "url": 5}, "'url' must be a string, not int"),
        ({"type": "image", "url": {"url": "x"}}, "'url' must be a string, not dict"),
        ({"type": "file", "base64": "AAAA", "extras": {"modality": ["x"]}}, "unknown modality"),
    ],
)
def test_malformed_block_fields_are_media_errors(block: dict[str, Any], message: str) -> None:
    with pytest.raises(MediaError, match=f"^{re.escape(LABEL)}: "):
        block_to_media_item(block, POLICY, LABEL)
    with pytest.raises(MediaError, match=message):
        block_to_media_item(block, POLICY, LABEL)


def test_detection_ignores_non_strings() -> None:
    assert guess_modality(5) is None  # type: ignore[arg-type]
    assert guess_modality(b"x.png", mime_type=7) is None  # type: ignore[arg-type]
    assert guess_modality(["a.wav"], mime_type="image/png") == "image"  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="a location must be a string"):
        resolve_location(b"/etc/passwd", POLICY)  # type: ignore[arg-type]


def test_embedding_pairs_are_named_by_their_position(tmp_path: Path) -> None:
    embeddings = ImageBindEmbeddings(checkpoint=make_tiny_checkpoint(tmp_path / "ib.safetensors"))
    with pytest.raises(MediaError, match=r"^items\[1\] \(audio\): "):
        embeddings.embed_media([("a dog", "text"), (GARBAGE, "audio")])
    stream = io.BytesIO()
    np.save(stream, np.zeros((5, 5, 5)))
    with pytest.raises(MediaError, match=r"^items\[0\] \(depth\): "):
        embeddings.embed_media([MediaItem("depth", stream.getvalue())])
