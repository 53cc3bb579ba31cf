"""A hang watchdog: no progress for `timeout` seconds → every thread's stack on disk and a clear stop.

The run calls `beat(what)` whenever it makes progress (each model call, each step, evaluation,
checkpoint). A daemon thread wakes every few seconds; once `timeout` seconds pass without a beat it

1. writes `RUN_DIR/hang-YYYYmmdd-HHMMSS.txt`: what the run was doing, since when, and every
   thread's Python stack (`faulthandler.dump_traceback`, which works even while the main thread is
   blocked inside C code — a socket read, a collective, a kernel);
2. prints one line: how long nothing moved, where the stacks are, and the resume command;
3. ends the process with exit code 3 (`os._exit`: the main thread is stuck and cannot be asked to
   unwind). The last checkpoint is untouched: checkpoints are atomic, so it is intact whatever the
   stuck thread was doing.

Left out: per-rank watchdogs and collective timeouts (the runtime's job).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HANG_EXIT_CODE = 3


class Watchdog:
    def __init__(self, timeout: float, run_dir: Path, resume_hint: Callable[[], str], clock=time.monotonic,
                 exit_process: Callable[[int], None] = os._exit, stream=sys.stderr):
        """`timeout` 0 disables it. `resume_hint()` says what is saved and how to continue."""
        self.timeout, self.run_dir, self.resume_hint = timeout, Path(run_dir), resume_hint
        self.clock, self.exit_process, self.stream = clock, exit_process, stream
        self.last_beat, self.doing = clock(), "starting"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.report: Path | None = None

    def beat(self, doing: str) -> None:
        self.last_beat, self.doing = self.clock(), doing

    def __enter__(self) -> "Watchdog":
        if self.timeout > 0:
            self.beat("starting")
            self._thread = threading.Thread(target=self._watch, name="fastrlhf-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(5.0, self.timeout / 4)):
            idle = self.clock() - self.last_beat
            if idle >= self.timeout:
                self._report(idle)
                return

    def _report(self, idle: float) -> None:
        self.report = self.run_dir / f"hang-{time.strftime('%Y%m%d-%H%M%S')}.txt"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.report, "w", encoding="utf-8") as handle:
            handle.write(f"no progress for {idle:.0f} s (train.hang_timeout={self.timeout:g}); "
                         f"last progress: {self.doing}\n\n")
            handle.flush()
            faulthandler.dump_traceback(file=handle, all_threads=True)
        print(f"\nfastrlhf: error: no progress for {idle:.0f} s while in {self.doing}; every thread's stack is in "
              f"{self.report}; {self.resume_hint()}", file=self.stream, flush=True)
        self.exit_process(HANG_EXIT_CODE)
