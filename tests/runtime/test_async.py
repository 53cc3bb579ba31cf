"""Rollouts made ahead of their step, end to end: an asynchronous run learns, its samples carry the
version that made them, it trains the same on `local` and `ray`, weights are published as snapshots,
and a run resumed with rollouts still queued is bit-identical to the uninterrupted one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fastrlhf.config import load_config
from fastrlhf.train import loop
from fastrlhf.train.loop import train

ray = pytest.importorskip("ray")


def overrides(run_dir, steps, extra=()):
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "train.prompts_per_step=8", "rollout.samples_per_prompt=4",
            "train.eval_every=0", "task.eval_size=16", "train.checkpoint_every=0", *extra]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / "final/model.safetensors")), load_file(str(b / "final/model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_asynchronous_run_learns_with_every_sample_one_version_old(ray_cluster, tmp_path):
    """The default job with K = 1 (generator actor one step ahead) raises held-out accuracy by the
    synchronous run's margin (tests/integration/test_learning.py)."""
    config = load_config(None, [f"train.run_dir={tmp_path}", "train.steps=60", "train.checkpoint_every=0",
                                "runtime.max_staleness=1"])
    result = train(config, show_progress=False)
    before, after = result.start_eval["eval/reward"], result.final_eval["eval/reward"]
    assert after >= before + 0.10, (before, after)
    steps = [m for m in metrics(tmp_path) if "reward" in m]
    assert len(steps) == 60
    assert steps[0]["staleness/0"] == 1.0  # step 1 and 2 both come from the initial weights
    assert all(m["staleness/1"] == 1.0 and m["staleness_max"] == 1.0 for m in steps[1:])


def test_asynchronous_rollouts_are_the_same_on_local_and_ray(ray_cluster, tmp_path):
    runs = {}
    for backend in ("local", "ray"):
        cfg = load_config(None, overrides(tmp_path / backend, 4, ["runtime.max_staleness=2", f"runtime.backend={backend}"]))
        runs[backend] = train(cfg, show_progress=False).history
    for a, b in zip(runs["local"], runs["ray"]):
        for key in ("reward", "response_length", "loss", "grad_norm", "staleness_mean"):
            assert a[key] == b[key], key
    assert same_weights(tmp_path / "local", tmp_path / "ray")


@pytest.mark.parametrize("extra", [["runtime.max_staleness=2"], ["train.off_policy_steps=3"],
                                   ["runtime.max_staleness=1", "runtime.backend=ray"]],
                         ids=["async-local", "off-policy", "async-ray"])
def test_resume_with_rollouts_in_the_queue_is_bit_identical(ray_cluster, tmp_path, monkeypatch, extra):
    """A step fails after 4 steps: the checkpoint holds the rollouts made from older weights; the
    resumed run trains on them and ends with the uninterrupted run's weights and metrics."""
    straight = train(load_config(None, overrides(tmp_path / "straight", 7, extra)), show_progress=False)
    original = loop.Run.step

    def fail_in_step_5(self, step):
        if step == 4:
            raise RuntimeError("injected failure")
        return original(self, step)

    monkeypatch.setattr(loop.Run, "step", fail_in_step_5)
    cfg = load_config(None, overrides(tmp_path / "cut", 7, extra))
    with pytest.raises(RuntimeError, match="injected"):
        train(cfg, show_progress=False)
    queued = sorted(p.name for p in (tmp_path / "cut/checkpoints/step_000004/rollouts").glob("*.json"))
    expected = {"runtime.max_staleness=2": ["step_000005.json", "step_000006.json"],  # weights of steps 3, 4
                "train.off_policy_steps=3": ["step_000005.json", "step_000006.json"],  # the rest of block 4-6
                "runtime.max_staleness=1": ["step_000005.json"]}[extra[0]]
    assert queued == expected
    monkeypatch.setattr(loop.Run, "step", original)
    resumed = train(cfg, resume=True, show_progress=False)
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in straight.history[4:]]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[4:]]
    assert same_weights(tmp_path / "straight", tmp_path / "cut")


def test_published_weights_are_a_snapshot(ray_cluster):
    """What a rollout worker loads is the policy at publish time, even if the trainer updates its
    tensors in place right after (no torn mix of two versions)."""
    from fastrlhf.runtime.weights import WeightReceiver, publish

    trainer = torch.nn.Linear(16, 16)
    before = {k: v.clone() for k, v in trainer.state_dict().items()}
    version, refs, nbytes, _ = publish(trainer.state_dict(), 7)
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(1.0)  # the next update, in place
    worker = torch.nn.Linear(16, 16)
    receiver = WeightReceiver(worker)
    receiver.load(ray.get(refs), version)
    assert receiver.version == 7 and nbytes == sum(v.numel() * 4 for v in before.values())
    assert all(torch.equal(worker.state_dict()[k], before[k]) for k in before)
