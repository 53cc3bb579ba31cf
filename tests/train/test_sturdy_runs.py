"""Sturdy runs: atomic steps, the non-finite guard, resume semantics, checkpoint integrity, clean stops.

Each test names the review defect (issue 11) it guards; each failed on the code before the fix.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from fastrlhf.cli import main
from fastrlhf.config import load_config
from fastrlhf.telemetry.metrics import read_metrics
from fastrlhf.train import loop, workers
from fastrlhf.train.critic import CriticWorker
from fastrlhf.train.loop import train


def overrides(policy, run_dir, steps, *extra):
    return [f"model.path={policy}", f"train.run_dir={run_dir}", f"train.steps={steps}", "train.prompts_per_step=4",
            "rollout.samples_per_prompt=4", "rollout.max_new_tokens=5", "train.checkpoint_every=1",
            "task.eval_size=8", "train.micro_batch_size=8", "train.mini_batches=2", "algorithm.kl_coef=0.05",
            "train.lr=0.01", "train.eval_every=0", *extra]


def run(policy, run_dir, steps, *extra, resume=False):
    return train(load_config(None, overrides(policy, run_dir, steps, *extra)), resume=resume, show_progress=False)


def weights(path):
    return load_file(str(path / "model.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def interrupt_in_step(monkeypatch, step_index):
    """Make `Run.step` raise KeyboardInterrupt (a second Ctrl-C) at the 0-based step `step_index`."""
    original = loop.Run.step

    def interrupted(self, step):
        if step == step_index:
            raise KeyboardInterrupt
        return original(self, step)
    monkeypatch.setattr(loop.Run, "step", interrupted)


def fail_in_mini_batch_2_of_step_3(monkeypatch, message):
    """Make the actor's second mini-batch update of step 3 raise RuntimeError(message), after the
    first mini-batch has updated the actor."""
    original, calls = workers.ActorWorker._update, []

    def fails_in_mini_batch_2(self, mini, check_logprobs, defer=None):
        calls.append(self.step)
        if self.step == 2 and calls.count(2) == 2:
            raise RuntimeError(message)
        return original(self, mini, check_logprobs, defer)
    monkeypatch.setattr(workers.ActorWorker, "_update", fails_in_mini_batch_2)


# ---------------------------------------------------------------- defect 2: a torn step is never saved
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_a_step_that_fails_half_way_checkpoints_the_pre_step_state(tiny_policy, digit_reward, tmp_path, monkeypatch, algo):
    extra = (f"task.reward={digit_reward}", f"algorithm.name={algo}")
    run(tiny_policy, tmp_path / "clean", 2, *extra)
    if algo == "grpo":  # mini-batch 2 of step 3 fails, after mini-batch 1 updated the actor
        fail_in_mini_batch_2_of_step_3(monkeypatch, "out of memory (injected)")
    else:  # the critic fails after its update in step 3 (the actor updated too, or is about to)
        original = CriticWorker.train

        def critic_fails_after_update(self, batch):
            stats = original(self, batch)
            if self.step_seed == loop.step_seed(0, 2):
                raise RuntimeError("critic blew up (injected)")
            return stats
        monkeypatch.setattr(CriticWorker, "train", critic_fails_after_update)
    with pytest.raises(RuntimeError, match="injected") as failure:
        run(tiny_policy, tmp_path / "torn", 4, *extra, "train.checkpoint_every=0")
    assert any("--resume" in note for note in failure.value.__notes__)
    saved = tmp_path / "torn" / "checkpoints" / "step_000002"
    assert same(weights(saved), weights(tmp_path / "clean" / "final"))
    if algo == "ppo":
        assert same(weights(saved / "critic"), weights(tmp_path / "clean" / "checkpoints" / "step_000002" / "critic"))
    monkeypatch.undo()  # the fault was transient: the resumed run is the uninterrupted one, bit for bit
    run(tiny_policy, tmp_path / "torn", 4, *extra, "train.checkpoint_every=0", resume=True)
    run(tiny_policy, tmp_path / "straight", 4, *extra, "train.checkpoint_every=0")
    assert same(weights(tmp_path / "torn" / "final"), weights(tmp_path / "straight" / "final"))


# ---------------------------------------------------------------- defect 3: non-finite updates
def test_a_non_finite_loss_skips_the_step_and_keeps_the_pre_step_weights(tiny_policy, digit_reward, tmp_path, monkeypatch):
    original = workers.ActorWorker._micro_loss

    def nan_in_step_2(self, micro, normaliser, mismatch):
        loss, stats = original(self, micro, normaliser, mismatch)
        return (loss * float("nan") if self.step == 1 else loss), stats
    monkeypatch.setattr(workers.ActorWorker, "_micro_loss", nan_in_step_2)
    result = run(tiny_policy, tmp_path / "r", 3, f"task.reward={digit_reward}")
    assert [m["nonfinite_skips"] for m in result.history] == [0, 1, 1]
    assert "reward" not in result.history[1]  # nothing of the skipped step's update is reported as done
    run(tiny_policy, tmp_path / "one", 1, f"task.reward={digit_reward}")
    assert same(weights(tmp_path / "r" / "checkpoints" / "step_000002"), weights(tmp_path / "one" / "final"))
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "r" / "final").values())


def test_consecutive_non_finite_steps_stop_the_run_with_a_clean_checkpoint(tiny_policy, digit_reward, tmp_path,
                                                                           monkeypatch, capsys):
    original = workers.ActorWorker._micro_loss

    def nan_from_step_2(self, micro, normaliser, mismatch):
        loss, stats = original(self, micro, normaliser, mismatch)
        return (loss * float("nan") if self.step >= 1 else loss), stats
    monkeypatch.setattr(workers.ActorWorker, "_micro_loss", nan_from_step_2)
    code = main(["train", *overrides(tiny_policy, tmp_path / "r", 10, f"task.reward={digit_reward}",
                                     "train.max_nonfinite_skips=2", "train.checkpoint_every=0"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "non-finite" in err and "--resume" in err, err
    saved = tmp_path / "r" / "checkpoints" / "step_000003"  # step 1 trained, steps 2-3 skipped
    assert all(torch.isfinite(v).all() for v in weights(saved).values())
    assert not (tmp_path / "r" / "final").exists()


def test_top_k_with_kl_in_the_loss_stays_finite(tiny_policy, digit_reward, tmp_path):
    """After mini-batch 1 a sampled token can leave the trainer's top-k: log-prob −inf, k3 KL NaN."""
    result = run(tiny_policy, tmp_path / "r", 4, f"task.reward={digit_reward}", "rollout.top_k=2",
                 "train.mini_batches=4", "train.micro_batch_size=4", "train.lr=0.05", "algorithm.kl_coef=0.5")
    assert sum(m.get("outside_support_tokens", 0.0) for m in result.history) > 0  # the case happened
    assert all(m["nonfinite_skips"] == 0 for m in result.history)
    assert all(v == v for m in result.history for v in m.values())  # no NaN metric
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "r" / "final").values())


# ---------------------------------------------------------------- defect 4: resume semantics
def test_resume_continues_the_data_stream_when_prompts_per_step_changes(tiny_policy, digit_reward, tmp_path, monkeypatch):
    run(tiny_policy, tmp_path / "r", 4, f"task.reward={digit_reward}", "train.lr_decay=none", "train.steps=2")
    seen = []
    original = loop.Run.step

    def record(self, step):
        seen.append(self.data_position)
        return original(self, step)
    monkeypatch.setattr(loop.Run, "step", record)
    run(tiny_policy, tmp_path / "r", 4, f"task.reward={digit_reward}", "train.lr_decay=none",
        "train.prompts_per_step=3", resume=True)
    assert seen == [8, 11]  # 2 steps × 4 prompts consumed, then 3 per step: nothing replayed or skipped


def test_shortening_a_resumed_run_keeps_the_learning_rate_schedule(tiny_policy, digit_reward, tmp_path, monkeypatch):
    extra = (f"task.reward={digit_reward}", "train.lr_decay=linear", "train.warmup_steps=0")
    straight = run(tiny_policy, tmp_path / "straight", 4, *extra)
    interrupt_in_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_policy, tmp_path / "r", 4, *extra)
    monkeypatch.undo()
    resumed = run(tiny_policy, tmp_path / "r", 3, *extra, resume=True)
    assert resumed.history[0]["lr"] == straight.history[2]["lr"]  # step 3 at the 4-step schedule's LR


def test_resume_refuses_changes_it_cannot_honour(tiny_policy, digit_reward, tmp_path, capsys):
    base = overrides(tiny_policy, tmp_path / "r", 2, f"task.reward={digit_reward}")
    assert main(["train", *base, "--quiet"]) == 0
    capsys.readouterr()
    for change, message in [("train.lr=0.5", "'train.lr' cannot change"),
                            ("train.steps=5", "goes past the LR schedule")]:
        assert main(["train", "--resume", str(tmp_path / "r"), change, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


# ---------------------------------------------------------------- defect 5: the logged KL
def test_kl_is_logged_when_the_penalty_lives_in_the_reward(tiny_policy, digit_reward, tmp_path):
    result = run(tiny_policy, tmp_path / "r", 3, f"task.reward={digit_reward}", "algorithm.kl_in=reward",
                 "train.lr=0.05")
    assert result.history[-1]["kl"] > 0  # the actor moved away from the reference


# ---------------------------------------------------------------- defects 7-10: bad run dirs and checkpoints
def resumed_error(run_dir, capsys):
    code = main(["train", "--resume", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    return code, err


@pytest.fixture()
def interrupted_run(tiny_policy, digit_reward, tmp_path, monkeypatch):
    """A 3-step run stopped after its step-2 checkpoint."""
    interrupt_in_step(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_policy, tmp_path / "r", 3, f"task.reward={digit_reward}")
    monkeypatch.undo()
    return tmp_path / "r"


def test_a_flipped_byte_in_checkpoint_weights_is_refused(interrupted_run, capsys):
    path = interrupted_run / "checkpoints" / "step_000002" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    code, err = resumed_error(interrupted_run, capsys)
    assert code == 2 and err.count("\n") == 1 and "model.safetensors: corrupt" in err, err


def test_a_corrupt_rng_state_is_one_line(interrupted_run, capsys):
    path = interrupted_run / "checkpoints" / "step_000002" / "rng.json"
    path.write_text(json.dumps({"python": [3, [1, 2], None], "numpy": ["MT19937", [1], 0, 0, 0.0]}))
    checksums = interrupted_run / "checkpoints" / "step_000002" / "checksums.json"
    checksums.unlink()  # as if the file were damaged before the checksums were written (format 1)
    state = interrupted_run / "checkpoints" / "step_000002" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "format": 1}))
    code, err = resumed_error(interrupted_run, capsys)
    assert code == 2 and err.count("\n") == 1 and "rng.json: malformed RNG state" in err, err


def test_run_dir_that_is_a_file_is_one_line(tiny_policy, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", *overrides(tiny_policy, tmp_path / "afile", 2), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a directory" in err, err


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed(tiny_policy, digit_reward, tmp_path, capsys):
    run(tiny_policy, tmp_path / "straight", 2, f"task.reward={digit_reward}")
    run_dir = tmp_path / "r"  # what a kill -9 during step 1 leaves: config, metrics, tensorboard, no checkpoint
    args = overrides(tiny_policy, run_dir, 2, f"task.reward={digit_reward}")
    load_config(None, args)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(load_config(None, args).to_yaml())
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "time": 1.0, "eval/reward": 0.5}\n')
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert same(weights(run_dir / "final"), weights(tmp_path / "straight" / "final"))
    assert [r["step"] for r in read_metrics(run_dir)] == [r["step"] for r in read_metrics(tmp_path / "straight")]


def test_resuming_a_finished_run_does_nothing(tiny_policy, digit_reward, tmp_path, capsys):
    args = overrides(tiny_policy, tmp_path / "r", 2, f"task.reward={digit_reward}")
    assert main(["train", *args, "--quiet"]) == 0
    rows = (tmp_path / "r" / "metrics.jsonl").read_text()
    exported = (tmp_path / "r" / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == rows
    assert (tmp_path / "r" / "final" / "model.safetensors").stat().st_mtime_ns == exported


def test_a_second_ctrl_c_names_the_resume_command(tiny_policy, digit_reward, tmp_path, monkeypatch, capsys):
    interrupt_in_step(monkeypatch, 2)
    code = main(["train", *overrides(tiny_policy, tmp_path / "r", 4, f"task.reward={digit_reward}"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 130 and f"fastrlhf train --resume {tmp_path / 'r'}" in err and "steps 1-2 are saved" in err, err


# ---------------------------------------------------------------- train.atomic_steps=false (no snapshots)
def test_without_snapshots_a_torn_step_stops_the_run_and_saves_nothing_new(tiny_policy, digit_reward, tmp_path,
                                                                            monkeypatch, capsys):
    """atomic_steps=false trades the per-step snapshot (~3x parameter bytes) for this: a failure after
    an update stops the run with one line, the last checkpoint untouched, the resume command named."""
    original = workers.ActorWorker._update
    fail_in_mini_batch_2_of_step_3(monkeypatch, "boom")
    args = overrides(tiny_policy, tmp_path / "r", 4, f"task.reward={digit_reward}", "train.atomic_steps=false")
    assert main(["train", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "step 3 failed after an update" in err and "--resume" in err, err
    saved = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert saved == ["step_000001", "step_000002"]  # step 3's torn state was not saved
    monkeypatch.setattr(workers.ActorWorker, "_update", original)
    run(tiny_policy, tmp_path / "clean", 2, f"task.reward={digit_reward}")
    assert same(weights(tmp_path / "r" / "checkpoints" / "step_000002"), weights(tmp_path / "clean" / "final"))


def test_without_snapshots_steps_are_the_same_and_a_failure_before_any_update_still_rolls_back(
        tiny_policy, digit_reward, tmp_path, monkeypatch):
    original = workers.ActorWorker._micro_loss

    def nan_in_step_2(self, micro, normaliser, mismatch):  # first mini-batch: before any update of the step
        loss, stats = original(self, micro, normaliser, mismatch)
        return (loss * float("nan") if self.step == 1 else loss), stats
    monkeypatch.setattr(workers.ActorWorker, "_micro_loss", nan_in_step_2)
    result = run(tiny_policy, tmp_path / "r", 3, f"task.reward={digit_reward}", "train.atomic_steps=false")
    assert [m["nonfinite_skips"] for m in result.history] == [0, 1, 1]
    atomic = run(tiny_policy, tmp_path / "a", 3, f"task.reward={digit_reward}")
    assert same(weights(tmp_path / "r" / "final"), weights(tmp_path / "a" / "final"))
    assert [m["nonfinite_skips"] for m in atomic.history] == [0, 1, 1]


def test_a_one_mini_batch_step_defers_its_update_and_needs_no_snapshot(tiny_policy, digit_reward, tmp_path, monkeypatch):
    """With one mini-batch the actor's only update waits for the commit (updates.DeferredUpdates): a
    failure after actor.train (here: in the draft refresh slot) leaves the pre-step weights without
    any snapshot having been copied."""
    from fastrlhf.train import transaction

    extra = (f"task.reward={digit_reward}", "train.mini_batches=1")
    run(tiny_policy, tmp_path / "clean", 2, *extra)
    copies = []
    original_clone = transaction._clone
    monkeypatch.setattr(transaction, "_clone", lambda *a: copies.append(1) or original_clone(*a))
    from fastrlhf.train.speculation import RolloutSpeculation
    original_after = RolloutSpeculation.after_step

    def fails_in_step_3(self, step, batch, seed):
        if step == 2:
            raise RuntimeError("injected after the actor's update")
        return original_after(self, step, batch, seed)
    monkeypatch.setattr(RolloutSpeculation, "after_step", fails_in_step_3)
    with pytest.raises(RuntimeError, match="injected"):
        run(tiny_policy, tmp_path / "torn", 4, *extra, "train.checkpoint_every=0")
    assert copies == []  # no snapshot was ever taken
    assert same(weights(tmp_path / "torn" / "checkpoints" / "step_000002"), weights(tmp_path / "clean" / "final"))
