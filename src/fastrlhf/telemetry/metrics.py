"""Per-step metrics of a run: `RUN_DIR/metrics.jsonl` plus TensorBoard event files.

One JSON object per line, `{"step": 12, "time": 1763913600.5, "reward": 0.41, ...}`, flushed as
soon as it is written, so a crash loses at most the step being logged. Non-finite values are
written as `null` (the file stays valid JSON) and are left out of TensorBoard. The same scalars go
to `RUN_DIR/tensorboard/` (`tensorboard --logdir RUN_DIR`).

Resuming from step N (`MetricsWriter(run_dir, resume_from_step=N)`) rewrites metrics.jsonl
atomically without the lines of steps > N (they belong to the steps about to be redone) and starts
the TensorBoard writer with `purge_step=N + 1`, which tells TensorBoard to discard the old events
of those steps too. Either way the run's history has no duplicate steps.

Metric names the rest of the system shares (the progress line and the plots look for these):
  reward, kl, response_length, tokens_per_s   the headline numbers of an RL step
  time/<call name>                             wall seconds of a model call: time/actor.generate
  eval/<name>                                  held-out evaluation, e.g. eval/accuracy

Left out: fsync per line (a flush survives a process crash, not a power cut; fsync per step would
cost more than it saves), non-scalar summaries (histograms, text), multi-process writers (only
rank 0 should log).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

REWARD = "reward"
KL = "kl"
RESPONSE_LENGTH = "response_length"
TOKENS_PER_S = "tokens_per_s"
TIME_PREFIX = "time/"
EVAL_PREFIX = "eval/"
RESERVED = ("step", "time")


class MetricsWriter:
    """Append one step's scalars to metrics.jsonl and TensorBoard; use as a context manager.

    A fresh writer refuses a run directory that already holds metrics (pass `resume_from_step` to
    continue a run). Steps must not decrease; several `log` calls may share a step (e.g. training
    metrics and then `eval/...` metrics of the same step).
    """

    def __init__(self, run_dir: str | os.PathLike, resume_from_step: int | None = None,
                 tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self.last_step: int | None = None
        if resume_from_step is None:
            _refuse_existing(self.path)
        else:
            self.last_step = truncate_after(self.path, resume_from_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = _tensorboard_writer(self.run_dir, resume_from_step) if tensorboard else None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write `metrics` for `step`: one flushed JSONL line and one TB scalar per finite value."""
        step = int(step)
        if self.last_step is not None and step < self.last_step:
            raise ValueError(f"metrics step {step} is before the last logged step {self.last_step}")
        values = _clean(metrics)
        now = time.time()
        record = {"step": step, "time": now, **values}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self.last_step = step
        if self._tb is not None:
            for key, value in values.items():
                if value is not None:
                    self._tb.add_scalar(key, value, global_step=step, walltime=now)

    def close(self) -> None:
        """Flush and close both outputs (idempotent)."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of `run_dir/metrics.jsonl`, in file order; `null` values come back as None.

    A truncated last line (a crash mid-write) is skipped; a malformed line anywhere else is a
    `UserError` naming file and line. A missing run directory or file is a `UserError` too.
    """
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise UserError(f"{path}: no metrics file (has this run logged a step yet?)")
    return _parse_lines(path, path.read_text(encoding="utf-8").splitlines())


def truncate_after(path: Path, step: int) -> int | None:
    """Atomically drop records of steps > `step` (and a torn line); return the last step kept."""
    if not path.exists():
        return None
    kept = [r for r in _parse_lines(path, path.read_text(encoding="utf-8").splitlines())
            if r["step"] <= step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
    return kept[-1]["step"] if kept else None


def _parse_lines(path: Path, lines: list[str]) -> list[dict]:
    """Parse JSONL records, tolerating only a torn final line."""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a metrics record with an integer 'step'")
        except ValueError as exc:
            if number == len(lines):
                break  # the line a crash cut short
            raise UserError(f"{path}:{number}: malformed metrics line ({exc})") from None
        records.append(record)
    return records


def _clean(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metric values as floats, non-finite ones as None; reject reserved or non-string names."""
    values = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or key in RESERVED:
            raise ValueError(f"bad metric name {key!r} (names are strings other than {RESERVED})")
        value = float(value)
        values[key] = value if math.isfinite(value) else None
    return values


def _refuse_existing(path: Path) -> None:
    if path.exists() and path.stat().st_size > 0:
        raise UserError(f"{path} already exists: resume that run or choose a new run directory")


def _tensorboard_writer(run_dir: Path, resume_from_step: int | None):
    """A TensorBoard writer; on resume its purge marker hides the old events of redone steps."""
    from torch.utils.tensorboard import SummaryWriter

    purge = None if resume_from_step is None else resume_from_step + 1
    if purge is not None:
        _wait_for_a_later_second(run_dir / TENSORBOARD_DIR)
    return SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=10)


def _wait_for_a_later_second(log_dir: Path) -> None:
    """Sleep (< 1 s) until the clock's second is past every event file's in `log_dir`.

    Event files are named events.out.tfevents.{unix second}.{host}.{pid}.{counter}; readers replay
    them in name order. Two files from the same second and process are ordered by a counter that
    sorts as text ("10" < "9"), so a resumed writer could be replayed *before* the writer it
    purges. A new second in its name makes the order unambiguous."""
    seconds = [int(p.name.split(".")[3]) for p in log_dir.glob("events.out.tfevents.*")
               if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    if seconds and max(seconds) >= int(time.time()):
        time.sleep(max(seconds) + 1 - time.time() + 0.01)
