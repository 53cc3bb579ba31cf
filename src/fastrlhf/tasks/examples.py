"""Offline training data from JSONL files: SFT examples and preference pairs.

SFT file: each non-blank line is a JSON object with string fields "prompt" and "response"
(other keys are ignored). Preference file: string fields "prompt", "chosen" and "rejected"; every
other key is kept as an extra field (e.g. the preference task's "digits"). Lines end at "\\n" (or
"\\r\\n") only, a leading byte-order mark is dropped, and blank lines are skipped.
The prompt must not be empty; a response / completion may be (an empty completion is a real
answer a labeller can rank).

Errors are one-line `UserError`s naming `file:line` and the problem: not JSON, not an object,
a missing or non-string field, a field with a lone surrogate escape ("\\ud800"), an empty prompt;
a missing / unreadable / non-UTF-8 file and a file without rows are errors too (same house style
as `tasks/prompts.py`).

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
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is dropped
    except FileNotFoundError:
        raise UserError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL file of {what}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} file ({exc.strerror})") from None
    # JSONL lines end at "\n" (or "\r\n") only: str.splitlines would also split inside a JSON string at
    # U+2028, U+0085, form feeds, ... which json.dumps(ensure_ascii=False) writes unescaped
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def _parse_line(where: str, line: str, fields: tuple[str, ...]) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than the stack
        raise UserError(f"{where}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(row)}")
    for field in fields:
        if field not in row:
            raise UserError(f"{where}: missing \"{field}\" (keys: {_key_list(row)})")
        if not isinstance(row[field], str):
            raise UserError(f"{where}: \"{field}\" must be a string, got {_json_type(row[field])}")
        if not _is_unicode(row[field]):
            raise UserError(f"{where}: \"{field}\" is not valid Unicode text (it holds a lone surrogate, "
                            "e.g. \"\\ud800\")")
    if not row["prompt"].strip():
        raise UserError(f"{where}: \"prompt\" is empty")
    return row


def _is_unicode(text: str) -> bool:
    """False for strings with lone surrogates (JSON allows the escape "\\ud800"; no tokenizer takes them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _key_list(row: dict, limit: int = 8) -> str:
    """The row's keys for a one-line message: escaped when not printable, long ones and long lists cut."""
    names = [key if key.isprintable() else repr(key)[1:-1] for key in list(row)[:limit]]
    names = [name if len(name) <= 40 else name[:40] + "..." for name in names]
    return ", ".join(names) + (f", ... ({len(row)} keys)" if len(row) > limit else "") if names else "none"


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
