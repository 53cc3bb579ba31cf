"""Whole runs on a tiny random policy: exact resume, export that transformers loads, clean failures."""

import pytest
import torch
from safetensors.torch import load_file

from fastrlhf.cli import main
from fastrlhf.config import load_config
from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.train.loop import train


def config(tiny_policy, run_dir, steps, extra=()):
    return load_config(None, config_overrides(tiny_policy, run_dir, steps, extra))


def config_overrides(tiny_policy, run_dir, steps, extra=()):
    return [f"model.path={tiny_policy}", f"train.run_dir={run_dir}", f"train.steps={steps}",
                              "train.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=5",
                              "train.checkpoint_every=2", "task.eval_size=8", "train.micro_batch_size=6",
                              "train.mini_batches=2", "algorithm.kl_coef=0.05", "train.lr=0.01", *extra]


def test_resume_is_bit_identical(tiny_policy, digit_reward, tmp_path, monkeypatch):
    from fastrlhf.train import loop

    reward = [f"task.reward={digit_reward}"]
    train(config(tiny_policy, tmp_path / "straight", 4, reward), show_progress=False)
    # the same 4-step run, killed during step 3 (after the step-2 checkpoint), then resumed
    original_step = loop.Run.step

    def dies_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original_step(self, step)

    monkeypatch.setattr(loop.Run, "step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_policy, tmp_path / "resumed", 4, reward), show_progress=False)
    assert not (tmp_path / "resumed" / "final").exists()
    monkeypatch.setattr(loop.Run, "step", original_step)
    train(config(tiny_policy, tmp_path / "resumed", 4, reward), resume=True, show_progress=False)
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    base = load_file(str(tiny_policy / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], base[k]) for k in a)  # training changed the weights


def test_export_loads_in_transformers_and_matches_greedy(tiny_policy, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(config(tiny_policy, tmp_path / "run", 2), show_progress=False)
    hf = AutoModelForCausalLM.from_pretrained(result.final_dir).eval()
    hf_tok = AutoTokenizer.from_pretrained(result.final_dir)
    ours = load_model(result.final_dir)
    prompt = hf_tok("12+34=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hf_out = hf.generate(prompt, do_sample=False, max_new_tokens=6, min_new_tokens=6, eos_token_id=None, pad_token_id=0)
    seq = RolloutEngine(ours, num_slots=1).generate([prompt[0].tolist()], SamplingParams(temperature=0, max_new_tokens=6))[0]
    assert hf_out[0, prompt.shape[1]:].tolist() == seq.token_ids
    assert (result.run_dir / "metrics.jsonl").exists() and (result.run_dir / "config.yaml").exists()


def test_existing_run_dir_is_not_overwritten(tiny_policy, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "precious.txt").write_text("keep me")
    code = main(["train", f"model.path={tiny_policy}", f"train.run_dir={run_dir}", "train.steps=1", "--quiet"])
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in run_dir.iterdir()] == ["precious.txt"]


def test_bad_reward_fails_cleanly_and_leaves_nothing(tiny_policy, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+1="}\n{"prompt": "2+2="}\n')
    rewards = tmp_path / "my_reward.py"
    rewards.write_text("def broken(completions, **kw):\n    return [1.0]\n")
    run_dir = tmp_path / "run"
    code = main(["train", f"model.path={tiny_policy}", f"train.run_dir={run_dir}", f"task.prompts={prompts}",
                 f"task.reward={rewards}:broken", "train.steps=2", "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken" in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


@pytest.mark.parametrize("args,message", [
    (["train.stepz=3"], "unknown key 'train.stepz'"),
    (["train.steps=-1"], "train.steps"),
    (["model.path=/nonexistent/model"], "/nonexistent/model"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    code = main(["train", f"train.run_dir={run_dir}", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(tiny_policy, digit_reward, tmp_path, monkeypatch):
    """A SIGINT during step 2 of 4 (checkpoints only at the end) → checkpoint at step 2, exit 130;
    resuming gives the same final weights as an uninterrupted run."""
    import os
    import signal

    from fastrlhf.train import loop

    reward = [f"task.reward={digit_reward}", "train.checkpoint_every=0"]
    train(config(tiny_policy, tmp_path / "straight", 4, reward), show_progress=False)
    original_step = loop.Run.step

    def interrupted_during_step_2(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step; the step still completes
        return original_step(self, step)

    monkeypatch.setattr(loop.Run, "step", interrupted_during_step_2)
    run_dir = tmp_path / "stopped"
    args = [f"{o}" for o in config_overrides(tiny_policy, run_dir, 4, reward)]
    assert main(["train", *args, "--quiet"]) == 130
    assert (run_dir / "checkpoints" / "step_000002" / "state.json").is_file()
    monkeypatch.setattr(loop.Run, "step", original_step)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    a = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    b = load_file(str(run_dir / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_prompts_and_reward_function_run_end_to_end(tiny_policy, tmp_path):
    """The user path: a JSONL prompt file whose extra fields reach a `file.py:function` reward."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{a}+{a}=", "target": "{a % 10}"}}\n' for a in range(12)))
    reward = tmp_path / "rewards.py"
    reward.write_text(
        "def hits(completions, target, **fields):\n"  # fails (exit 2) unless `target` arrives
        "    return [float(c.count(t)) for c, t in zip(completions, target)]\n")
    run_dir = tmp_path / "run"
    code = main(["train", f"model.path={tiny_policy}", f"train.run_dir={run_dir}", f"task.prompts={prompts}",
                 f"task.reward={reward}:hits", "train.steps=3", "train.prompts_per_step=5",
                 "rollout.samples_per_prompt=3", "rollout.max_new_tokens=4", "--quiet"])
    assert code == 0
    lines = [__import__("json").loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "reward" in m] == [1, 2, 3]
    assert (run_dir / "final" / "model.safetensors").is_file()


def test_speculative_rollouts_give_the_same_run(tiny_policy, digit_reward, tmp_path):
    """rollout.speculative=ngram changes speed, not samples: same completions, same rewards."""
    import json

    common = [f"task.reward={digit_reward}", "train.checkpoint_every=0", "algorithm.kl_coef=0"]
    train(config(tiny_policy, tmp_path / "plain", 3, common), show_progress=False)
    train(config(tiny_policy, tmp_path / "spec", 3, [*common, "rollout.speculative=ngram", "rollout.gamma=3"]), show_progress=False)
    read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    plain, spec = read(tmp_path / "plain"), read(tmp_path / "spec")
    assert [m["reward"] for m in plain] == [m["reward"] for m in spec]
    assert [m["response_length"] for m in plain] == [m["response_length"] for m in spec]
    assert all(m["spec/gamma"] == 3 for m in spec) and any("spec/acceptance" in m for m in spec)
