"""The training progress display: a rich progress bar with ETA plus one compact line per step.

    step 12/80  reward 0.41  kl 0.003  len 5.2  tok/s 5123  time gen 0.21s ref 0.02s train 0.35s

On a terminal the lines scroll above a live bar (`rich`); on anything else (CI logs, pipes, files)
only the plain lines are printed, each ending with the ETA, and no ANSI escape ever appears.
Progress goes to stdout, with the run's results; stderr carries only errors and warnings, so a
failed run's stderr is its one error line (`2> err.txt` captures exactly that).
Which metrics are shown is the caller's choice (`fields`); the default reads the shared names of
`fastrlhf.telemetry.metrics` and every `time/<call>` key, in the order they were given.

Left out: multi-line dashboards, per-rank displays (only rank 0 should show progress), and
colouring values by whether they improved.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from fastrlhf.telemetry.metrics import KL, RESPONSE_LENGTH, REWARD, TIME_PREFIX, TOKENS_PER_S

# (label, metric key) in display order
DEFAULT_FIELDS: tuple[tuple[str, str], ...] = (
    ("reward", REWARD), ("kl", KL), ("len", RESPONSE_LENGTH), ("tok/s", TOKENS_PER_S),
    ("SKIPPED (non-finite update), skips so far", "nonfinite_skipped_total"))

# short names for the kind part of a model call name ("actor.generate" -> "gen")
_KIND_LABELS = {"generate": "gen", "inference": "inf", "train": "train", "score": "score"}


class Progress:
    """Context manager showing training progress; call `update(step, metrics)` after each step.

    `step` counts completed steps (1..total_steps); `start_step` is where a resumed run begins.
    With `enabled=False` nothing is printed (e.g. on non-zero ranks).
    """

    def __init__(self, total_steps: int, start_step: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, fields: Sequence[tuple[str, str]] = DEFAULT_FIELDS,
                 clock: Callable[[], float] = time.monotonic):
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.enabled = enabled
        self.stream = sys.stdout if stream is None else stream
        self.fields = tuple(fields)
        self.clock = clock
        self.tty = enabled and is_tty(self.stream)
        self._started: float | None = None
        self._bar = None
        self._task = None

    def __enter__(self) -> "Progress":
        self._started = self.clock()
        if self.tty:
            self._start_bar()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def update(self, step: int, metrics: Mapping[str, float]) -> str:
        """Show `step` as done with its metrics; return the plain line (also when disabled)."""
        line = format_step(step, self.total_steps, metrics, self.fields)
        if not self.enabled:
            return line
        if self._bar is not None:
            self._bar.update(self._task, completed=step)
            self._bar.refresh()  # so the bar redrawn below the line already shows this step
            self._bar.console.print(line, highlight=False, markup=False)
        else:
            eta = self.eta(step)
            suffix = f"  eta {format_duration(eta)}" if eta is not None else ""
            self.stream.write(f"{line}{suffix}\n")
            self.stream.flush()
        return line

    def phase(self, msg: str) -> None:
        """A one-off status line (e.g. an evaluation result), printed above the bar if one shows."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(f"> {msg}", highlight=False, markup=False)
        else:
            phase(msg, self.stream)

    def eta(self, step: int) -> float | None:
        """Seconds left, from the mean time per step since the display started (None if unknown)."""
        if self._started is None or step <= self.start_step:
            return None
        per_step = (self.clock() - self._started) / (step - self.start_step)
        return max(0, self.total_steps - step) * per_step

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        console = Console(file=self.stream, force_terminal=True)
        self._bar = RichProgress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=console, refresh_per_second=4, transient=False)
        self._task = self._bar.add_task("train", total=self.total_steps, completed=self.start_step)
        self._bar.start()


def phase(msg: str, stream: TextIO | None = None) -> None:
    """Print a one-off status line ("preparing built-in policy...") on its own line."""
    stream = sys.stdout if stream is None else stream
    if is_tty(stream):
        from rich.console import Console

        Console(file=stream, force_terminal=True).print(f"[bold cyan]>[/] {msg}", highlight=False)
    else:
        stream.write(f"> {msg}\n")
        stream.flush()


def format_step(step: int, total: int, metrics: Mapping[str, float],
                fields: Sequence[tuple[str, str]] = DEFAULT_FIELDS) -> str:
    """`step 12/80  reward 0.41  kl 0.003 ... time gen 0.21s ref 0.02s`; absent keys are skipped."""
    parts = [f"step {step}/{total}"]
    parts += [f"{label} {format_number(metrics[key])}" for label, key in fields if key in metrics]
    times = [f"{call_label(key[len(TIME_PREFIX):])} {format_seconds(value)}"
             for key, value in metrics.items() if key.startswith(TIME_PREFIX)]
    if times:
        parts.append("time " + " ".join(times))
    return "  ".join(parts)


def call_label(call: str) -> str:
    """Short label of a model call: actor calls by kind (`gen`, `train`), others by role (`ref`)."""
    role, _, kind = call.partition(".")
    if not kind:
        return call
    short = _KIND_LABELS.get(kind, kind)
    if role == "actor":
        return short
    return role if kind in ("inference", "score") else f"{role}.{short}"


def format_number(value: float | None) -> str:
    """Compact: 3 significant digits below 1000 (0.41, 0.003, 5.2), whole numbers above (5123)."""
    if value is None or not math.isfinite(float(value)):
        return "nan"
    value = float(value)
    if abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def format_seconds(value: float | None) -> str:
    """Wall time of one call: 4.2ms, 0.21s, 12.3s, 154s."""
    if value is None or not math.isfinite(float(value)):
        return "nan"
    value = float(value)
    if value < 0.01:
        return f"{value * 1000:.1f}ms"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s" if value < 100 else f"{value:.0f}s"


def format_duration(seconds: float) -> str:
    """`m:ss` below an hour, `h:mm:ss` above."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def is_tty(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (False for files, pipes and StringIO)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # closed stream
        return False
