"""``metrics.jsonl``: one JSON record per logged optimizer step, appended as training goes.

A crash or a full disk can cut the last line short. Such a torn line must not break what
comes after: readers skip it with a warning, a new record never glues onto it (it starts on
a fresh line), and a resumed run rewrites the file atomically with only the whole records up
to its checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from training.atomic import TMP_SUFFIX, publish

METRICS = "metrics.jsonl"

logger = logging.getLogger(__name__)


def _ends_torn(path: Path) -> bool:
    """Whether the file is non-empty and does not end with a newline."""
    with path.open("rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Appends ``record`` as one line, with a single ``write`` of an ``O_APPEND`` file."""
    line = json.dumps(record) + "\n"
    if path.exists() and _ends_torn(path):
        line = "\n" + line  # keep the torn fragment on a line of its own
    data = line.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The whole records of ``path`` (none if it does not exist); torn lines are skipped."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            logger.warning(
                "%s:%d: skipped a torn or unreadable record (cut off by a crash or a full disk?)",
                path,
                number,
            )
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keeps the records up to ``step`` (a resumed run logs the later ones again), atomically."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record["step"] <= step]
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
    publish(tmp, path)
