"""Shared fixtures: one tiny random bundle per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_pandagpt.model.tiny import create_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny bundle (seed 0, reference ``pytorch_model.pt`` adapter).

    Shared by the whole session: treat it as read-only (copy it to change a part).
    """
    return create_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bundle"), seed=0)
