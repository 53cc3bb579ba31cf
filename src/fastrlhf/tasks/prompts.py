"""User prompts from a JSONL file.

Each non-blank line is one JSON object with a non-empty string `"prompt"`; every other key is an
extra field handed to the reward function (TRL convention: one list per field, one entry per row).
Lines end at "\\n" (or "\\r\\n") only — a JSON string may hold U+2028, U+0085, form feeds unescaped —
and a leading byte-order mark is dropped. Blank lines are skipped. Errors are `UserError`s naming
`file:line` and the problem: not JSON (also nesting too deep, integers of more than 4300 digits),
not an object, missing / non-string / empty "prompt", a prompt with a lone surrogate escape
("\\ud800": not Unicode text); a missing or unreadable file, bad UTF-8, and a file with no prompts
at all are errors too.

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
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark (Windows editors) is dropped
    except FileNotFoundError:
        raise UserError(f"{path}: prompts file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a JSONL prompts file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read prompts file ({exc.strerror})") from None
    # JSONL lines end at "\n" (or "\r\n") only: str.splitlines would also split inside a JSON string at
    # U+2028, U+0085, form feeds, ... which json.dumps(ensure_ascii=False) writes unescaped
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def _parse_line(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than the stack
        raise UserError(f"{where}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {_json_type(row)}")
    if "prompt" not in row:
        raise UserError(f"{where}: missing \"prompt\" (keys: {_key_list(row)})")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise UserError(f"{where}: \"prompt\" must be a string, got {_json_type(prompt)}")
    if not prompt.strip():
        raise UserError(f"{where}: \"prompt\" is empty")
    if not _is_unicode(prompt):
        raise UserError(f"{where}: \"prompt\" is not valid Unicode text (it holds a lone surrogate, e.g. \"\\ud800\")")
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


def reward_fields(rows: list[dict]) -> dict[str, list]:
    """Per-field lists of the rows' extra fields (every key but "prompt"), TRL style.

    A key missing from some rows gives `None` in those rows' positions.
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(key for key in row if key != "prompt"))
    return {key: [row.get(key) for row in rows] for key in keys}
