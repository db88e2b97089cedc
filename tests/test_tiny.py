"""The tiny bundle (determinism, tokenizer) and the ``pandagpt`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from marks import child_processes
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from typer.testing import CliRunner

from langchain_pandagpt.cli import app
from langchain_pandagpt.imagebind.checkpoint import load_imagebind
from langchain_pandagpt.model.adapter import read_peft_adapter, read_reference_checkpoint
from langchain_pandagpt.model.manifest import BundleManifest
from langchain_pandagpt.model.tiny import TINY_IMAGEBIND, create_tiny_checkpoint

runner = CliRunner()


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_bundle / "llm", local_files_only=True)


def test_same_seed_same_bytes_other_seed_other_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    expected = _files(tiny_bundle)
    assert set(expected) == {
        "pandagpt.json",
        "imagebind.safetensors",
        "pytorch_model.pt",
        "llm/config.json",
        "llm/generation_config.json",
        "llm/model.safetensors",
        "llm/tokenizer.json",
        "llm/tokenizer_config.json",
    }
    assert _files(create_tiny_checkpoint(tmp_path / "again", seed=0)) == expected
    other = _files(create_tiny_checkpoint(tmp_path / "other", seed=1))
    for name in ("llm/model.safetensors", "imagebind.safetensors", "pytorch_model.pt"):
        assert other[name] != expected[name]
    assert other["llm/tokenizer.json"] == expected["llm/tokenizer.json"]


def test_bundle_contents(tiny_bundle: Path) -> None:
    manifest = BundleManifest.read(tiny_bundle)
    assert manifest.adapter.format == "reference" and manifest.adapter.vocab_size == 804
    config = json.loads((tiny_bundle / "llm" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["rms_norm_eps"] == 1e-6
    assert config["max_position_embeddings"] == 2048
    imagebind = load_imagebind(tiny_bundle / "imagebind.safetensors")
    assert imagebind.config == TINY_IMAGEBIND and len(imagebind.modalities) == 6
    adapter = read_reference_checkpoint(tiny_bundle / "pytorch_model.pt")
    assert all(t.dtype == torch.float16 and t.abs().sum() > 0 for t in adapter.lora.values())
    assert adapter.projection_weight.shape == (64, TINY_IMAGEBIND.out_embed_dim)


def test_tokenizer_is_llama_like(tokenizer: PreTrainedTokenizerBase) -> None:
    assert [tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == len(tokenizer) - 1
    assert tokenizer.convert_ids_to_tokens([3, 13, 258]) == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert tokenizer.encode("hi")[0] == 1
    pieces = {
        "### Human: <Img>": ["▁###", "▁Human:", "▁<Img>"],
        "\n###": ["▁", "<0x0A>", "###"],  # like LLaMA's 29871, 13, 2277, 29937
    }
    for text, expected in pieces.items():
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.convert_ids_to_tokens(ids) == expected
    inside = tokenizer.encode("A cat.\n### Human: Why?", add_special_tokens=False)
    tokens = tokenizer.convert_ids_to_tokens(inside)
    newline = tokens.index("<0x0A>")
    assert tokens[newline - 1 : newline + 3] == [".", "<0x0A>", "###", "▁Human:"]
    for text in ["</Img> What is in this image?\n### Assistant:", "Zürich 世界 🐼!\ttab\n\nend"]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert len(tokenizer.encode("The cat is on the sofa.", add_special_tokens=False)) <= 8


def test_cli_commands(tiny_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["create-tiny-checkpoint", str(tmp_path / "peft"), "--peft"])
    assert result.exit_code == 0, result.output
    assert BundleManifest.read(tmp_path / "peft").adapter.format == "peft"

    out = tmp_path / "converted"
    result = runner.invoke(
        app, ["convert-checkpoint", str(tiny_bundle / "pytorch_model.pt"), str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        read_peft_adapter(out).lora.keys()
        == read_reference_checkpoint(tiny_bundle / "pytorch_model.pt").lora.keys()
    )

    official = tmp_path / "imagebind.pth"  # the official format: a pickled state dict
    torch.save(load_file(tiny_bundle / "imagebind.safetensors"), official)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(TINY_IMAGEBIND.to_dict()))
    converted = tmp_path / "imagebind.safetensors"
    result = runner.invoke(
        app, ["convert-imagebind", str(official), str(converted), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert load_file(converted).keys() == load_file(tiny_bundle / "imagebind.safetensors").keys()

    for command in ([], ["create-tiny-checkpoint"], ["convert-checkpoint"], ["convert-imagebind"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_cli_errors_are_one_red_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["convert-checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "out")]
    )
    # A missing argument file is a usage error, caught before any heavy import (exit 2).
    assert result.exit_code == 2
    assert "file not found" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    source = tmp_path / "a.pth"
    source.write_bytes(b"not read: the config fails first")
    result = runner.invoke(
        app, ["convert-imagebind", str(source), "b.safetensors", "--config", str(bad)]
    )
    assert result.exit_code == 1 and "not a readable JSON config" in result.output


@child_processes
def test_cli_in_a_fresh_process_makes_the_same_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """Through ``python -m langchain_pandagpt.cli`` in a fresh process (other hash seed, same
    bytes)."""
    out = tmp_path / "cli"
    cli = [sys.executable, "-m", "langchain_pandagpt.cli"]
    done = subprocess.run(
        [*cli, "create-tiny-checkpoint", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _files(out) == _files(tiny_bundle)
