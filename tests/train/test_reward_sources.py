"""Reward sources in whole runs: an HTTP reward server (a real one on localhost) and a PPO resume
that restores the critic. An unreachable server stops the run with one line, never a zero reward."""

import threading

import pytest
import torch

from fastrlhf.cli import main
from fastrlhf.tasks.reward_server import make_server


@pytest.fixture
def server():
    requests = []

    def digits(completions, answer, **fields):
        requests.append(len(completions))
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]

    srv = make_server(digits, port=0, quiet=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", requests
    srv.shutdown()
    srv.server_close()


def overrides(policy, run_dir, *extra):
    return [f"model.path={policy}", f"train.run_dir={run_dir}", "train.steps=2", "train.prompts_per_step=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=5", "task.eval_size=4", "train.micro_batch_size=8",
            *extra]


def test_http_reward_server_drives_a_run(tiny_policy, server, tmp_path):
    url, requests = server
    code = main(["train", *overrides(tiny_policy, tmp_path / "run", f"task.reward={url}", "task.reward_batch_size=5"),
                 "--quiet"])
    assert code == 0
    # 2 steps x 16 completions in batches of <= 5, plus two evaluations of 4 prompts
    assert max(requests) <= 5 and sum(requests) == 2 * 16 + 2 * 4
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_unreachable_reward_server_is_a_clear_error(tiny_policy, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", *overrides(tiny_policy, run_dir, "task.reward=http://127.0.0.1:9/score",
                                     "task.reward_retries=1", "task.reward_timeout=0.5"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "http://127.0.0.1:9/score" in err and "unreachable" in err
    assert not run_dir.exists()  # nothing half-written


def test_ppo_resume_restores_the_critic(tiny_policy, tmp_path):
    from fastrlhf.config import load_config
    from fastrlhf.train import loop
    from fastrlhf.train.loop import train
    from safetensors.torch import load_file

    reward = tmp_path / "r.py"
    reward.write_text("def count(completions, **f):\n    return [float(len(c)) for c in completions]\n")
    extra = ["algorithm.name=ppo", f"task.reward={reward}:count", "train.steps=4", "train.checkpoint_every=2",
             "rollout.samples_per_prompt=2"]
    train(load_config(None, overrides(tiny_policy, tmp_path / "straight", *extra)), show_progress=False)
    original = loop.Run.step

    def dies_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step)

    loop.Run.step = dies_at_step_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_config(None, overrides(tiny_policy, tmp_path / "resumed", *extra)), show_progress=False)
    finally:
        loop.Run.step = original
    train(load_config(None, overrides(tiny_policy, tmp_path / "resumed", *extra)), resume=True, show_progress=False)
    for part in ("model.safetensors", "critic/model.safetensors"):
        a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_000004" / part))
        b = load_file(str(tmp_path / "resumed" / "checkpoints" / "step_000004" / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


def test_a_reward_server_that_dies_mid_run_loses_no_completed_step(tiny_policy, tmp_path, capsys):
    """The server answers the start evaluation and 3 steps, then fails: the run stops with one line,
    a checkpoint holds the 3 completed steps, and resuming (server back) finishes the run."""
    calls = {"n": 0}

    def flaky(completions, answer, **fields):
        calls["n"] += 1
        if calls["n"] > 4 and not calls.get("back"):
            raise RuntimeError("model server crashed")
        return [float(sum(ch.isdigit() for ch in c)) for c in completions]

    srv = make_server(flaky, port=0, quiet=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    run_dir = tmp_path / "run"
    args = [*overrides(tiny_policy, run_dir, f"task.reward={url}", "task.reward_batch_size=64",
                       "task.reward_retries=0", "train.steps=6", "train.checkpoint_every=0"), "--quiet"]
    try:
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "steps 1-3 are saved" in err and "--resume" in err
        assert (run_dir / "checkpoints" / "step_000003" / "state.json").is_file()
        calls["back"] = True
        assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
        assert (run_dir / "final" / "model.safetensors").is_file()
    finally:
        srv.shutdown()
        srv.server_close()
