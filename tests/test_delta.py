"""``apply_delta``: Vicuna v0 built shard by shard equals the all-in-memory FastChat rule.

Bases and deltas are tiny synthetic LLaMA folders (``delta_fixtures``) in ``.bin`` and
safetensors layouts with different shard boundaries; the expected result is computed here
independently, holding everything in memory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from delta_fixtures import copy_model, llama1_config, llama_tensors, make_pair, write_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase
from typer.testing import CliRunner

from langchain_pandagpt.cli import app
from langchain_pandagpt.errors import CheckpointError, DownloadNotAllowedError
from langchain_pandagpt.model import delta as delta_module
from langchain_pandagpt.model.delta import apply_delta
from langchain_pandagpt.model.tiny import build_tiny_tokenizer

SMALL_SHARDS = 40_000  # bytes: the tiny model's output spans several shards


@pytest.fixture(scope="module")
def tokenizers() -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(LLaMA-like base tokenizer without [PAD], the v0 delta's tokenizer with it)."""
    return build_tiny_tokenizer(pad=False), build_tiny_tokenizer()


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
    tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase],
) -> tuple[Path, Path]:
    """A .bin base and a safetensors delta (read-only: copy before changing)."""
    return make_pair(tmp_path_factory.mktemp("pair"), *tokenizers)


def _load_all(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.bin")):
        tensors.update(torch.load(path, weights_only=True))
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def reference_vicuna_v0(base: Path, delta: Path) -> tuple[dict[str, torch.Tensor], int, int]:
    """The FastChat v0.1.10 rule with everything in memory: fp16, [PAD] added to the base
    tokenizer, embeddings and head grown by zero rows, then base + delta for every tensor."""
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    added = tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    base_state, delta_state = _load_all(base), _load_all(delta)
    expected = {}
    for name, tensor in base_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        tensor = tensor.half()
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = torch.cat([tensor, torch.zeros(added, tensor.shape[1], dtype=tensor.dtype)])
        expected[name] = tensor + delta_state[name].half()
    return expected, len(tokenizer), tokenizer.pad_token_id


def _assert_vicuna(out: Path, base: Path, delta: Path) -> None:
    expected, vocab, pad_id = reference_vicuna_v0(base, delta)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and {p.name for p in shards} == set(index["weight_map"].values())
    written = {}
    for path in shards:
        written.update(load_file(str(path)))
    assert set(written) == set(expected) == set(index["weight_map"])
    for name, tensor in expected.items():
        assert written[name].dtype == torch.float16
        assert torch.equal(written[name], tensor), name  # bit for bit
    assert (
        torch.count_nonzero(
            written["lm_head.weight"][-1] - _load_all(delta)["lm_head.weight"][-1].half()
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == vocab and config["torch_dtype"] == "float16"
    assert json.loads((base / "config.json").read_text())["vocab_size"] == vocab - 1
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(tokenizer) == vocab and tokenizer.convert_tokens_to_ids("[PAD]") == pad_id
    assert pad_id == vocab - 1
    assert (out / "generation_config.json").is_file()


@pytest.mark.parametrize(
    ("base_layout", "delta_layout", "base_dtype"),
    [("bin", "safetensors", torch.float16), ("safetensors", "bin", torch.float32)],
)
def test_streamed_application_equals_in_memory_rule(
    tmp_path: Path,
    tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase],
    base_layout: str,
    delta_layout: str,
    base_dtype: torch.dtype,
) -> None:
    base, delta = make_pair(
        tmp_path,
        *tokenizers,
        base_layout=base_layout,
        delta_layout=delta_layout,
        base_dtype=base_dtype,
    )
    out = apply_delta(
        base, delta, tmp_path / "vicuna", max_shard_bytes=SMALL_SHARDS, progress=False
    )
    _assert_vicuna(out, base, delta)
    assert not any(p.name.startswith(".vicuna") for p in tmp_path.iterdir())
    model = LlamaForCausalLM.from_pretrained(str(out))  # loads as a normal HF model
    assert model.config.vocab_size == len(tokenizers[1])


def test_delta_without_tokenizer_gets_the_base_one_plus_pad(
    tmp_path: Path, tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]
) -> None:
    base, delta = make_pair(tmp_path, tokenizers[0], None)
    out = apply_delta(
        base, delta, tmp_path / "vicuna", max_shard_bytes=SMALL_SHARDS, progress=False
    )
    _assert_vicuna(out, base, delta)


def _refusal(base: Path, delta: Path, out: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        apply_delta(base, delta, out, progress=False)
    assert not out.exists()
    return str(info.value)


def _rewrite_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_refuses_a_vicuna_v1_1_delta(
    tmp_path: Path, tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]
) -> None:
    base_tokenizer = tokenizers[0]
    vocab = len(base_tokenizer)
    base, _ = make_pair(tmp_path, *tokenizers)
    delta = write_model(
        tmp_path / "v11",
        llama_tensors(vocab, seed=3),
        llama1_config(vocab),
        base_tokenizer,
        layout="safetensors",
        cuts=(7,),
    )
    message = _refusal(base, delta, tmp_path / "out")
    assert "v1.1" in message and "lmsys/vicuna-7b-delta-v0" in message


def test_refuses_a_llama2_base(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base = copy_model(pair[0], tmp_path / "llama2")
    _rewrite_config(base, max_position_embeddings=4096, rms_norm_eps=1e-5)
    message = _refusal(base, pair[1], tmp_path / "out")
    assert "not LLaMA-1" in message and "4096" in message and "rms_norm_eps 1e-05" in message


def test_refuses_a_base_of_another_size(
    tmp_path: Path, tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]
) -> None:
    vocab = len(tokenizers[0])
    big = write_model(
        tmp_path / "big",
        llama_tensors(vocab, seed=4, hidden=128),
        llama1_config(vocab, hidden_size=128, intermediate_size=256),
        tokenizers[0],
        layout="bin",
        cuts=(4,),
    )
    _, delta = make_pair(tmp_path / "pair", *tokenizers)
    message = _refusal(big, delta, tmp_path / "out")
    assert "hidden_size 128" in message and "of the delta's size" in message


def _drop_tensor(folder: Path, name: str) -> None:
    """Rewrites ``folder`` (safetensors layout) without ``name``."""
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = folder / index["weight_map"].pop(name)
    tensors = load_file(str(shard))
    del tensors[name]
    delta_module.save_file(tensors, str(shard), metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))


def test_names_missing_extra_and_misshapen_tensors(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, delta = pair
    lacking = copy_model(delta, tmp_path / "lacking")
    _drop_tensor(lacking, "model.layers.1.mlp.up_proj.weight")
    message = _refusal(base, lacking, tmp_path / "out")
    assert "lacks 1 tensor" in message and "model.layers.1.mlp.up_proj.weight" in message

    extra = copy_model(delta, tmp_path / "extra")
    save = delta_module.save_file
    save({"model.layers.9.extra.weight": torch.zeros(2)}, str(extra / "more.safetensors"))
    index = json.loads((extra / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.extra.weight"] = "more.safetensors"
    (extra / "model.safetensors.index.json").write_text(json.dumps(index))
    message = _refusal(base, extra, tmp_path / "out")
    assert "has 1 tensor(s) the base lacks" in message and "layers.9.extra" in message

    misshapen = copy_model(delta, tmp_path / "misshapen")
    name = "model.layers.0.self_attn.k_proj.weight"
    _drop_tensor(misshapen, name)
    save({name: torch.zeros(64, 32, dtype=torch.float16)}, str(misshapen / "k.safetensors"))
    index = json.loads((misshapen / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = "k.safetensors"
    (misshapen / "model.safetensors.index.json").write_text(json.dumps(index))
    message = _refusal(base, misshapen, tmp_path / "out")
    assert name in message and "[64, 32]" in message and "[64, 64]" in message


def test_refuses_bad_paths_incomplete_downloads_and_merged_bases(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    base, delta = pair
    message = _refusal(tmp_path / "no" / "such" / "base", delta, tmp_path / "out")
    assert "BASE" in message and "not a folder and not a Hugging Face repo id" in message
    with pytest.raises(DownloadNotAllowedError, match="downloads are off"):
        apply_delta("nobody-here/no-such-llama-xyz", delta, tmp_path / "out", progress=False)
    assert "no config.json" in _refusal(tmp_path, delta, tmp_path / "out")

    incomplete = copy_model(base, tmp_path / "incomplete")
    next(incomplete.glob("pytorch_model-00002-*.bin")).unlink()
    assert "download is incomplete" in _refusal(incomplete, delta, tmp_path / "out")

    merged = copy_model(delta, tmp_path / "merged")  # a base that already has [PAD]
    assert "already has [PAD]" in _refusal(merged, delta, tmp_path / "out")

    (tmp_path / "taken").mkdir()
    with pytest.raises(CheckpointError, match="already exists"):
        apply_delta(base, delta, tmp_path / "taken", progress=False)


def test_a_crash_leaves_no_model_and_a_rerun_succeeds(
    tmp_path: Path, pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, delta = pair
    out = tmp_path / "vicuna"
    written = []
    real_writer = delta_module.write_shard

    def crash_on_second(tensors: dict[str, torch.Tensor], path: Path) -> None:
        if written:
            raise OSError("disk full (simulated)")
        real_writer(tensors, path)
        written.append(path)

    monkeypatch.setattr(delta_module, "write_shard", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        apply_delta(base, delta, out, max_shard_bytes=SMALL_SHARDS, progress=False)
    assert written and not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    stale = tmp_path / ".vicuna.partial"  # what a killed run leaves behind
    stale.mkdir()
    (stale / "model-00001-of-00009.safetensors").write_bytes(b"half")
    out = apply_delta(base, delta, out, max_shard_bytes=SMALL_SHARDS, progress=False)
    _assert_vicuna(out, base, delta)
    assert not stale.exists()

    again = apply_delta(base, delta, out, overwrite=True, progress=False)  # replaces in place
    assert again == out and len(list(out.glob("model-*.safetensors"))) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vicuna"]


_KILLED_RUN = """
import os, signal, sys
from langchain_pandagpt.model import delta
real = delta.write_shard
count = []
def write_then_die(tensors, path):
    if count:
        os.kill(os.getpid(), signal.SIGKILL)
    real(tensors, path)
    count.append(path)
delta.write_shard = write_then_die
delta.apply_delta(sys.argv[1], sys.argv[2], sys.argv[3], max_shard_bytes=40_000, progress=False)
"""


@pytest.mark.slow
def test_a_killed_process_leaves_nothing_that_loads(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    base, delta = pair
    out = tmp_path / "vicuna"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(base), str(delta), str(out)], env=env, check=False
    )
    assert result.returncode == -signal.SIGKILL
    assert not out.exists() and (tmp_path / ".vicuna.partial").is_dir()
    apply_delta(base, delta, out, max_shard_bytes=SMALL_SHARDS, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["vicuna"]
    _assert_vicuna(out, base, delta)


def test_cli_apply_delta(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    base, delta = pair
    out = tmp_path / "vicuna"
    result = CliRunner().invoke(app, ["apply-delta", str(base), str(delta), str(out), "--offline"])
    assert result.exit_code == 0, result.output
    assert "Vicuna v0 written to" in result.output
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 804
    again = CliRunner().invoke(app, ["apply-delta", str(base), str(delta), str(out), "--offline"])
    assert again.exit_code == 1 and "already exists" in again.output
    wrong = CliRunner().invoke(app, ["apply-delta", str(delta), str(delta), str(out), "--force"])
    assert wrong.exit_code == 1 and "already has [PAD]" in wrong.output


def test_sources_reopened_to_release_pages_give_the_same_result(
    tmp_path: Path, pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delta_module, "REOPEN_BYTES", 10_000)  # reopen after almost every tensor
    opened = []
    real_reader = delta_module.ShardReader

    def counting(path: Path) -> delta_module.ShardReader:
        opened.append(path)
        return real_reader(path)

    monkeypatch.setattr(delta_module, "ShardReader", counting)
    out = apply_delta(*pair, tmp_path / "vicuna", max_shard_bytes=SMALL_SHARDS, progress=False)
    files = {p for p in pair[0].iterdir()} | {p for p in pair[1].iterdir()}
    assert len(opened) > 2 * len({p for p in files if p.suffix in (".bin", ".safetensors")})
    _assert_vicuna(out, *pair)
