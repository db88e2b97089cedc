"""Loading bundles: every precision, media encoding, shared instances, and clear errors."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

from langchain_pandagpt.conversation import MediaItem
from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError, MediaError
from langchain_pandagpt.model.adapter import write_reference_checkpoint
from langchain_pandagpt.model.bundle import load_pandagpt
from langchain_pandagpt.model.manifest import MANIFEST_NAME, BundleManifest
from langchain_pandagpt.model.modeling import PandaGPTModel
from langchain_pandagpt.model.tiny import build_tiny_adapter

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _wav(seconds: float = 3.0, rate: int = 16000) -> bytes:
    samples = np.random.default_rng(1).standard_normal(int(seconds * rate)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.1 * samples, rate, format="WAV")
    return buffer.getvalue()


def _mp4(frames: int = 24, fps: int = 8) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            pixels = np.full((48, 64, 3), 10 * index, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def _prompt_logits(model: PandaGPTModel, item: MediaItem) -> torch.Tensor:
    """Logits of the reference single-turn prompt ``[bos] ### Human: <Img> [media] </Img> ...``."""
    tokenizer = model.tokenizer
    start = [model.bos_token_id, *tokenizer.encode("### Human: <Img>", add_special_tokens=False)]
    after = tokenizer.encode(
        "</Img> What is in the image?\n### Assistant:", add_special_tokens=False
    )
    embeds = torch.cat(
        [
            model.embed_tokens(torch.tensor(start)),
            model.encode_media([item]),
            model.embed_tokens(torch.tensor(after)),
        ]
    )[None]
    assert embeds.dtype == model.dtype
    with torch.no_grad():
        return model.llm(inputs_embeds=embeds, use_cache=True).logits[0].float()


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def model(tiny_bundle: Path) -> PandaGPTModel:
    return load_pandagpt(tiny_bundle)


# --------------------------------------------------------------------------------------------
# Loading in every precision
# --------------------------------------------------------------------------------------------

EXPECTED_DTYPES = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,  # compute dtype on CPU; only the LLM's linear layers are int8
    "nf4": torch.float32,
}


@pytest.mark.parametrize("precision", list(EXPECTED_DTYPES))
def test_every_precision_answers_an_image_prompt(
    tiny_bundle: Path, model: PandaGPTModel, precision: str
) -> None:
    if precision in ("int8", "nf4"):
        pytest.importorskip("bitsandbytes")
    loaded = model if precision == "fp32" else load_pandagpt(tiny_bundle, precision=precision)  # type: ignore[arg-type]
    assert loaded.dtype == EXPECTED_DTYPES[precision]
    assert loaded.device == torch.device("cpu")
    assert (loaded.hidden_size, loaded.num_layers, loaded.vocab_size) == (
        64,
        2,
        len(loaded.tokenizer),
    )
    assert loaded.bos_token_id == 1
    item = MediaItem("image", _png())
    logits = _prompt_logits(loaded, item)
    assert torch.isfinite(logits).all()
    loaded.clear_media_cache()
    assert torch.equal(logits, _prompt_logits(loaded, item))
    if precision != "fp32":  # same bundle, same answer as fp32 up to the precision's rounding
        reference = _prompt_logits(model, item)
        tolerance = 0.05 if precision in ("fp16", "int8") else 0.3
        relative = (logits - reference).norm() / reference.norm()
        assert relative < tolerance


def test_fp16_on_cpu_points_to_bf16(tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="langchain_pandagpt.model.bundle"):
        load_pandagpt(tiny_bundle, precision="bf16")
        assert not caplog.records
        load_pandagpt(tiny_bundle, precision="fp16")
    assert "use bf16" in caplog.text and str(tiny_bundle) in caplog.text


def test_peft_form_bundle_and_merged_lora_give_the_same_logits(
    tiny_bundle: Path, model: PandaGPTModel, tmp_path: Path
) -> None:
    from langchain_pandagpt.model.tiny import create_tiny_checkpoint

    peft_bundle = create_tiny_checkpoint(tmp_path / "peft", seed=0, adapter_format="peft")
    item = MediaItem("image", _png())
    reference = _prompt_logits(model, item)
    assert torch.equal(_prompt_logits(load_pandagpt(peft_bundle), item), reference)
    merged = load_pandagpt(tiny_bundle, merge_lora=True)
    assert isinstance(merged.llm, LlamaForCausalLM)
    torch.testing.assert_close(_prompt_logits(merged, item), reference, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------


def test_every_media_kind_becomes_one_token(model: PandaGPTModel) -> None:
    rng = np.random.default_rng(2)
    items = [
        MediaItem("image", _png()),
        MediaItem("video", _mp4()),
        MediaItem("audio", _wav()),
        MediaItem("thermal", _png(3)),
        MediaItem("depth", rng.uniform(0.5, 4.0, (48, 64)).astype(np.float32)),
        MediaItem("imu", rng.standard_normal((6, 2000)).astype(np.float32)),
    ]
    embeddings = model.embed_media(items)
    assert embeddings.shape == (6, 32)
    # Reference scale rule: vision unit norm, audio normalised without its x20, thermal x10,
    # depth and IMU keep ImageBind's x5; video and audio average unit clips (norm <= 1).
    norms = embeddings.norm(dim=-1)
    torch.testing.assert_close(norms[[0, 3, 4, 5]], torch.tensor([1.0, 10.0, 5.0, 5.0]))
    assert 0.5 < norms[1] <= 1 + 1e-5 and 0.5 < norms[2] <= 1 + 1e-5
    tokens = model.encode_media(items)
    assert tokens.shape == (6, model.hidden_size) and tokens.dtype == model.dtype
    bias_only = model.projection.bias.expand(6, -1)
    torch.testing.assert_close(tokens, embeddings @ model.projection.weight.T + bias_only)


def test_media_cache_and_precomputed_embeddings(model: PandaGPTModel) -> None:
    model.clear_media_cache()
    image = MediaItem("image", _png(4))
    first = model.encode_media([image, image])
    assert torch.equal(first[0], first[1])
    assert len(model._media_cache) == 1
    embedding = model.embed_media([image])[0]
    given = MediaItem("image", embedding.numpy(), is_embedding=True)
    assert torch.equal(model.encode_media([given]), model.encode_media([image]))
    with pytest.raises(MediaError, match="32 floats"):
        model.encode_media([MediaItem("image", np.zeros(5, np.float32), is_embedding=True)])
    with pytest.raises(MediaError, match=r"missing\.png"):
        model.encode_media([MediaItem("image", "/nonexistent/missing.png")])


def test_embedding_scales_and_towers_come_from_the_manifest(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    _edit_manifest(
        bundle, embedding_scales={"thermal": False}, imagebind_towers=["vision", "thermal"]
    )
    loaded = load_pandagpt(bundle)
    assert loaded.imagebind.modalities == ("vision", "thermal")
    norm = loaded.embed_media([MediaItem("thermal", _png())]).norm()
    torch.testing.assert_close(norm, torch.tensor(1.0))
    with pytest.raises(MediaError, match="no imu tower"):
        loaded.encode_media([MediaItem("imu", np.zeros((6, 2000), np.float32))])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_manifest_and_parts(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"empty/pandagpt\.json: bundle manifest not found"):
        load_pandagpt(tmp_path / "empty")
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "imagebind.safetensors").rename(bundle / "moved.safetensors")
    with pytest.raises(
        CheckpointError, match=r"imagebind\.safetensors: ImageBind checkpoint not found"
    ):
        load_pandagpt(bundle)
    (bundle / "moved.safetensors").rename(bundle / "imagebind.safetensors")
    (bundle / "pytorch_model.pt").rename(bundle / "moved.pt")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.pt: adapter file not found"):
        load_pandagpt(bundle)
    (bundle / "moved.pt").rename(bundle / "pytorch_model.pt")
    shutil.rmtree(bundle / "llm")
    with pytest.raises(CheckpointError, match=r"bundle/llm: LLM directory not found"):
        load_pandagpt(bundle)
    _edit_manifest(bundle, llm="someone/vicuna-7b-v0")  # a hub id that is not cached
    with pytest.raises(DownloadNotAllowedError, match="pass allow_download=True"):
        load_pandagpt(bundle)


def test_invalid_manifest(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    for change, message in [
        ({"precision": "fp16"}, "precision: unknown key"),
        ({"media_fusion": "concat"}, "media_fusion: Input should be 'sum' or 'sequence'"),
        ({"embedding_scales": {"vision": True}}, "vision has no scale"),
        ({"max_context": True}, "max_context: Input should be a valid integer"),
        ({"format_version": 2}, "upgrade langchain-pandagpt"),
        ({"adapter": {"format": "peft", "paths": "x"}}, r"adapter\.paths: unknown key"),
        ({"imagebind_towers": ["vision", "smell"]}, "imagebind_towers must name some of"),
        ({"name": ""}, "name: String should have at least 1 character"),
    ]:
        original = (bundle / MANIFEST_NAME).read_text()
        _edit_manifest(bundle, **change)
        with pytest.raises(CheckpointError, match=message):
            BundleManifest.read(bundle)
        (bundle / MANIFEST_NAME).write_text(original)


def _replace_adapter(bundle: Path, **llm_sizes: int) -> None:
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=llm_sizes.get("hidden_size", 64),
        intermediate_size=32,
        num_hidden_layers=llm_sizes.get("num_hidden_layers", 2),
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    adapter = build_tiny_adapter(LlamaForCausalLM(config), 32, torch.Generator().manual_seed(0))
    write_reference_checkpoint(adapter, bundle / "pytorch_model.pt")


@pytest.mark.parametrize(
    ("llm_sizes", "message"),
    [
        ({"hidden_size": 128}, r"outputs 128 features but the LLM's hidden size is 64"),
        (
            {"num_hidden_layers": 3},
            r"LoRA weights for 3 decoder layers \(0\.\.2\) but the LLM has 2",
        ),
    ],
)
def test_adapter_for_another_llm(
    tiny_bundle: Path, tmp_path: Path, llm_sizes: dict[str, int], message: str
) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    _replace_adapter(bundle, **llm_sizes)
    with pytest.raises(CheckpointError, match=rf"pytorch_model\.pt: .*{message}"):
        load_pandagpt(bundle)


def test_adapter_lora_shape_and_vocab_mismatches(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(tiny_bundle, tmp_path)
    state = torch.load(bundle / "pytorch_model.pt", weights_only=True)
    key = "llama_model.base_model.model.model.layers.0.self_attn.k_proj.lora_B.default.weight"
    state[key] = torch.zeros(48, 8, dtype=torch.float16)
    torch.save(state, bundle / "pytorch_model.pt")
    with pytest.raises(CheckpointError, match=r"has shape \(48, 8\) but the LLM needs \(64, 8\)"):
        load_pandagpt(bundle)

    bundle = _copy(tiny_bundle, tmp_path / "vocab")
    _edit_manifest(
        bundle, adapter={"format": "reference", "path": "pytorch_model.pt", "vocab_size": 32001}
    )
    with pytest.raises(CheckpointError, match=r"vocabulary 32001, but .*llm has 804"):
        load_pandagpt(bundle)

    state = torch.load(tiny_bundle / "pytorch_model.pt", weights_only=True)
    state["llama_proj.weight"] = state["llama_proj.weight"][:, :16]
    torch.save(state, bundle / "pytorch_model.pt")
    _edit_manifest(bundle, adapter={"format": "reference", "path": "pytorch_model.pt"})
    with pytest.raises(CheckpointError, match=r"takes 16 features but .* embeds into 32"):
        load_pandagpt(bundle)


def test_bad_precision_and_device(tiny_bundle: Path) -> None:
    with pytest.raises(CheckpointError, match="precision 'fp8' is not supported"):
        load_pandagpt(tiny_bundle, precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="device 'tpu' is not supported"):
        load_pandagpt(tiny_bundle, device="tpu")
    with pytest.raises(CheckpointError, match="merge_lora is not available for nf4"):
        load_pandagpt(tiny_bundle, precision="nf4", merge_lora=True)
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="CUDA is not available"):
            load_pandagpt(tiny_bundle, device="cuda:0")
