"""`plot_run`: training curves of a run directory as one PNG (matplotlib, Agg, no display needed).

Panels, top to bottom, each only when the run logged it (x = step):
  reward           raw per-step values and a trailing moving average
  KL               KL to the reference policy
  response length  mean tokens per response
  evaluation       the held-out reward-like `eval/...` metrics (accuracy, gold reward, ...), with
                   markers; `eval/response_length` goes on the response-length panel and
                   `eval/kl` (nats per sequence) on a panel of its own, so no panel mixes units

`None` (non-finite when logged) values are gaps. The PNG is written to a temporary file and
renamed, so a reader never sees half an image.

Left out: comparing several runs in one figure, smoothing choices beyond one moving average,
interactive output.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_path
from fastrlhf.telemetry.metrics import EVAL_PREFIX, KL, RESPONSE_LENGTH, REWARD, read_metrics

DEFAULT_NAME = "metrics.png"
# (metric key, panel title, y label)
PANELS = ((REWARD, "reward", "reward"), (KL, "KL to reference", "KL"),
          (RESPONSE_LENGTH, "response length", "tokens"))
# held-out metrics drawn on the panel of the same unit: eval key -> panel key
EVAL_ON_PANEL = {EVAL_PREFIX + "response_length": RESPONSE_LENGTH}
# held-out metrics with a unit of their own: (key, panel title, y label); the training KL is a
# per-token mean, the held-out KL a per-sequence sum, so they do not share a panel
EVAL_PANELS = ((EVAL_PREFIX + "kl", "held-out KL to the start policy", "nats / sequence"),)


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw the curves of `run_dir/metrics.jsonl` into `out` (default `run_dir/metrics.png`)."""
    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"{Path(run_dir) / 'metrics.jsonl'}: no metrics logged yet")
    out = Path(out) if out is not None else Path(run_dir) / DEFAULT_NAME
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output directory does not exist")
    fig = build_figure(records, title=Path(run_dir).resolve().name)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out


def build_figure(records: list[dict], title: str = ""):
    """A matplotlib Figure with one panel per metric group present in `records`."""
    from matplotlib.figure import Figure

    panels = [p for p in PANELS if series(records, p[0])[0].size] + _eval_panel(records)
    if not panels:
        raise UserError("the run has no reward, kl, response_length or eval/... metrics to plot")
    fig = Figure(figsize=(8, 2.4 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, name, ylabel) in zip(axes, panels):
        _draw_panel(ax, records, key, name, ylabel)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    return fig


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the records that hold `key`; None becomes NaN (a gap in the line)."""
    rows = [(r["step"], np.nan if r[key] is None else r[key]) for r in records if key in r]
    data = np.asarray(rows, dtype=float).reshape(-1, 2)
    return data[:, 0], data[:, 1]


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values (fewer at the start); NaN stays NaN."""
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    kept = values[finite]
    sums = np.concatenate([[0.0], np.cumsum(kept)])
    idx = np.arange(1, kept.size + 1)
    lo = np.maximum(idx - window, 0)
    out[finite] = (sums[idx] - sums[lo]) / (idx - lo)
    return out


def smoothing_window(n: int) -> int:
    """About a tenth of the run, between 2 and 50 steps."""
    return int(min(50, max(2, n // 10)))


def _eval_keys(records: list[dict]) -> list[str]:
    own = {key for key, _, _ in EVAL_PANELS}
    return sorted({k for r in records for k in r if k.startswith(EVAL_PREFIX) and k not in EVAL_ON_PANEL and k not in own})


def _eval_panel(records: list[dict]) -> list[tuple[str, str, str]]:
    own = [p for p in EVAL_PANELS if series(records, p[0])[0].size]
    return ([(EVAL_PREFIX, "held-out evaluation", "value")] if _eval_keys(records) else []) + own


def _draw_panel(ax, records: list[dict], key: str, name: str, ylabel: str) -> None:
    if key == EVAL_PREFIX:
        _draw_eval(ax, records)
    elif key.startswith(EVAL_PREFIX):
        steps, values = series(records, key)
        ax.plot(steps, values, marker="o", ms=4)
    else:
        steps, values = series(records, key)
        ax.plot(steps, values, lw=0.8, alpha=0.45 if key == REWARD else 1.0, label=name)
        if key == REWARD:
            window = smoothing_window(values.size)
            ax.plot(steps, moving_average(values, window), lw=2, label=f"moving average ({window})")
        for eval_key in (k for k, panel in EVAL_ON_PANEL.items() if panel == key):
            eval_steps, eval_values = series(records, eval_key)
            if eval_steps.size:
                ax.plot(eval_steps, eval_values, marker="o", ms=4, ls="--", label=f"held-out {key}")
        if ax.get_legend_handles_labels()[0] and (key == REWARD or len(ax.lines) > 1):
            ax.legend(loc="best", fontsize=8)
    ax.set_title(name, fontsize=10, loc="left")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _draw_eval(ax, records: list[dict]) -> None:
    for key in _eval_keys(records):
        steps, values = series(records, key)
        ax.plot(steps, values, marker="o", ms=4, label=key[len(EVAL_PREFIX):])
    ax.legend(loc="best", fontsize=8)
