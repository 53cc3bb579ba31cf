"""`fastrlhf bench rollout --speculative`: builds and runs end to end on a tiny setting (timings are
not checked — only structure, the n-gram sanity check and the CLI wiring)."""

import argparse

import pytest

from fastrlhf.bench import cli
from fastrlhf.bench.speculative import SpecBenchSpec, markdown_table, methods, run


def test_methods_cover_plain_each_drafter_at_each_gamma_and_adaptive():
    names = list(methods(SpecBenchSpec(gammas=(1, 4)), draft=None))
    assert names == ["plain", "ngram γ=1", "draft γ=1", "ngram γ=4", "draft γ=4", "adaptive"]


def test_tiny_run_produces_a_table(single_thread):
    spec = SpecBenchSpec(batch_sizes=(8,), task="arithmetic", new_tokens=8, repeats=1, gammas=(2,), distill_epochs=1,
                         threads=1)
    lines = []
    rows, info = run(spec, log=lines.append)
    assert [r.method for r in rows] == ["plain", "ngram γ=2", "draft γ=2", "adaptive"]
    assert all(r.batch == 8 and len(r.tokens_per_s) == 1 and r.median > 0 for r in rows)
    assert any(r.method.startswith("draft") and r.acceptance > 0 for r in rows)
    assert any("distilled" in line for line in lines)
    table = markdown_table(rows, spec, info, "fastrlhf bench rollout --speculative")
    assert table.count("\n| 8 |") == 4 and "× plain" in table
    assert "`arithmetic` task" in table and "90th percentile" in table and "First-epoch" in table


def test_seen_prompts_scenario_remembers_earlier_responses(single_thread):
    """Later-epoch scenario on the long-answer task: the n-gram drafter, given another seed's
    responses to the same prompts, gets drafts accepted (first epoch it mostly cannot)."""
    spec = SpecBenchSpec(batch_sizes=(8,), repeats=1, gammas=(4,), distill_epochs=0, threads=1, seen_prompts=True)
    rows, info = run(spec, log=lambda line: None)
    ngram = next(r for r in rows if r.method == "ngram γ=4")
    assert ngram.acceptance > 0.5 and ngram.tokens_per_pass > 2.5
    assert info["length_mean"] > 15  # worked answers are long
    assert "Later-epoch scenario" in markdown_table(rows, spec, info, "cmd")


def test_cli_parses_speculative_options(monkeypatch):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "rollout", "--speculative", "--gammas", "1", "2", "--distill-epochs", "0"])
    seen = []
    monkeypatch.setattr(cli, "run_speculative", lambda a, command: seen.append(a) or 0)
    assert args.func(args) == 0
    a = seen[0]
    assert a.speculative and a.gammas == [1, 2] and a.distill_epochs == 0
    assert a.batch_sizes == [8, 32, 128] and a.new_tokens is None  # speculative defaults: the task's length
    assert a.task == "worked_addition"
    bad = parser.parse_args(["bench", "rollout", "--speculative", "--gammas", "0"])
    with pytest.raises(Exception, match="gammas"):
        bad.func(bad)
