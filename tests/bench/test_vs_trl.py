"""benchmarks/vs_trl.py (fastrlhf.bench.vs_trl): the job is the same on both sides (our overrides are
valid config keys, TRL gets the rows our trainer draws), measurements are read back correctly, the
table has every side; an end-to-end run of our side; a TRL smoke only where trl is installed."""

import json

import pytest

from fastrlhf.bench import vs_trl
from fastrlhf.config import load_config
from fastrlhf.tasks import arithmetic
from fastrlhf.tasks.builtin_policy import builtin_policy_dir

JOB = vs_trl.Job(model_dir=str(builtin_policy_dir()), label="builtin", steps=4, prompts_per_step=3, group_size=2,
                 max_new_tokens=8, lr=1e-4, kl_coef=0.05, seed=7, threads=1)


def test_our_overrides_are_the_job(tmp_path):
    argv = vs_trl.ours_command(JOB, "bf16", tmp_path / "run")
    assert argv[1:4] == ["-m", "fastrlhf.cli", "train"]
    cfg = load_config(None, argv[4:])  # every override is a real key with a valid value
    assert cfg.model.path == JOB.model_dir and cfg.model.dtype == "bf16"
    assert (cfg.train.steps, cfg.train.prompts_per_step, cfg.rollout.samples_per_prompt, cfg.rollout.max_new_tokens) == \
        (4, 3, 2, 8)
    assert (cfg.train.lr, cfg.algorithm.kl_coef, cfg.rollout.temperature, cfg.train.seed) == (1e-4, 0.05, 1.0, 7)
    assert (cfg.train.warmup_steps, cfg.train.lr_decay, cfg.train.eval_every, cfg.train.checkpoint_every) == (0, "none", 0, 0)
    assert cfg.task.reward == vs_trl.REWARD and cfg.algorithm.name == "grpo"


def test_trl_gets_the_prompts_our_trainer_draws():
    from types import SimpleNamespace

    from fastrlhf.train.data import arithmetic_source

    source = arithmetic_source(SimpleNamespace(digits=None, reward=None, eval_size=1), JOB.seed)
    assert JOB.rows() == source.rows_at(0, JOB.steps * JOB.prompts_per_step)
    assert all(r["prompt"].endswith("=") and "answer" in r for r in JOB.rows())
    from fastrlhf.tasks.rewards import load_reward

    assert load_reward(vs_trl.REWARD) is arithmetic.reward


def test_our_metrics_are_step_gaps_after_the_first_and_rewards(tmp_path):
    records = [{"step": 0, "time": 10.0, "eval/reward": 0.3},
               {"step": 1, "time": 12.0, "reward": 0.5}, {"step": 2, "time": 12.5, "reward": 0.25},
               {"step": 3, "time": 13.25, "reward": 1.0}, {"step": 3, "time": 14.0, "eval/reward": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    gaps, rewards = vs_trl.ours_metrics(tmp_path)
    assert gaps == [0.5, 0.75] and rewards == [0.5, 0.25, 1.0]
    run = vs_trl.RunResult("ours-fp32", gaps, rewards)
    assert run.seconds_per_step == 0.625 and run.last_reward() == pytest.approx((0.25 + 1.0) / 2)


def test_table_has_every_side_ratio_to_the_best_trl_side_and_failures():
    def side(name, seconds, rss=2**30, error=None):
        return vs_trl.SideSummary(name, [vs_trl.RunResult(name, [seconds] * 3, [0.5, 0.5, 1.0, 1.0], rss, error=error)],
                                  heldout=[0.5])
    summaries = [side("ours-fp32", 0.5), side("ours-bf16", 0.0, error="exit 2: fastrlhf: error: nope"),
                 side("trl-fp32", 2.0), side("trl-bf16", 1.0)]
    info = {"torch": "t", "transformers": "x", "trl": "1.16.0", "cpu": "c", "heldout_start": 0.25}
    table = vs_trl.markdown_table(JOB, summaries, info, 3, "python benchmarks/vs_trl.py --steps 4", "`builtin` (...)")
    assert "Command: `python benchmarks/vs_trl.py --steps 4`" in table
    rows = [line for line in table.splitlines() if line.startswith("| fastrlhf") or line.startswith("| TRL")]
    assert len(rows) == 4
    assert "| 0.500 | 12 | 2.00× | 1,024 MiB | 1.000 | 0.250 → 0.500 |" in rows[0]  # 6 completions / 0.5 s
    assert "failed: exit 2: fastrlhf: error: nope" in rows[1]
    assert "| 2.000 | 3.00 | 0.50× |" in rows[2] and "| 1.000 | 6.00 | 1.00× |" in rows[3]
    assert "steps 2–4" in table and "last 2 steps" in table


def test_bad_options_are_one_line(capsys):
    assert vs_trl.main(["--group-size", "1", "--sides", "ours-fp32"]) == 2
    assert capsys.readouterr().err.strip() == "vs_trl: error: --group-size must be ≥ 2 (GRPO normalises rewards within a group)"
    assert vs_trl.main(["--model", "/nonexistent/model", "--sides", "ours-fp32"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_our_side_end_to_end_prints_the_table(tmp_path, capsys):
    argv = ["--shape", "builtin", "--sides", "ours-fp32", "--steps", "2", "--prompts-per-step", "2", "--group-size", "2",
            "--repeats", "1", "--threads", "1", "--no-eval", "--json", str(tmp_path / "raw.json"),
            "--write", str(tmp_path / "bench.md")]
    assert vs_trl.main(argv) == 0
    out = capsys.readouterr().out
    assert "| fastrlhf | fp32 (`model.dtype=fp32`) |" in out and "held-out" not in out
    raw = json.loads((tmp_path / "raw.json").read_text())
    run = raw["sides"][0]["runs"][0]
    assert run["error"] is None and len(run["step_seconds"]) == 1 and len(run["rewards"]) == 2
    assert run["peak_rss_bytes"] > 50 * 2**20
    assert "## GRPO training vs TRL GRPOTrainer (builtin)" in (tmp_path / "bench.md").read_text()


def test_trl_side_smoke(tmp_path):
    pytest.importorskip("trl")
    result = vs_trl.run_trl(vs_trl.Job(model_dir=str(builtin_policy_dir()), label="builtin", steps=2, prompts_per_step=2,
                                       group_size=2, threads=1), "fp32", tmp_path, timeout=300)
    assert result.error is None, (tmp_path / "log.txt").read_text()[-2000:]
    assert len(result.step_seconds) == 1 and len(result.rewards) == 2 and result.peak_rss_bytes > 50 * 2**20
    assert result.notes["prompt_ids_match"] and not result.notes["chat_template"]
    assert 0.0 <= vs_trl.heldout_accuracy(result.final_dir, 8) <= 1.0  # TRL's saved policy loads in ours


def test_trl_sides_without_trl_installed_are_one_line(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "trl", None)  # import trl -> ImportError
    assert vs_trl.main(["--sides", "ours-fp32", "trl-bf16"]) == 2
    assert "trl is not installed: pip install -e '.[bench]'" in capsys.readouterr().err
