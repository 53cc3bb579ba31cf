"""The kill harness, sampled: a kill -9 at random moments (one per job, three for the draft job — the
third inside a checkpoint write — and one for an asynchronous run whose checkpoints hold queued
rollouts), each resumed to the end, must give the uninterrupted run's weights and metrics bit for bit.
`python benchmarks/kill_resume.py` runs 20 trials per job (docs/reliability.md)."""

import importlib.util
import sys
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


def load_harness():
    spec = importlib.util.spec_from_file_location("kill_resume", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_three_random_kills_resume_bit_identically(tmp_path):
    harness = load_harness()
    results = {}
    for index, job in enumerate(("grpo", "ppo", "draft", "async")):
        kills = 3 if job == "draft" else 1  # the draft job's third kill waits for a checkpoint write
        results.update(harness.harness([job], trials=1, seed=index, min_kills=kills, max_kills=kills,
                                       work=tmp_path, progress=lambda line: None))
    assert sum(t.kills for t in results.values()) >= 3, harness.table(results)
    for job, tally in results.items():
        assert tally.failures == [], (job, tally.failures)
        assert tally.identical == tally.trials == 1, harness.table(results)
