"""The ``pandagpt`` command line: thin wrappers over library functions.

Each command lives in the submodule of its topic; importing them registers them on ``app``.
Errors a user can cause print one red line and exit with status 1 (``common.user_errors``);
anything else is a bug and keeps its traceback.
"""

from langchain_pandagpt.cli import chat, media, serve, weights
from langchain_pandagpt.cli.common import app

__all__ = ["app", "chat", "media", "serve", "weights"]
