"""Training data: three record formats read into checked conversations, with a report.

Formats (``DataSource.format``; ``auto`` picks ``jsonl`` for ``.jsonl`` files and otherwise looks
at the first record's keys):

* ``reference``: PandaGPT's JSON list of ``{"image_name", "conversation": [{"from", "value"}]}``.
  ``.jpg`` is appended to a name without a file extension, as the reference loader does.
* ``llava``: LLaVA's JSON list of ``{"id", "image"?, "conversations": [{"from", "value"}]}``;
  the ``<image>`` placeholders are removed (our layout places the media itself).
* ``jsonl``: ours, one record per line, any modality and any number of media items::

      {"id": "rec-1", "media": [{"modality": "audio", "path": "clips/dog.wav"}],
       "conversation": [{"from": "human", "value": "What is this?"},
                        {"from": "gpt", "value": "A dog barking."}]}

Media paths are relative to ``media_root`` (default: the data file's folder). Every format
uses the reference roles ``human`` / ``gpt``; the media goes with the first human turn.

Nothing is dropped silently: every bad record lands in a :class:`DataReport` with its reasons,
and ``on_error`` decides whether bad records are skipped (counted and listed) or fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict

from langchain_pandagpt.conversation import MEDIA_MODALITIES, MediaItem, Message
from langchain_pandagpt.errors import PandaGPTError

DataFormat: TypeAlias = Literal["auto", "reference", "llava", "jsonl"]
OnError: TypeAlias = Literal["skip", "fail"]

LLAVA_PLACEHOLDER = "<image>"
#: The reference dataset's role names, and the message roles they become.
ROLES: dict[str, Literal["human", "assistant"]] = {"human": "human", "gpt": "assistant"}


class DataError(PandaGPTError, ValueError):
    """A data file cannot be read, or it has bad records and ``on_error`` is ``fail``."""


class DataSource(BaseModel):
    """One data file: where it is, its format and where its media paths start from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    format: DataFormat = "auto"
    media_root: Path | None = None


@dataclass(frozen=True)
class Sample:
    """One valid conversation; ``record`` says where it came from (for reports)."""

    record: str
    messages: tuple[Message, ...]

    @property
    def media(self) -> list[MediaItem]:
        return [item for message in self.messages for item in message.media]


@dataclass(frozen=True)
class Problem:
    """Why one record (or one media item, for precompute) cannot be used."""

    record: str
    reason: str


def problem_lines(problems: Sequence[Problem], limit: int | None = 50) -> list[str]:
    """One indented line per problem, the first ``limit`` of them, then how many were left out."""
    shown = problems if limit is None else problems[:limit]
    lines = [f"  {problem.record}: {problem.reason}" for problem in shown]
    if len(shown) < len(problems):
        lines.append(f"  ... and {len(problems) - len(shown)} more")
    return lines


@dataclass
class DataReport:
    """The outcome of reading a dataset: the valid samples and every problem found."""

    records: int = 0
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad_records(self) -> int:
        return len({problem.record for problem in self.problems})

    def summary(self, limit: int | None = 50) -> str:
        """A human-readable report: counts, then one line per problem (the first ``limit``)."""
        counts = (
            f"{self.records} records, {len(self.samples)} usable, {self.bad_records} bad "
            f"({len(self.problems)} problems)"
        )
        return "\n".join([counts, *problem_lines(self.problems, limit)])

    def usable(self, on_error: OnError) -> list[Sample]:
        """The valid samples; raises :class:`DataError` with the report if ``fail`` and bad ones."""
        if self.problems and on_error == "fail":
            raise DataError(
                f"bad training data (use --on-error skip to skip these records):\n{self.summary()}"
            )
        return self.samples

    def extend(self, other: DataReport) -> None:
        self.records += other.records
        self.samples += other.samples
        self.problems += other.problems


@dataclass
class _Record:
    """A record in a format-neutral shape, before validation."""

    name: str
    media: list[tuple[str, str]]  # (modality, path relative to the media root)
    turns: Any  # the raw [{from, value}] list, checked by _turn_problems
    problems: list[str] = field(default_factory=list)


def _record_name(file: Path, position: str, raw: Any) -> str:
    ident = raw.get("id") if isinstance(raw, dict) else None
    return f"{file.name}{position}" + (f" (id {ident})" if ident is not None else "")


def _reference_record(raw: dict[str, Any], name: str) -> _Record:
    image = raw.get("image_name")
    record = _Record(name, [], raw.get("conversation", []))
    if not isinstance(image, str) or not image:
        record.problems.append("no image_name")
    else:
        record.media.append(("image", image if Path(image).suffix else image + ".jpg"))
    return record


def _llava_record(raw: dict[str, Any], name: str) -> _Record:
    record = _Record(name, [], raw.get("conversations", []))
    image = raw.get("image")
    if image is not None:
        if isinstance(image, str) and image:
            record.media.append(("image", image))
        else:
            record.problems.append(f"image must be a file name, got {image!r}")
    if isinstance(record.turns, list):
        record.turns = [_without_placeholder(turn) for turn in record.turns]
    return record


def _without_placeholder(turn: Any) -> Any:
    value = turn.get("value") if isinstance(turn, dict) else None
    if isinstance(value, str) and LLAVA_PLACEHOLDER in value:
        return {**turn, "value": value.replace(LLAVA_PLACEHOLDER, "").strip()}
    return turn


def _jsonl_record(raw: dict[str, Any], name: str) -> _Record:
    record = _Record(name, [], raw.get("conversation", []))
    media = raw.get("media", [])
    if not isinstance(media, list):
        record.problems.append("media must be a list of {modality, path}")
        return record
    for index, item in enumerate(media):
        modality = item.get("modality") if isinstance(item, dict) else None
        path = item.get("path") if isinstance(item, dict) else None
        if modality not in MEDIA_MODALITIES:
            record.problems.append(
                f"media {index}: modality must be one of {', '.join(MEDIA_MODALITIES)}, "
                f"got {modality!r}"
            )
        elif not isinstance(path, str) or not path:
            record.problems.append(f"media {index}: no path")
        else:
            record.media.append((modality, path))
    return record


_PARSERS = {"reference": _reference_record, "llava": _llava_record, "jsonl": _jsonl_record}


def _raw_records(source: DataSource) -> tuple[str, Iterator[tuple[str, Any]]]:
    """The resolved format and ``(position, raw record)`` pairs; JSONL lines may fail to parse."""
    path = source.path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the data file ({exc})") from exc
    if source.format == "jsonl" or (source.format == "auto" and path.suffix == ".jsonl"):
        return "jsonl", _jsonl_lines(text)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); JSON Lines files need .jsonl") from exc
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    data_format = source.format
    if data_format == "auto":
        first = records[0] if records and isinstance(records[0], dict) else {}
        data_format = "llava" if "conversations" in first else "reference"
    return data_format, ((f"[{index}]", raw) for index, raw in enumerate(records))


def _jsonl_lines(text: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f":{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f":{number}", exc


def _turn_problems(turns: Any) -> list[str]:
    """Problems of a ``[{from, value}]`` list: shape, empty turns, unknown or misordered roles."""
    if not isinstance(turns, list) or not turns:
        return ["no conversation turns"]
    problems = []
    previous = None
    for index, turn in enumerate(turns):
        role = turn.get("from") if isinstance(turn, dict) else None
        value = turn.get("value") if isinstance(turn, dict) else None
        if role not in ROLES:
            problems.append(f"turn {index}: role must be 'human' or 'gpt', got {role!r}")
        elif index == 0 and role != "human":
            problems.append(f"first turn is {role!r}, must be 'human'")
        elif role == previous:
            problems.append(f"turn {index}: two {role!r} turns in a row (roles must alternate)")
        if not isinstance(value, str) or not value.strip():
            problems.append(f"turn {index}: empty text")
        previous = role
    if not problems and not any(turn["from"] == "gpt" for turn in turns):
        problems.append("no 'gpt' answer to learn from")
    return problems


def _to_sample(record: _Record, media_root: Path) -> Sample | list[str]:
    """The sample of a record, or the list of everything wrong with it."""
    problems = record.problems + _turn_problems(record.turns)
    items = []
    for modality, relative in record.media:
        path = media_root / relative
        if not path.is_file():
            problems.append(f"missing media {path}")
        items.append(MediaItem(modality, str(path)))
    if problems:
        return problems
    messages = [Message(ROLES[turn["from"]], turn["value"]) for turn in record.turns]
    messages[0].media.extend(items)
    return Sample(record.name, tuple(messages))


def read_source(source: DataSource) -> DataReport:
    """Reads and checks one data file; only an unreadable file raises."""
    data_format, raw_records = _raw_records(source)
    parse = _PARSERS[data_format]
    media_root = source.media_root if source.media_root is not None else source.path.parent
    report = DataReport()
    for position, raw in raw_records:
        report.records += 1
        name = _record_name(source.path, position, raw)
        if isinstance(raw, json.JSONDecodeError):
            report.problems.append(Problem(name, f"not valid JSON ({raw})"))
            continue
        if not isinstance(raw, dict):
            report.problems.append(Problem(name, f"expected an object, got {type(raw).__name__}"))
            continue
        result = _to_sample(parse(raw, name), media_root)
        if isinstance(result, Sample):
            report.samples.append(result)
        else:
            report.problems += [Problem(name, reason) for reason in result]
    return report


def read_dataset(sources: Sequence[DataSource]) -> DataReport:
    """Reads and checks every data file, in order."""
    report = DataReport()
    for source in sources:
        report.extend(read_source(source))
    return report
