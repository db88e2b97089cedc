"""Our ImageBind preprocessing: parity with the official loaders (golden data), conventions."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from langchain_pandagpt.imagebind.imu import load_and_transform_imu_data
from langchain_pandagpt.imagebind.tokenizer import (
    CONTEXT_LENGTH,
    EOT_ID,
    SOT_ID,
    load_and_transform_text,
)
from langchain_pandagpt.imagebind.vision import (
    KINECT_BASELINE_M,
    KINECT_FOCAL_PX,
    load_and_transform_depth_data,
    load_and_transform_thermal_data,
    load_and_transform_vision_data,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "imagebind"


@pytest.fixture(scope="module")
def inputs() -> Path:
    """The golden input files (skips when the shared folder is not checked out beside us)."""
    if not SHARED.is_dir():
        pytest.skip(f"golden data folder {SHARED} is absent")
    return GOLDEN / "inputs"


@pytest.fixture(scope="module")
def golden(inputs: Path) -> dict[str, torch.Tensor]:
    """Official preprocessed tensors plus the tokenizer ids recorded with the outputs."""
    tensors = load_file(GOLDEN / "preprocessed.safetensors")
    tensors["text_tokens_ids"] = load_file(GOLDEN / "outputs.safetensors")["text_tokens_ids"]
    return tensors


def test_vision_matches_official(inputs: Path, golden: dict[str, torch.Tensor]) -> None:
    images = sorted(inputs.glob("img*"))
    assert [p.name[:4] for p in images] == ["img0", "img1", "img2", "img3"]
    batch = load_and_transform_vision_data(images)
    assert batch.dtype == torch.float32
    assert batch.shape == golden["vision_images"].shape == (4, 3, 224, 224)
    assert (batch - golden["vision_images"]).abs().max().item() <= 1e-5


def test_text_matches_official(inputs: Path, golden: dict[str, torch.Tensor]) -> None:
    texts = json.loads((inputs / "texts.json").read_text(encoding="utf-8"))
    tokens = load_and_transform_text(texts)
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, golden["text_tokens"])
    assert torch.equal(tokens, golden["text_tokens_ids"])


def test_imu_matches_official(inputs: Path, golden: dict[str, torch.Tensor]) -> None:
    batch = load_and_transform_imu_data(sorted(inputs.glob("imu*.npy")))
    assert batch.dtype == torch.float32
    assert torch.equal(batch, golden["imu"])


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("A dog.", [SOT_ID, 320, 1929, 269, EOT_ID]),
        ("A car", [SOT_ID, 320, 1615, EOT_ID]),
        ("A bird", [SOT_ID, 320, 3329, EOT_ID]),
        ("", [SOT_ID, EOT_ID]),
    ],
)
def test_text_check_ids(text: str, ids: list[int]) -> None:
    row = load_and_transform_text([text])[0].tolist()
    assert row == ids + [0] * (CONTEXT_LENGTH - len(ids))


def test_long_text_keeps_end_of_text_at_last_position() -> None:
    row = load_and_transform_text([" ".join(["word"] * 100)])[0]
    assert row.shape == (CONTEXT_LENGTH,)
    assert row[-2:].tolist() == [2653, EOT_ID]
    assert int(row.argmax()) == CONTEXT_LENGTH - 1


def test_text_cleaning_unescapes_collapses_and_lowercases() -> None:
    rows = load_and_transform_text(["Fish &amp;amp; Chips", "  fish \t&\n chips "])
    assert torch.equal(rows[0], rows[1])


def test_text_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match=r"text\[1\]"):
        load_and_transform_text(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        load_and_transform_text("A dog.")
    with pytest.raises(ValueError, match="empty"):
        load_and_transform_text([])


def test_thermal_is_grayscale_in_unit_range() -> None:
    gradient = np.tile(np.arange(256, dtype=np.uint8), (300, 1))
    batch = load_and_transform_thermal_data([gradient])
    assert batch.shape == (1, 1, 224, 224)
    assert batch.dtype == torch.float32
    assert 0.0 <= batch.min().item() < batch.max().item() <= 1.0


def test_thermal_matches_vision_geometry_without_normalisation(inputs: Path) -> None:
    image = Image.open(inputs / "img2_gray_200x150.png")
    thermal = load_and_transform_thermal_data([image])[0, 0]
    vision = load_and_transform_vision_data([image])[0, 0]
    assert torch.allclose(thermal, vision * 0.26862954 + 0.48145466, atol=1e-6)


def _png16(depth_mm: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(depth_mm).save(buffer, format="PNG")
    return buffer.getvalue()


def test_depth_units_and_disparity() -> None:
    depth_mm = np.full((120, 160), 2000, dtype=np.uint16)
    depth_mm[:, 80:] = 4000
    npy = io.BytesIO()
    np.save(npy, depth_mm.astype(np.float64) / 1000)
    batch = load_and_transform_depth_data(
        [_png16(depth_mm), depth_mm, depth_mm.astype(np.float32) / 1000, npy.getvalue()]
    )
    assert batch.shape == (4, 1, 224, 224)
    for other in batch[1:]:
        assert torch.allclose(batch[0], other, atol=1e-5)
    near = KINECT_BASELINE_M * KINECT_FOCAL_PX / 2.0
    assert batch[0, 0, 112, 0].item() == pytest.approx(near, rel=1e-5)
    assert batch[0, 0, 112, -1].item() == pytest.approx(near / 2, rel=1e-5)


def test_depth_clipping_and_normalisation() -> None:
    depth_m = np.zeros((224, 224), dtype=np.float32)
    raw = load_and_transform_depth_data([depth_m], baseline=1.0, focal_length=1.0)
    assert torch.allclose(raw, torch.full_like(raw, 100.0))
    scaled = load_and_transform_depth_data(
        [depth_m], baseline=1.0, focal_length=1.0, mean=40.0, std=2.0
    )
    assert torch.allclose(scaled, torch.full_like(raw, 30.0))


def test_imu_accepts_transposed_windows_and_tensors() -> None:
    window = np.random.default_rng(0).standard_normal((6, 2000)).astype(np.float32)
    batch = load_and_transform_imu_data(
        [window, window.T, torch.from_numpy(window), window.astype(np.float64)]
    )
    assert batch.shape == (4, 6, 2000)
    for other in batch[1:]:
        assert torch.equal(batch[0], other)


def test_loaders_move_to_device() -> None:
    assert load_and_transform_text(["x"], device="cpu").device.type == "cpu"
    image = np.zeros((224, 224, 3), dtype=np.uint8)
    assert load_and_transform_vision_data([image], torch.device("cpu")).device.type == "cpu"
