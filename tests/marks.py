"""Shared test marks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

_Test = TypeVar("_Test", bound=Callable[..., None])

#: Time limit for tests whose work runs in child processes (CLI runs, ``pandagpt serve``,
#: notebook kernels, ``accelerate launch``): each child has its own, clearer timeout, and a
#: batch of them took up to ~230 s on a 2-core machine shared with other work. The 120 s default
#: (pyproject.toml) guards in-process code, where worker-thread deadlocks would hang.
CHILD_PROCESS_TIMEOUT_S = 600


def child_processes(test: _Test) -> _Test:
    """Marks a test ``slow`` with the child-process time limit. Apply it to every test that
    asks for a child-process fixture: its setup is charged to whichever of them runs first."""
    return pytest.mark.slow(pytest.mark.timeout(CHILD_PROCESS_TIMEOUT_S)(test))
