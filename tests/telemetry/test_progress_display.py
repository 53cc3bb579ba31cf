"""Progress display: the plain per-step line (non-TTY), number formats, the rich bar on a TTY."""

import io
import re

import pytest

from fastrlhf.telemetry.progress import (Progress, call_label, format_number, format_seconds,
                                         format_step, phase)

# deliberately not in display order: the line must impose reward, kl, len, tok/s, then times
METRICS = {"time/actor.generate": 0.21, "time/ref.inference": 0.02, "time/actor.train": 0.35,
           "tokens_per_s": 5123.4, "response_length": 5.2, "kl": 0.003, "reward": 0.41,
           "loss": 1.5}


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class TTYStream(io.StringIO):
    def isatty(self):
        return True


def test_non_tty_prints_one_plain_line_per_step_with_eta():
    out, clock = io.StringIO(), FakeClock()
    with Progress(80, stream=out, clock=clock) as progress:
        clock.now += 12.0  # 1 s per step
        progress.update(12, METRICS)
        clock.now += 1.0
        progress.update(13, {"reward": 0.5})
    assert out.getvalue().splitlines() == [
        "step 12/80  reward 0.41  kl 0.003  len 5.2  tok/s 5123  "
        "time gen 0.21s ref 0.02s train 0.35s  eta 1:08",
        "step 13/80  reward 0.5  eta 1:07",
    ]
    assert "\x1b" not in out.getvalue()


def test_eta_of_a_resumed_run_counts_only_steps_done_here():
    out, clock = io.StringIO(), FakeClock()
    with Progress(100, start_step=50, stream=out, clock=clock) as progress:
        clock.now += 20.0
        progress.update(60, {})  # 10 steps in 20 s -> 40 left take 80 s
    assert out.getvalue() == "step 60/100  eta 1:20\n"


def test_disabled_prints_nothing_but_returns_the_line():
    out = io.StringIO()
    with Progress(5, enabled=False, stream=out) as progress:
        line = progress.update(1, {"kl": 0.5})
    assert line == "step 1/5  kl 0.5" and out.getvalue() == ""


def test_caller_chooses_fields_and_order():
    line = format_step(3, 9, {"a": 1.0, "b": 2.0, "c": 3.0}, fields=[("B", "b"), ("A", "a")])
    assert line == "step 3/9  B 2  A 1"


@pytest.mark.parametrize("value, text", [
    (0.41, "0.41"), (0.003, "0.003"), (5.2, "5.2"), (-0.11534, "-0.115"), (123.46, "123"),
    (5123.4, "5123"), (2.5e-6, "2.5e-06"), (0.0, "0"), (float("nan"), "nan"), (None, "nan")])
def test_format_number(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize("value, text", [
    (0.0042, "4.2ms"), (0.21, "0.21s"), (12.34, "12.3s"), (154.2, "154s"), (float("inf"), "nan")])
def test_format_seconds(value, text):
    assert format_seconds(value) == text


@pytest.mark.parametrize("call, label", [
    ("actor.generate", "gen"), ("actor.train", "train"), ("ref.inference", "ref"),
    ("reward.score", "reward"), ("critic.inference", "critic"), ("critic.train", "critic.train"),
    ("weird", "weird")])
def test_call_label(call, label):
    assert call_label(call) == label


def test_phase_is_a_plain_line_off_a_terminal():
    out = io.StringIO()
    phase("preparing built-in policy...", stream=out)
    assert out.getvalue() == "> preparing built-in policy...\n"


def test_progress_phase_prints_between_step_lines_unless_disabled():
    out, quiet = io.StringIO(), io.StringIO()
    with Progress(2, stream=out, clock=FakeClock()) as progress:
        progress.phase("start held-out: accuracy 0.300")
        progress.update(1, {"kl": 0.5})
    with Progress(2, enabled=False, stream=quiet) as progress:
        progress.phase("hidden")
    assert out.getvalue().splitlines()[0] == "> start held-out: accuracy 0.300"
    assert quiet.getvalue() == ""


def test_tty_shows_a_rich_bar_and_the_step_lines():
    out = TTYStream()
    with Progress(4, stream=out) as progress:
        progress.phase("evaluating")
        for step in range(1, 5):
            progress.update(step, {"reward": step / 4})
    text = out.getvalue()
    assert "> evaluating\n" in text
    assert "\x1b[" in text  # a live terminal display, unlike the plain mode
    assert "step 4/4  reward 1\n" in text  # no plain-mode eta suffix: the bar shows the ETA
    assert re.search(r"training [^\r\n]*━[^\r\n]*\D4/4[^\r\n]* eta ", text)  # the bar, completed
