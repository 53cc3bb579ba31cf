"""Ctrl-C that loses nothing: the first SIGINT asks the run to stop after the current step.

`GracefulStop` is a context manager installing a SIGINT handler (main thread only): the first
Ctrl-C sets `requested` and prints what will happen; the loop checks it between steps, writes a
checkpoint and raises `TrainingInterrupted`. A second Ctrl-C raises `KeyboardInterrupt` at once
(the last periodic checkpoint is then the resume point). Stopping only *between* steps matters: a
checkpoint taken inside an optimizer update would hold half-updated weights.
"""

from __future__ import annotations

import signal
import sys
import threading


class TrainingInterrupted(Exception):
    """The run stopped on request after `step` steps, with a checkpoint at that step."""

    def __init__(self, step: int, checkpoint: str):
        super().__init__(f"interrupted after step {step}; checkpoint saved at {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class GracefulStop:
    def __init__(self, stream=sys.stderr):
        self.requested = False
        self.stream = stream
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (checkpoint follows); Ctrl-C again to stop at once", file=self.stream, flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
