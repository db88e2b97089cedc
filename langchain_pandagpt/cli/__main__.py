"""``python -m langchain_pandagpt.cli``: the ``pandagpt`` command without the console script.

Tests, benchmarks and ``serve_in_subprocess`` start the CLI this way with ``sys.executable``,
so they run this interpreter's code, never whichever ``pandagpt`` comes first on ``PATH``.
"""

from langchain_pandagpt.cli import app

if __name__ == "__main__":
    app(prog_name="pandagpt")
