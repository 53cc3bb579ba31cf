"""Offline training data from JSONL files: SFT examples and preference pairs.

SFT file: each non-blank line is a JSON object with string fields "prompt" and "response"
(other keys are ignored). Preference file: string fields "prompt", "chosen" and "rejected"; every
other key is kept as an extra field (e.g. the preference task's "digits"). Blank lines are skipped.
The prompt must not be empty; a response / completion may be (an empty completion is a real
answer a labeller can rank).

Errors are one-line `UserError`s naming `file:line` and the problem: not JSON, not an object,
a missing or non-string field, an empty prompt; a missing / unreadable / non-UTF-8 file and a
file without rows are errors too (same house style as `tasks/prompts.py`).

Left out: Parquet / HF `datasets` inputs, chat-formatted (list of messages) fields, ties.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastrlhf.errors import UserError

SFT_FIELDS = ("prompt", "response")
PAIR_FIELDS = ("prompt", "chosen", "rejected")


def load_sft_examples(path: str | Path) -> list[dict]:
    """Rows {"prompt", "response"} (strings) from the JSONL file at `path`, in file order."""
    rows = _load(Path(path), SFT_FIELDS, "SFT examples")
    return [{key: row[key] for key in SFT_FIELDS} for row in rows]


def load_preference_pairs(path: str | Path) -> list[dict]:
    """Rows {"prompt", "chosen", "rejected", **extra fields} from the JSONL file at `path`, in file order."""
    return _load(Path(path), PAIR_FIELDS, "preference pairs")


def _load(path: Path, fields: tuple[str, ...], what: str) -> list[dict]:
    rows = [_parse_line(f"{path}:{number}", line, fields) for number, line in _read_lines(path, what)]
    if not rows:
        raise UserError(f"{path}: no {what} (the file is empty)")
    return rows


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL file of {what}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _parse_line(where: str, line: str, fields: tuple[str, ...]) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(row)}")
    for field in fields:
        if field not in row:
            raise UserError(f"{where}: missing \"{field}\" (keys: {', '.join(row) or 'none'})")
        if not isinstance(row[field], str):
            raise UserError(f"{where}: \"{field}\" must be a string, got {_json_type(row[field])}")
    if not row["prompt"].strip():
        raise UserError(f"{where}: \"prompt\" is empty")
    return row


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
