"""Exception types shared by the whole library.

Every error a user can cause (bad media, bad checkpoint, bad request) derives from
``ValueError`` so that LangChain and plain Python callers can catch it the usual way, and
its message names the offending input and says how to fix it.
"""

from __future__ import annotations


class PandaGPTError(Exception):
    """Base class of all errors raised on purpose by ``langchain_pandagpt``."""


class MediaError(PandaGPTError, ValueError):
    """A media input (image, audio, video, depth, thermal, IMU) cannot be used.

    ``source`` is a short human-readable description of the input (a path, ``<bytes: 123 B>``...).
    """

    def __init__(self, source: str, problem: str, fix: str | None = None) -> None:
        self.source = source
        self.problem = problem
        self.fix = fix
        message = f"{source}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class CheckpointError(PandaGPTError, ValueError):
    """A checkpoint or bundle is missing, incomplete or does not fit the model."""


class DownloadNotAllowedError(PandaGPTError, PermissionError):
    """A download was needed but the caller did not allow network access."""
