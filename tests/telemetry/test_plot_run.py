"""plot_run / build_figure / `fastrlhf plot`: panels, a valid PNG written atomically, errors."""

import math

import matplotlib.image
import numpy as np
import pytest

import fastrlhf.cli as top_cli
from fastrlhf.errors import UserError
from fastrlhf.telemetry.metrics import MetricsWriter, read_metrics
from fastrlhf.telemetry.plot import build_figure, moving_average, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir, steps=30, eval_every=10):
    with MetricsWriter(run_dir, tensorboard=False) as writer:
        for step in range(1, steps + 1):
            writer.log(step, {"reward": step / steps, "kl": math.nan if step == 5 else 0.01 * step,
                              "response_length": 8 - step / 10, "time/actor.generate": 0.2})
            if eval_every and step % eval_every == 0:
                writer.log(step, {"eval/accuracy": step / 100, "eval/reward": step / 50})
    return run_dir


def titles(fig):
    return [ax.get_title(loc="left") for ax in fig.axes]


def test_figure_has_reward_kl_length_and_eval_panels(tmp_path):
    fig = build_figure(read_metrics(make_run(tmp_path)))
    assert titles(fig) == ["reward", "KL to reference", "response length", "held-out evaluation"]
    reward, kl, _, evaluation = fig.axes
    assert len(reward.lines) == 2  # raw + moving average
    assert np.isnan(kl.lines[0].get_ydata()[4])  # the NaN step is a gap, not a zero
    assert sorted(line.get_label() for line in evaluation.lines) == ["accuracy", "reward"]
    assert list(evaluation.lines[0].get_xdata()) == [10, 20, 30]


def test_held_out_kl_and_length_never_share_a_panel_with_rewards(tmp_path):
    records = read_metrics(make_run(tmp_path, eval_every=0))
    records += [{"step": 30, "eval/gold_reward": 1.8, "eval/reward": 6.0, "eval/kl": 2.2, "eval/response_length": 5.1}]
    fig = build_figure(records)
    assert titles(fig) == ["reward", "KL to reference", "response length", "held-out evaluation",
                           "held-out KL to the start policy"]
    _, kl, length, evaluation, held_out_kl = fig.axes
    assert sorted(line.get_label() for line in evaluation.lines) == ["gold_reward", "reward"]
    assert [line.get_label() for line in kl.lines] == ["KL to reference"]  # per-token; held-out is per sequence
    assert list(held_out_kl.lines[0].get_ydata()) == [2.2]
    assert "held-out response_length" in [line.get_label() for line in length.lines]


def test_figure_without_eval_has_three_panels_and_missing_metrics_drop_theirs(tmp_path):
    records = read_metrics(make_run(tmp_path, eval_every=0))
    assert len(build_figure(records).axes) == 3
    only_kl = [{"step": r["step"], "kl": r["kl"]} for r in records]
    assert titles(build_figure(only_kl)) == ["KL to reference"]
    with pytest.raises(UserError, match="no reward"):
        build_figure([{"step": 1, "time/actor.train": 0.3}])


def test_moving_average_is_trailing_and_skips_gaps():
    values = np.array([1.0, 2.0, np.nan, 3.0, 4.0])
    expected = [1.0, 1.5, np.nan, 2.5, 3.5]
    np.testing.assert_allclose(moving_average(values, 2), expected)
    np.testing.assert_allclose(moving_average(values, 10), [1.0, 1.5, np.nan, 2.0, 2.5])


def test_plot_run_writes_a_png_atomically(tmp_path):
    run = make_run(tmp_path / "run")
    path = plot_run(run)
    assert path == run / "metrics.png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    height, width, _ = matplotlib.image.imread(path).shape
    assert width == 800 and height > width  # four stacked panels
    assert not [p for p in run.iterdir() if p.name.startswith(".tmp-")]
    custom = plot_run(run, tmp_path / "curves.png")
    assert custom == tmp_path / "curves.png" and custom.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "no such run directory"),
    (lambda d: d.mkdir(), "no metrics file"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "no metrics logged"),
])
def test_plot_errors_name_the_path_and_write_nothing(tmp_path, setup, expected):
    run = tmp_path / "run"
    setup(run)
    with pytest.raises(UserError, match=expected) as info:
        plot_run(run)
    message = str(info.value)
    assert str(run) in message and "\n" not in message
    assert not list(tmp_path.rglob("*.png"))


def test_plot_to_a_missing_directory_is_a_user_error(tmp_path):
    run = make_run(tmp_path / "run", steps=3, eval_every=0)
    with pytest.raises(UserError, match="does not exist"):
        plot_run(run, tmp_path / "nowhere" / "x.png")


@pytest.fixture
def cli_with_plot(monkeypatch):
    modules = top_cli.COMMAND_MODULES
    if "fastrlhf.telemetry.cli" not in modules:
        monkeypatch.setattr(top_cli, "COMMAND_MODULES", modules + ("fastrlhf.telemetry.cli",))
    return top_cli.main


def test_cli_plot_prints_the_png_path(tmp_path, capsys, cli_with_plot):
    run = make_run(tmp_path / "run", steps=5, eval_every=0)
    out = tmp_path / "p.png"
    assert cli_with_plot(["plot", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_cli_plot_bad_run_dir_exits_2_with_one_line(tmp_path, capsys, cli_with_plot):
    assert cli_with_plot(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastrlhf: error:") and "missing" in err
