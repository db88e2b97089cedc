"""Weight downloads from the Hub: name resolution, checksum verification, offline errors.

The Hub is replaced by local fakes (``hf_hub_download``, ``snapshot_download`` and the file
listing); ``tests/test_cli.py`` downloads ImageBind from a local mirror through the CLI.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.hf_api import RepoFile

from langchain_pandagpt.downloads import DownloadError
from langchain_pandagpt.model import hub


def test_git_blob_sha1_matches_git(tmp_path: Path) -> None:
    file = tmp_path / "hello.txt"
    file.write_bytes(b"hello\n")
    assert hub.git_blob_sha1(file) == "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object


class FakeHub:
    """Serves ``files`` (name -> bytes) like the Hub, listing ``listed`` checksums."""

    def __init__(self, root: Path, files: dict[str, bytes], lfs: set[str]) -> None:
        self.root = root
        self.files = files
        self.listed = {
            name: RepoFile(
                path=name,
                size=len(data),
                oid=hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest(),
                lfs={"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 1}
                if name in lfs
                else None,
            )
            for name, data in files.items()
        }
        self.calls: list[tuple[str, Any]] = []

    def write_all(self) -> Path:
        for name, data in self.files.items():
            (self.root / name).parent.mkdir(parents=True, exist_ok=True)
            (self.root / name).write_bytes(data)
        return self.root

    def hf_hub_download(self, repo_id: str, filename: str, **kwargs: Any) -> str:
        self.calls.append((repo_id, filename))
        self.write_all()
        return str(self.root / filename)

    def snapshot_download(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append((repo_id, kwargs.get("allow_patterns")))
        return str(self.write_all())

    def get_paths_info(self, repo_id: str, paths: list[str], **kwargs: Any) -> list[RepoFile]:
        return [self.listed[path] for path in paths]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    files = {"pytorch_model.pt": b"weights" * 100, "config.json": b"{}", "sub/tok.model": b"x"}
    fake = FakeHub(tmp_path / "repo", files, lfs={"pytorch_model.pt"})
    monkeypatch.setattr(hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(hub.HfApi, "get_paths_info", lambda self, *a, **k: fake.get_paths_info(*a))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    return fake


def test_a_delta_name_fetches_its_checkpoint_verified(fake: FakeHub) -> None:
    result = hub.download("pandagpt-13b")
    assert fake.calls == [("openllmplayground/pandagpt_13b_max_len_400", "pytorch_model.pt")]
    assert result.verified and result.path.name == "pytorch_model.pt"


def test_a_snapshot_verifies_lfs_and_plain_files(fake: FakeHub) -> None:
    result = hub.download("lmsys/vicuna-7b-delta-v0", include=["*.json", "*.pt", "sub/*"])
    assert fake.calls == [("lmsys/vicuna-7b-delta-v0", ["*.json", "*.pt", "sub/*"])]
    assert result.verified and len(result.files) == 3


@pytest.mark.parametrize("name", ["pytorch_model.pt", "config.json"])
def test_a_corrupt_file_is_reported(fake: FakeHub, name: str) -> None:
    fake.files[name] = b"tampered"
    with pytest.raises(DownloadError, match=f"{name}: checksum mismatch"):
        hub.download("owner/repo")


def test_offline_errors_say_what_to_do(fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> str:
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(DownloadError, match="offline"):
        hub.download("pandagpt-7b")


def test_offline_mode_serves_the_cache_unverified(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    assert not hub.download("pandagpt-7b").verified


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown download"):
        hub.download("vicuna")
    with pytest.raises(ValueError, match="only apply to `imagebind`"):
        hub.download("pandagpt-7b", sha256="00")
    assert set(hub.PANDAGPT_DELTAS) <= set(hub.known_downloads())


def test_a_finished_imagebind_file_is_not_fetched_again(tmp_path: Path) -> None:
    existing = tmp_path / "imagebind_huge.pth"
    existing.write_bytes(b"weights")
    unreachable = "http://127.0.0.1:9/imagebind_huge.pth"
    result = hub.download_imagebind(tmp_path, url=unreachable)
    assert result.path == existing and not result.verified
    good = hashlib.sha256(b"weights").hexdigest()
    assert hub.download_imagebind(existing, url=unreachable, sha256=good).verified
    with pytest.raises(DownloadError, match="--force"):
        hub.download_imagebind(existing, url=unreachable, sha256="0" * 64)
    with pytest.raises(DownloadError, match="run the command again"):
        hub.download_imagebind(existing, url=unreachable, force=True, progress=False)


@pytest.mark.parametrize(
    ("listing", "weights"),
    [(["model.safetensors", "pytorch_model.bin"], "*.safetensors"), (["a.bin"], "*.bin")],
)
def test_an_llm_is_fetched_in_one_weight_format(
    fake: FakeHub, monkeypatch: pytest.MonkeyPatch, listing: list[str], weights: str
) -> None:
    monkeypatch.setattr(hub.HfApi, "list_repo_files", lambda self, *a, **k: listing)
    hub.download_llm("lmsys/vicuna-7b-delta-v0")
    assert fake.calls == [("lmsys/vicuna-7b-delta-v0", ["*.json", "*.model", weights])]


def test_an_unreachable_llm_listing_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: Any, *args: Any, **kwargs: Any) -> list[str]:
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(hub.HfApi, "list_repo_files", offline)
    with pytest.raises(DownloadError, match="resumes where it stopped"):
        hub.download_llm("owner/llama-7b")
