"""User prompts from a JSONL file.

Each non-blank line is one JSON object with a non-empty string `"prompt"`; every other key is an
extra field handed to the reward function (TRL convention: one list per field, one entry per row).
Blank lines are skipped. Errors are `UserError`s naming `file:line` and the problem:
not JSON, not an object, missing / non-string / empty "prompt"; a missing or unreadable file, bad
UTF-8, and a file with no prompts at all are errors too.

Left out: Parquet and HF `datasets` inputs, chat-formatted prompts (lists of messages).
"""

from __future__ import annotations

import json
from pathlib import Path

from fastrlhf.errors import UserError


def load_prompts(path: str | Path) -> list[dict]:
    """Rows `{"prompt": str, ...extra fields}` from the JSONL file at `path`, in file order."""
    path = Path(path)
    rows = [_parse_line(path, number, line) for number, line in _read_lines(path)]
    if not rows:
        raise UserError(f"{path}: no prompts (the file is empty)")
    return rows


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines of `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: prompts file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL prompts file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read prompts file ({exc.strerror})") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _parse_line(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(row)}")
    if "prompt" not in row:
        raise UserError(f"{where}: missing \"prompt\" (keys: {', '.join(row) or 'none'})")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise UserError(f"{where}: \"prompt\" must be a string, got {_json_type(prompt)}")
    if not prompt.strip():
        raise UserError(f"{where}: \"prompt\" is empty")
    return row


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def reward_fields(rows: list[dict]) -> dict[str, list]:
    """Per-field lists of the rows' extra fields (every key but "prompt"), TRL style.

    A key missing from some rows gives `None` in those rows' positions.
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(key for key in row if key != "prompt"))
    return {key: [row.get(key) for row in rows] for key in keys}
