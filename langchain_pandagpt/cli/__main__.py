"""``python -m langchain_pandagpt.cli``: the ``pandagpt`` command without the console script."""

from langchain_pandagpt.cli import app

app(prog_name="pandagpt")
