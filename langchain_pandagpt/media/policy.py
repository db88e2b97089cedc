"""Where media may be read from: the one policy of ChatPandaGPT, the embeddings, the server
and the CLI.

Inline data (base64, ``data:`` URLs) is always accepted. Local files (plain paths, ``file:``
URLs) are read only with ``allow_local_files`` (servers turn it off: a request must never read
the server's files). ``http(s)`` URLs are fetched only with ``allow_remote_media`` (off by
default: fetching is a server-side request), within ``remote_media_max_bytes`` and
``remote_media_timeout`` (seconds per network operation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

#: Largest remote file fetched by default (50 MiB).
DEFAULT_REMOTE_MAX_BYTES: Final = 50 * 2**20
#: Default timeout of each network operation of a remote fetch, in seconds.
DEFAULT_REMOTE_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class MediaPolicy:
    """Where media may be read from (see the module docstring).

    ``max_bytes_setting`` is the name under which the caller exposes the byte cap (e.g.
    ``max_remote_bytes`` on ``ImageBindEmbeddings``), so "too big" errors say what to raise.
    """

    allow_local_files: bool = True
    allow_remote_media: bool = False
    remote_media_max_bytes: int = DEFAULT_REMOTE_MAX_BYTES
    remote_media_timeout: float = DEFAULT_REMOTE_TIMEOUT_S
    max_bytes_setting: str = field(default="remote_media_max_bytes", compare=False)

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
