"""ImageBindModel: official key layout, golden embeddings, partial towers, dtypes, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError
from langchain_pandagpt.imagebind import (
    MODALITIES,
    ImageBindConfig,
    ImageBindModel,
    convert_imagebind_checkpoint,
    load_imagebind,
    save_imagebind_safetensors,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "imagebind"
HUGE_KEYS = SHARED / "reference" / "imagebind_huge_keys.json"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="shared/golden is not checked out")

# golden output name -> (model input modality, preprocessed tensor name)
GOLDEN_CASES = {
    "vision_images": ("vision", "vision_images"),
    "text": ("text", "text_tokens"),
    "audio_aud0": ("audio", "audio_aud0"),
    "imu": ("imu", "imu"),
}


def golden_config() -> ImageBindConfig:
    return ImageBindConfig.from_dict(json.loads((GOLDEN / "config.json").read_text()))


@pytest.fixture(scope="module")
def golden_model() -> ImageBindModel:
    model = ImageBindModel(golden_config()).eval()
    model.load_state_dict(load_file(GOLDEN / "weights.safetensors"), strict=True)
    return model


@pytest.mark.skipif(not HUGE_KEYS.is_file(), reason="shared/reference is not checked out")
def test_huge_config_on_meta_matches_every_official_key_and_shape() -> None:
    reference = json.loads(HUGE_KEYS.read_text())
    with torch.device("meta"):
        model = ImageBindModel(ImageBindConfig.huge())
    state = model.state_dict()
    expected = {k: tuple(v["shape"]) for k, v in reference["state_dict"].items()}
    assert len(state) == reference["num_state_dict_keys"] == 1311
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers == {k for k, v in reference["state_dict"].items() if v["kind"] == "buffer"}
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters_total"]
    official_kwargs = {k: v for k, v in reference["constructor_kwargs"].items() if k[0] != "_"}
    assert ImageBindConfig.huge().to_dict() | official_kwargs == ImageBindConfig.huge().to_dict()


@needs_golden
def test_small_config_matches_golden_manifest() -> None:
    manifest = json.loads((GOLDEN / "manifest_small.json").read_text())
    with torch.device("meta"):
        model = ImageBindModel(golden_config())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v["shape"]) for k, v in manifest["state_dict"].items()}


@needs_golden
@pytest.mark.parametrize("name", list(GOLDEN_CASES))
def test_embeddings_match_official_outputs(golden_model: ImageBindModel, name: str) -> None:
    modality, input_name = GOLDEN_CASES[name]
    inputs = load_file(GOLDEN / "preprocessed.safetensors")[input_name]
    expected = load_file(GOLDEN / "outputs.safetensors")[name]
    with torch.no_grad():
        got = golden_model({modality: inputs})[modality]
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    assert cosine.min() >= 0.99999
    assert (got - expected).abs().max() <= 1e-4 * golden_model.logit_scale(modality)


@needs_golden
def test_audio_clip_embeddings_and_unscaled_output(golden_model: ImageBindModel) -> None:
    audio = load_file(GOLDEN / "preprocessed.safetensors")["audio_aud0"]
    clips = load_file(GOLDEN / "outputs.safetensors")["audio_aud0.clip_embeddings"]
    with torch.no_grad():
        per_clip = golden_model.encode("audio", audio[0])  # 4-D: clips as a batch
        unscaled = golden_model({"audio": audio}, unscaled={"audio"})["audio"]
    assert torch.allclose(per_clip, clips[0], atol=1e-4 * 17.5)
    scale = golden_model.logit_scale("audio")
    assert scale == pytest.approx(17.5, rel=1e-6)
    expected = torch.nn.functional.normalize(clips[0], dim=-1).mean(0, keepdim=True)
    assert torch.allclose(unscaled, expected, atol=1e-5)


def test_only_requested_towers_are_built() -> None:
    model = ImageBindModel(golden_config(), modalities=["audio", "vision"])
    assert model.modalities == ("vision", "audio")
    towers = {key.split(".")[1] for key in model.state_dict()}
    assert towers == {"vision", "audio"}
    with pytest.raises(ValueError, match="'text' is not in this model"):
        model.encode("text", torch.zeros(1, 77, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown modalities"):
        ImageBindModel(golden_config(), modalities=["smell"])


def test_wrong_input_shapes_give_clear_errors() -> None:
    model = ImageBindModel(golden_config()).eval()
    with pytest.raises(ValueError, match=r"\(B, 6, 2000\)"):
        model.encode("imu", torch.zeros(1, 6, 100))
    with pytest.raises(ValueError, match="patches"):
        model.encode("vision", torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match=r"\(B, 77\)"):
        model.encode("text", torch.zeros(1, 10, dtype=torch.long))


@needs_golden
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_track_fp32(golden_model: ImageBindModel, dtype: torch.dtype) -> None:
    images = load_file(GOLDEN / "preprocessed.safetensors")["vision_images"]
    tokens = load_file(GOLDEN / "preprocessed.safetensors")["text_tokens"]
    low = ImageBindModel(golden_config()).eval().to(dtype)
    low.load_state_dict(golden_model.state_dict())
    with torch.no_grad():
        reference = golden_model({"vision": images, "text": tokens})
        got = low({"vision": images, "text": tokens})
    for modality in ("vision", "text"):
        assert got[modality].dtype == dtype
        cosine = torch.nn.functional.cosine_similarity(
            got[modality].float(), reference[modality], dim=-1
        )
        assert cosine.min() > 0.99


def random_small_model(seed: int = 0) -> ImageBindModel:
    model = ImageBindModel(golden_config())
    model.init_random_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def test_safetensors_round_trip_loads_only_requested_towers(tmp_path: Path) -> None:
    model = random_small_model()
    path = save_imagebind_safetensors(model, tmp_path / "imagebind.safetensors")
    loaded = load_imagebind(path, modalities=["imu"])
    assert loaded.modalities == ("imu",)
    assert not any(p.requires_grad for p in loaded.parameters())
    signal = torch.randn(2, 6, 2000)
    with torch.no_grad():
        assert torch.equal(loaded.encode("imu", signal), model.encode("imu", signal))
    assert load_imagebind(tmp_path).modalities == MODALITIES  # a directory works too


def test_pth_checkpoint_loads_weights_only_and_converts(tmp_path: Path) -> None:
    model = random_small_model(seed=1)
    pth = tmp_path / "imagebind_small.pth"
    torch.save(model.state_dict(), pth)
    loaded = load_imagebind(pth, config=golden_config(), modalities=["text"])
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        assert torch.equal(loaded.encode("text", tokens), model.encode("text", tokens))
    out = convert_imagebind_checkpoint(pth, tmp_path / "out.safetensors", config=golden_config())
    assert load_file(out).keys() == model.state_dict().keys()


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, evil)  # a module is not a plain state dict
    with pytest.raises(CheckpointError, match="weights-only"):
        load_imagebind(evil, config=golden_config())


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_imagebind(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no imagebind"):
        load_imagebind(tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"garbage\.safetensors"):
        load_imagebind(garbage)
    partial = tmp_path / "partial.safetensors"
    state = random_small_model().state_dict()
    save_file({k: v for k, v in state.items() if "trunks.vision" not in k}, partial)
    with pytest.raises(CheckpointError, match="missing"):
        load_imagebind(partial, config=golden_config(), modalities=["vision"])
    with pytest.raises(CheckpointError, match=r"ImageBindConfig\.huge"):
        load_imagebind(partial, config=ImageBindConfig.huge(), modalities=["audio"])


def test_missing_cache_without_download_permission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PANDAGPT_CACHE", str(tmp_path))
    with pytest.raises(DownloadNotAllowedError, match="allow_download=True"):
        load_imagebind()
