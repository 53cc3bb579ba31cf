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

from pathlib import Path

from fastrlhf.tasks.jsonl import read_rows


def load_prompts(path: str | Path) -> list[dict]:
    """Rows `{"prompt": str, ...extra fields}` from the JSONL file at `path`, in file order (`tasks/jsonl.py`)."""
    return read_rows(path, ("prompt",), "prompts")


def reward_fields(rows: list[dict]) -> dict[str, list]:
    """Per-field lists of the rows' extra fields (every key but "prompt"), TRL style.

    A key missing from some rows gives `None` in those rows' positions.
    """
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(key for key in row if key != "prompt"))
    return {key: [row.get(key) for row in rows] for key in keys}
