"""Where media may be read from: the one policy of ChatPandaGPT, the embeddings, the server
and the CLI.

Inline data (base64, ``data:`` URLs) is always accepted. Local files (plain paths, ``file:``
URLs) are read only with ``allow_local_files`` (servers turn it off: a request must never read
the server's files), only if they are regular files (no devices, FIFOs, ``/proc`` or ``/sys``),
and, with ``media_root`` set, only inside that folder. ``http(s)`` URLs are fetched only with
``allow_remote_media`` (off by default: fetching is a server-side request), from public
addresses only unless a host or network is in ``remote_allow_hosts``, within
``remote_media_max_bytes`` and ``remote_media_timeout`` (seconds for the whole fetch,
redirects included). See :mod:`~langchain_pandagpt.media.remote`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from langchain_pandagpt.media.remote import allow_entry

#: Largest remote file fetched by default (50 MiB).
DEFAULT_REMOTE_MAX_BYTES: Final = 50 * 2**20
#: Default time limit of a whole remote fetch (DNS, connection, redirects, body), in seconds.
DEFAULT_REMOTE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may be read from (see the module docstring).

    ``media_root``: when set, local paths must resolve (symlinks included) inside this folder,
    and relative paths are taken relative to it; paths outside it, missing files and
    non-regular files all get the same error, so a caller cannot probe the file system.

    ``remote_allow_hosts``: host names (``"media.intranet"``, matched exactly, case-insensitive)
    and IP addresses or networks (``"10.1.0.0/16"``, ``"127.0.0.1"``) that remote fetches may
    reach although they are loopback, private, link-local or otherwise non-public, for
    intranet use. Public addresses need no entry.

    ``max_bytes_setting`` is the name under which the caller exposes the byte cap (e.g.
    ``max_remote_bytes`` on ``ImageBindEmbeddings``), so "too big" errors say what to raise.
    """

    allow_local_files: bool = True
    allow_remote_media: bool = False
    remote_media_max_bytes: int = DEFAULT_REMOTE_MAX_BYTES
    remote_media_timeout: float = DEFAULT_REMOTE_TIMEOUT_S
    max_bytes_setting: str = field(default="remote_media_max_bytes", compare=False)
    media_root: Path | None = None
    remote_allow_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        limit = self.remote_media_max_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(
                f"{self.max_bytes_setting} must be a positive number of bytes, got {limit!r}"
            )
        timeout = self.remote_media_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ValueError(f"remote_media_timeout must be seconds, got {timeout!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"remote_media_timeout must be positive and finite, got {timeout!r}")
        if self.media_root is not None:
            if not isinstance(self.media_root, str | os.PathLike):
                raise ValueError(f"media_root must be a folder path, got {self.media_root!r}")
            root = Path(self.media_root).expanduser().resolve()
            if not root.is_dir():
                raise ValueError(f"media_root {os.fspath(self.media_root)!r} is not a folder")
            object.__setattr__(self, "media_root", root)
        hosts = self.remote_allow_hosts
        if isinstance(hosts, str) or not all(isinstance(host, str) for host in hosts):
            raise ValueError(
                f"remote_allow_hosts must be a list of host names and networks, got {hosts!r}"
            )
        try:
            entries = tuple(str(allow_entry(host)) for host in hosts)
        except ValueError as exc:
            raise ValueError(f"remote_allow_hosts entry {exc}") from None
        object.__setattr__(self, "remote_allow_hosts", entries)
