"""The one JSONL row reader of the user's data files (prompts, SFT examples, preference pairs).

`read_rows(path, fields, what)`: the JSON objects of the non-blank lines of `path`, in file order,
each holding the string `fields` (the first one, the prompt, non-empty). Lines end at "\\n" (or
"\\r\\n") only — str.splitlines would also split inside a JSON string at U+2028, U+0085 or a form
feed, which `json.dumps(ensure_ascii=False)` writes unescaped — and a leading byte-order mark is
dropped. Every problem is a one-line `UserError` naming `file:line`: not JSON (also nesting deeper
than the stack, integers of more than 4300 digits), not an object, a missing or non-string field,
a field with a lone surrogate escape ("\\ud800": not Unicode text, no tokenizer takes it), an empty
prompt; a missing / unreadable / non-UTF-8 file and a file without rows too.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastrlhf.errors import UserError


def read_rows(path: str | Path, fields: tuple[str, ...], what: str) -> list[dict]:
    """Checked rows of the JSONL file at `path`; `what` names the data in messages ("prompts")."""
    path = Path(path)
    rows = [parse_row(f"{path}:{number}", line, fields) for number, line in read_lines(path, what)]
    if not rows:
        raise UserError(f"{path}: no {what} (the file is empty)")
    return rows


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
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
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]


def parse_row(where: str, line: str, fields: tuple[str, ...]) -> dict:
    """One line as a JSON object holding the string `fields`; `fields[0]` (the prompt) non-empty."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting deeper than the stack
        raise UserError(f"{where}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {json_type(row)}")
    for field in fields:
        if field not in row:
            raise UserError(f"{where}: missing \"{field}\" (keys: {key_list(row)})")
        if not isinstance(row[field], str):
            raise UserError(f"{where}: \"{field}\" must be a string, got {json_type(row[field])}")
        if not is_unicode(row[field]):
            raise UserError(f"{where}: \"{field}\" is not valid Unicode text (it holds a lone surrogate, "
                            "e.g. \"\\ud800\")")
    if not row[fields[0]].strip():
        raise UserError(f"{where}: \"{fields[0]}\" is empty")
    return row


def is_unicode(text: str) -> bool:
    """False for strings with lone surrogates (JSON allows the escape "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_list(row: dict, limit: int = 8) -> str:
    """The row's keys for a one-line message: escaped when not printable, long ones and long lists cut."""
    names = [key if key.isprintable() else repr(key)[1:-1] for key in list(row)[:limit]]
    names = [name if len(name) <= 40 else name[:40] + "..." for name in names]
    return ", ".join(names) + (f", ... ({len(row)} keys)" if len(row) > limit else "") if names else "none"


def json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)
