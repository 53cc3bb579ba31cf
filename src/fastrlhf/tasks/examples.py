"""Offline training data from JSONL files: SFT examples and preference pairs.

SFT file: each non-blank line is a JSON object with string fields "prompt" and "response"
(other keys are ignored). Preference file: string fields "prompt", "chosen" and "rejected"; every
other key is kept as an extra field (e.g. the preference task's "digits"). Lines end at "\\n" (or
"\\r\\n") only, a leading byte-order mark is dropped, and blank lines are skipped.
The prompt must not be empty; a response / completion may be (an empty completion is a real
answer a labeller can rank).

Errors are one-line `UserError`s naming `file:line` and the problem: not JSON, not an object,
a missing or non-string field, a field with a lone surrogate escape ("\\ud800"), an empty prompt;
a missing / unreadable / non-UTF-8 file and a file without rows are errors too (`tasks/jsonl.py`,
the reader shared with `tasks/prompts.py`).

Left out: Parquet / HF `datasets` inputs, chat-formatted (list of messages) fields, ties.
"""

from __future__ import annotations

from pathlib import Path

from fastrlhf.tasks.jsonl import read_rows

SFT_FIELDS = ("prompt", "response")
PAIR_FIELDS = ("prompt", "chosen", "rejected")


def load_sft_examples(path: str | Path) -> list[dict]:
    """Rows {"prompt", "response"} (strings) from the JSONL file at `path`, in file order."""
    rows = read_rows(path, SFT_FIELDS, "SFT examples")
    return [{key: row[key] for key in SFT_FIELDS} for row in rows]


def load_preference_pairs(path: str | Path) -> list[dict]:
    """Rows {"prompt", "chosen", "rejected", **extra fields} from the JSONL file at `path`, in file order."""
    return read_rows(path, PAIR_FIELDS, "preference pairs")
