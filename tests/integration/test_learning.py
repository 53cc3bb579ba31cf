"""The default job learns: a short seeded GRPO run from the shipped policy raises held-out accuracy.

This is the issue's "after N steps the reward beats the start by a margin" test. The measure is
greedy exact-match accuracy on fixed held-out problems (the same rows before and after), which —
unlike the per-step training reward — does not move with the difficulty of each step's prompts.
"""

import json

import torch

from fastrlhf.config import load_config
from fastrlhf.train.loop import train

STEPS = 60
MARGIN = 0.10  # measured: see docs/results.md


def test_short_default_run_raises_held_out_accuracy(tmp_path):
    torch.set_num_threads(2)
    config = load_config(None, [f"train.run_dir={tmp_path / 'run'}", f"train.steps={STEPS}", "train.checkpoint_every=0"])
    result = train(config, show_progress=False)
    before, after = result.start_eval["eval/reward"], result.final_eval["eval/reward"]
    assert after >= before + MARGIN, (before, after)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "reward" in m]
    assert len(steps) == STEPS
    assert max(m["logprob_diff"] for m in steps) <= 1e-5  # engine and trainer agree every step
