"""Question sets: JSON Lines files, read with a clear error for each bad line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from kb_assistant.errors import KBError


def read_questions(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """The records of a JSONL question file, each holding the ``required`` fields.

    Raises:
        KBError: the file is missing, empty, or a line is not a JSON object with those fields.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KBError(f"question file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KBError(f"cannot read question file {path}: {exc}") from exc
    records: list[dict[str, Any]] = []
    ids: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KBError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise KBError(f"{path}, line {number}: expected a JSON object")
        missing = [f for f in required if f not in record]
        if missing:
            raise KBError(f"{path}, line {number}: missing field(s) {', '.join(missing)}")
        if "id" in record:
            if str(record["id"]) in ids:
                raise KBError(f"{path}, line {number}: id {record['id']!r} appears twice")
            ids.add(str(record["id"]))
        records.append(record)
    if not records:
        raise KBError(f"{path} holds no questions")
    return records


Progress = Callable[[int, int], None]  # (questions done, questions in all)
T = TypeVar("T")


def each(records: list[T], progress: Progress | None) -> Iterator[T]:
    """The records in order, reporting progress after each one is handled."""
    total = len(records)
    if progress is not None:
        progress(0, total)
    for done, record in enumerate(records, start=1):
        yield record
        if progress is not None:
            progress(done, total)
