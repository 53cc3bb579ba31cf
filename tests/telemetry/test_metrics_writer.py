"""MetricsWriter / read_metrics: JSONL + TensorBoard contents, resume truncation, torn lines."""

import json
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fastrlhf.errors import UserError
from fastrlhf.telemetry.metrics import MetricsWriter, read_metrics


def tb_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard would show for the run, as (step, value) lists."""
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def strict_lines(path) -> list[dict]:
    """Parse a JSONL file rejecting NaN / Infinity literals (what other JSON readers do)."""
    def no_constants(name):
        raise ValueError(f"non-JSON constant {name}")
    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def test_log_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in (1, 2, 3):
            writer.log(step, {"reward": step / 10, "time/actor.generate": 0.5 * step})
    records = strict_lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["reward"] for r in records] == [0.1, 0.2, 0.3]
    assert all(isinstance(r["time"], float) and r["time"] > 1.6e9 for r in records)
    assert read_metrics(tmp_path) == records
    scalars = tb_scalars(tmp_path)
    assert set(scalars) == {"reward", "time/actor.generate"}
    assert [s for s, _ in scalars["reward"]] == [1, 2, 3]
    assert [v for _, v in scalars["reward"]] == pytest.approx([0.1, 0.2, 0.3], rel=1e-6)
    assert [v for _, v in scalars["time/actor.generate"]] == pytest.approx([0.5, 1.0, 1.5])


def test_each_line_is_on_disk_before_close(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.log(7, {"kl": 0.25})
    assert strict_lines(tmp_path / "metrics.jsonl")[0]["kl"] == 0.25  # writer still open
    writer.log(8, {"kl": 0.5})
    assert len(strict_lines(tmp_path / "metrics.jsonl")) == 2
    writer.close()


def test_non_finite_values_are_null_in_jsonl_and_absent_in_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.log(1, {"reward": 1.0, "kl": math.nan})
        writer.log(2, {"reward": math.inf, "kl": 0.5})
    first, second = strict_lines(tmp_path / "metrics.jsonl")
    assert first["kl"] is None and second["reward"] is None and second["kl"] == 0.5
    scalars = tb_scalars(tmp_path)
    assert scalars["reward"] == [(1, 1.0)]
    assert scalars["kl"] == [(2, 0.5)]


def test_resume_drops_later_steps_in_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.log(step, {"reward": float(step)})
    with MetricsWriter(tmp_path, resume_from_step=3) as writer:
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]  # rewritten at once
        for step in (4, 5):
            writer.log(step, {"reward": 10.0 * step})
    records = strict_lines(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["reward"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 3.0),
                                                           (4, 40.0), (5, 50.0)]
    assert tb_scalars(tmp_path)["reward"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_resume_repairs_a_torn_last_line_and_keeps_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 1.0, "reward": 0.5}\n{"step": 2, "time": 2.0, "rew')
    with MetricsWriter(tmp_path, resume_from_step=2, tensorboard=False) as writer:
        writer.log(2, {"reward": 0.75})
    assert [(r["step"], r["reward"]) for r in strict_lines(path)] == [(1, 0.5), (2, 0.75)]


def test_resume_without_a_metrics_file_starts_one(tmp_path):
    with MetricsWriter(tmp_path / "run", resume_from_step=4, tensorboard=False) as writer:
        writer.log(5, {"reward": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [5]


def test_read_tolerates_a_truncated_last_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "time": 1.0, "kl": null}\n{"step": 2, "time": 2.0, "kl": 0.1}\n{"step": 3, "ti')
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["kl"] is None


def test_read_rejects_a_malformed_line_in_the_middle(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "time": 1.0}\n{"step": oops}\n{"step": 3, "time": 3.0}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl:2: malformed"):
        read_metrics(tmp_path)


def test_read_missing_run_dir_or_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match="nope"):
        read_metrics(tmp_path / "nope")
    with pytest.raises(UserError, match=r"metrics\.jsonl"):
        read_metrics(tmp_path)


def test_fresh_writer_refuses_a_run_with_metrics(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(1, {"reward": 1.0})
    with pytest.raises(UserError, match="already exists"):
        MetricsWriter(tmp_path, tensorboard=False)
    assert len(read_metrics(tmp_path)) == 1  # untouched


def test_steps_must_not_go_back_and_names_are_checked(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as writer:
        writer.log(5, {"reward": 1.0})
        writer.log(5, {"eval/accuracy": 0.5})  # same step, separate call: allowed
        with pytest.raises(ValueError, match="before the last logged step 5"):
            writer.log(4, {"reward": 1.0})
        with pytest.raises(ValueError, match="bad metric name"):
            writer.log(6, {"step": 1.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 5]
