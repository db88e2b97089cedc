"""``pandagpt download RELEASE --llama/--llm --dest DIR``: a ready bundle, offline.

The three downloads (ImageBind, the adapter, the Vicuna v0 delta) are replaced by copies of
tiny local fixtures; apply-delta and the bundle loading are the real ones, and the bundle then
answers ``pandagpt ask``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from delta_fixtures import make_pair
from typer.testing import CliRunner

from langchain_pandagpt.cli import app
from langchain_pandagpt.model import hub, release
from langchain_pandagpt.model.hub import Downloaded
from langchain_pandagpt.model.tiny import build_tiny_tokenizer

runner = CliRunner()


@pytest.fixture
def fake_hub(tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Downloads served from tiny fixtures; a tiny LLaMA-1 base to build from."""
    base, delta = make_pair(tmp_path / "sources", build_tiny_tokenizer(pad=False), None)
    shutil.copytree(tiny_bundle / "llm", delta, dirs_exist_ok=True, ignore=_weights_and_config)
    calls: list[str] = []

    def download_imagebind(**kwargs: Any) -> Downloaded:
        calls.append("imagebind")
        path = tmp_path / "cache" / "imagebind.safetensors"
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(tiny_bundle / "imagebind.safetensors", path)
        return Downloaded(path=path, files=(path,), verified=True)

    def download(name: str, *, destination: Path, **kwargs: Any) -> Downloaded:
        calls.append(name)
        path = destination / "pytorch_model.pt"
        shutil.copyfile(tiny_bundle / "pytorch_model.pt", path)
        return Downloaded(path=path, files=(path,), verified=True)

    def download_llm(repo_id: str, **kwargs: Any) -> Downloaded:
        calls.append(repo_id)
        return Downloaded(path=delta, files=(), verified=True)

    monkeypatch.setattr(hub, "download_imagebind", download_imagebind)
    monkeypatch.setattr(hub, "download", download)
    monkeypatch.setattr(hub, "download_llm", download_llm)
    tiny = {
        name: release.Release(name, rel.adapter_repo, rel.vicuna_delta, 64, vocab_size=804)
        for name, rel in release.RELEASES.items()
    }
    monkeypatch.setattr(release, "RELEASES", tiny)
    return {"base": base, "calls": calls}


def _weights_and_config(folder: str, names: list[str]) -> list[str]:
    """Copy only the tiny bundle's tokenizer (the v0 delta's tokenizer has [PAD])."""
    return [name for name in names if not name.startswith("tokenizer")]


def _ask(bundle: Path) -> str:
    result = runner.invoke(app, ["ask", "-b", str(bundle), "--max-tokens", "4", "hi"])
    assert result.exit_code == 0, result.output
    return result.output


def test_download_builds_a_bundle_that_answers(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    dest = tmp_path / "pandagpt-13b"
    args = ["download", "pandagpt-13b", "--llama", str(fake_hub["base"]), "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "bundle ready" in result.output
    assert fake_hub["calls"] == ["pandagpt-13b", "lmsys/vicuna-13b-delta-v0", "imagebind"]
    manifest = json.loads((dest / "pandagpt.json").read_text())
    assert manifest["llm"] == "llm" and manifest["name"] == "pandagpt-13b"
    assert manifest["adapter"] == {
        "format": "reference",
        "path": "pytorch_model.pt",
        "projection": None,
        "vocab_size": 804,
    }
    assert Path(manifest["imagebind"]).is_file()
    assert json.loads((dest / "llm" / "config.json").read_text())["vocab_size"] == 804
    assert _ask(dest).strip()

    # A rerun resumes: the built LLM is kept, not applied again.
    fake_hub["calls"].clear()
    stamp = (dest / "llm" / "config.json").stat().st_mtime_ns
    assert runner.invoke(app, args).exit_code == 0
    assert fake_hub["calls"] == ["pandagpt-13b", "imagebind"]
    assert (dest / "llm" / "config.json").stat().st_mtime_ns == stamp


def test_download_with_an_existing_vicuna(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    first = tmp_path / "first"
    args = ["download", "pandagpt-7b", "--llama", str(fake_hub["base"]), "--dest", str(first)]
    assert runner.invoke(app, args).exit_code == 0
    dest = tmp_path / "second"
    args = ["download", "pandagpt-7b", "--llm", str(first / "llm"), "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((dest / "pandagpt.json").read_text())["llm"] == str(first / "llm")
    assert not (dest / "llm").exists()
    assert _ask(dest).strip()


def test_download_bundle_errors(tmp_path: Path, fake_hub: dict[str, Any]) -> None:
    base = str(fake_hub["base"])
    cases = {
        ("pandagpt-7b", "--llama", base): "pass --dest",
        ("owner/repo", "--llama", base, "--dest", str(tmp_path)): "need a release",
        ("pandagpt-7b", "--llama", base, "--llm", base, "--dest", str(tmp_path)): "exactly one",
        ("pandagpt-7b", "--llm", base, "--dest", str(tmp_path / "y")): "vocabulary 803",
    }
    for args, message in cases.items():
        result = runner.invoke(app, ["download", *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert not (tmp_path / "y" / "pandagpt.json").exists()
    assert fake_hub["calls"] == []  # refused before any download
