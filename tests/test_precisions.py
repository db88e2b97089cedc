"""The tiny bundle answers an image question in every precision on CPU, greedily and repeatably."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from langchain_pandagpt.conversation import MediaItem, Message
from langchain_pandagpt.generation.engine import GenerationEngine, SamplingParams
from langchain_pandagpt.model.bundle import PRECISIONS, load_pandagpt


def image_question() -> list[Message]:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 140, 220)).save(buffer, format="PNG")
    image = MediaItem("image", buffer.getvalue(), name="sky.png")
    return [Message("human", "What is in this picture?", media=[image])]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_answers_an_image_question(tiny_bundle: Path, precision: str) -> None:
    model = load_pandagpt(tiny_bundle, precision=precision, device="cpu")
    params = SamplingParams(max_new_tokens=12)  # temperature 0: greedy
    with GenerationEngine(model, prefix_cache_bytes=0) as engine:
        first = engine.generate(image_question(), params)
        second = engine.generate(image_question(), params)
    assert first.completion_tokens > 0
    assert first.finish_reason in ("stop", "length")
    assert first.token_ids == second.token_ids
    assert first.text == second.text
