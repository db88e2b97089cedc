"""Downloads into the user cache: resumable, atomic, checksummed, with a progress bar.

Everything that may touch the network goes through :func:`download_url`, so there is one place
that decides timeouts, resume and integrity checks. Callers decide whether downloading is
allowed at all.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Final

from tqdm.auto import tqdm

from langchain_pandagpt.errors import PandaGPTError

CACHE_ENV: Final = "PANDAGPT_CACHE"
_CHUNK: Final = 1 << 20


class DownloadError(PandaGPTError, OSError):
    """A download failed or produced a file with the wrong checksum."""


def cache_dir(*parts: str) -> Path:
    """``$PANDAGPT_CACHE`` (default ``~/.cache/langchain_pandagpt``) joined with ``parts``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "langchain_pandagpt"
    folder = Path(root).expanduser().joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_url(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Downloads ``url`` to ``destination``, resuming a previous partial ``.part`` file.

    The file only appears under its final name once complete (and checksum-verified when
    ``sha256`` is given), so an interrupted download never looks finished.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if done and response.status != 206:  # server ignored the range: start over
                done = 0
            total = response.headers.get("Content-Length")
            size = int(total) + done if total else None
            mode = "ab" if done else "wb"
            with (
                partial.open(mode) as out,
                tqdm(
                    total=size,
                    initial=done,
                    unit="B",
                    unit_scale=True,
                    desc=destination.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DownloadError(
            f"downloading {url} failed ({exc}); run the command again to resume"
        ) from exc
    if sha256 is not None and sha256_of(partial) != sha256:
        partial.unlink()
        raise DownloadError(f"{url}: checksum mismatch (expected sha256 {sha256}); try again")
    os.replace(partial, destination)
    return destination
