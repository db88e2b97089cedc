"""Fetching released weights: ImageBind from Meta's URL, PandaGPT deltas and LLMs from the Hub.

Hub downloads go through ``huggingface_hub`` (its cache, resume and progress bars), and every
file is then checked against the checksum the Hub publishes for it (SHA-256 for LFS files, the
git blob id for small ones), so a truncated or tampered file is reported instead of being
loaded later with a confusing error. Network failures become one :class:`DownloadError` that
says what to do, so the CLI never shows a traceback when offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile

from langchain_pandagpt.downloads import DownloadError, cache_dir, download_url, sha256_of
from langchain_pandagpt.imagebind.checkpoint import IMAGEBIND_HUGE_FILENAME, IMAGEBIND_HUGE_URL

#: The name ``pandagpt download`` uses for the official ImageBind checkpoint.
IMAGEBIND: Final = "imagebind"
#: Short names for the released PandaGPT deltas (CC-BY-NC-SA 4.0, one ``pytorch_model.pt`` each).
PANDAGPT_DELTAS: Final[dict[str, str]] = {
    "pandagpt-7b": "openllmplayground/pandagpt_7b_max_len_1024",
    "pandagpt-7b-512": "openllmplayground/pandagpt_7b_max_len_512",
    "pandagpt-13b": "openllmplayground/pandagpt_13b_max_len_400",
    "pandagpt-13b-256": "openllmplayground/pandagpt_13b_max_len_256",
}
DELTA_FILENAME: Final = "pytorch_model.pt"
_CHUNK: Final = 1 << 20


@dataclass(frozen=True)
class Downloaded:
    """Where a download landed: ``path`` (a file or a snapshot folder) and the files checked."""

    path: Path
    files: tuple[Path, ...]
    verified: bool


def known_downloads() -> dict[str, str]:
    """Short name -> what it fetches, for ``pandagpt download --list``."""
    known = {IMAGEBIND: f"{IMAGEBIND_HUGE_URL} (CC-BY-NC-SA 4.0)"}
    known.update({name: f"hf://{repo}/{DELTA_FILENAME}" for name, repo in PANDAGPT_DELTAS.items()})
    return known


def download_imagebind(
    destination: Path | None = None,
    *,
    url: str = IMAGEBIND_HUGE_URL,
    sha256: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Downloaded:
    """Fetches ``imagebind_huge.pth`` (resumable) into ``destination`` or the user cache.

    Meta publishes no checksum for this file; pass ``sha256`` to pin one (an existing file is
    checked against it too). A finished file is not fetched again unless ``force``.
    """
    if destination is None:
        destination = cache_dir(IMAGEBIND) / IMAGEBIND_HUGE_FILENAME
    elif destination.is_dir():
        destination = destination / IMAGEBIND_HUGE_FILENAME
    if destination.is_file() and not force:
        if sha256 is not None and sha256_of(destination) != sha256:
            raise DownloadError(
                f"{destination} exists but its sha256 is not {sha256}; download it again with "
                "--force"
            )
        return Downloaded(path=destination, files=(destination,), verified=sha256 is not None)
    path = download_url(url, destination, sha256=sha256, progress=progress)
    return Downloaded(path=path, files=(path,), verified=sha256 is not None)


def download_from_hub(
    repo_id: str,
    *,
    filenames: Sequence[str] = (),
    include: Sequence[str] = (),
    revision: str | None = None,
    local_dir: Path | None = None,
    verify: bool = True,
    force: bool = False,
) -> Downloaded:
    """Fetches files of a Hub model repo: ``filenames`` exactly, else a (filtered) snapshot.

    Downloads resume where they stopped (``huggingface_hub`` keeps ``.incomplete`` files).
    With ``verify`` each file is checked against the Hub's published checksum.
    """
    try:
        if filenames:
            paths = [
                Path(
                    hf_hub_download(
                        repo_id,
                        name,
                        revision=revision,
                        local_dir=local_dir,
                        force_download=force,
                    )
                )
                for name in filenames
            ]
            root = paths[0] if len(paths) == 1 else paths[0].parent
            files = dict(zip(filenames, paths, strict=True))
        else:
            root = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    local_dir=local_dir,
                    allow_patterns=list(include) or None,
                    force_download=force,
                )
            )
            files = {
                p.relative_to(root).as_posix(): p
                for p in sorted(root.rglob("*"))
                if p.is_file() and ".cache" not in p.relative_to(root).parts
            }
        # Offline, files can only come from the cache, which was verified when filled.
        verify = verify and not constants.HF_HUB_OFFLINE
        if verify:
            _verify_against_hub(repo_id, files, revision)
    except DownloadError:
        raise
    except Exception as exc:
        raise _explain_hub_error(repo_id, exc) from exc
    return Downloaded(path=root, files=tuple(files.values()), verified=verify)


def download(
    name: str,
    *,
    destination: Path | None = None,
    filenames: Sequence[str] = (),
    include: Sequence[str] = (),
    revision: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    verify: bool = True,
    force: bool = False,
) -> Downloaded:
    """One entry point for ``pandagpt download NAME``.

    ``NAME`` is ``imagebind``, a short delta name from :data:`PANDAGPT_DELTAS`, or any Hub
    repo id (``owner/name``), e.g. an HF-format Vicuna/LLaMA checkpoint.
    """
    if name == IMAGEBIND:
        return download_imagebind(
            destination, url=url or IMAGEBIND_HUGE_URL, sha256=sha256, force=force
        )
    if url is not None or sha256 is not None:
        raise ValueError("--url and --sha256 only apply to `imagebind`; Hub files carry their own")
    repo_id = PANDAGPT_DELTAS.get(name, name)
    if repo_id.count("/") != 1:
        raise ValueError(
            f"unknown download {name!r}: use one of {', '.join(known_downloads())} "
            "or a Hugging Face repo id like owner/name"
        )
    if name in PANDAGPT_DELTAS and not filenames and not include:
        filenames = (DELTA_FILENAME,)
    return download_from_hub(
        repo_id,
        filenames=filenames,
        include=include,
        revision=revision,
        local_dir=destination,
        verify=verify,
        force=force,
    )


def download_llm(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: Path | None = None,
    verify: bool = True,
) -> Downloaded:
    """Fetches a Hugging Face-format LLM (config, tokenizer, weights) in one weight format only:
    safetensors when the repo has them, else ``.bin`` (many repos carry both, twice the bytes)."""
    try:
        names = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as exc:
        raise _explain_hub_error(repo_id, exc) from exc
    weights = "*.safetensors" if any(n.endswith(".safetensors") for n in names) else "*.bin"
    return download_from_hub(
        repo_id,
        include=("*.json", "*.model", weights),
        revision=revision,
        local_dir=local_dir,
        verify=verify,
    )


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (how the Hub identifies files not stored in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_against_hub(repo_id: str, files: dict[str, Path], revision: str | None) -> None:
    """Compares each local file with the checksum the Hub lists for it."""
    for info in HfApi().get_paths_info(repo_id, list(files), revision=revision):
        if not isinstance(info, RepoFile):
            continue
        local = files[info.path]
        expected = info.lfs.sha256 if info.lfs is not None else info.blob_id
        actual = sha256_of(local) if info.lfs is not None else git_blob_sha1(local)
        if actual != expected:
            raise DownloadError(
                f"{repo_id}/{info.path}: checksum mismatch (expected {expected}, got {actual}); "
                "run the download again with --force"
            )


def _explain_hub_error(repo_id: str, exc: Exception) -> DownloadError:
    """Turns ``huggingface_hub``/network exceptions into one actionable message."""
    if isinstance(exc, GatedRepoError):
        problem = "is gated: accept its terms on huggingface.co and log in with `hf auth login`"
    elif isinstance(exc, RepositoryNotFoundError):
        problem = "was not found (check the name, or log in with `hf auth login` if private)"
    elif isinstance(exc, RevisionNotFoundError):
        problem = "has no such revision"
    elif _is_unreachable(exc):
        problem = (
            "cannot be reached and is not in the local cache (offline? HF_HUB_OFFLINE set?); "
            "connect and run the command again, it resumes where it stopped"
        )
    elif isinstance(exc, HfHubHTTPError | OSError):
        problem = f"download failed ({exc}); run the command again to resume"
    else:
        raise exc
    return DownloadError(f"{repo_id} {problem}")


def _is_unreachable(exc: Exception) -> bool:
    """True for "no network" failures.

    ``huggingface_hub``'s HTTP client changed across releases (requests, httpx, httpx2), so
    transport errors are recognised by their class name rather than imported.
    """
    if isinstance(exc, OfflineModeIsEnabled | LocalEntryNotFoundError | ConnectionError):
        return True
    return any(cls.__name__ in {"TransportError", "Timeout"} for cls in type(exc).__mro__)
