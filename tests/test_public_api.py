"""The package root re-exports the public API, lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import langchain_pandagpt


@pytest.mark.parametrize("name", langchain_pandagpt.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(langchain_pandagpt, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute"):
        _ = langchain_pandagpt.NotAThing  # type: ignore[attr-defined]


def test_import_does_not_load_transformers_or_langchain() -> None:
    code = (
        "import sys, langchain_pandagpt; "
        "print(any(m.split('.')[0] in {'transformers', 'langchain_core'} for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
