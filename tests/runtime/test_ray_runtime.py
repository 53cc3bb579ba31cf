"""The Ray runtime against the local one: same tokens, same training, lossless migration and faults.

One local Ray cluster for the module (6 logical CPUs on the 2-core box; every worker runs 1 thread,
and so does this process while comparing bits). Every figure here is asserted, not just printed.
"""

import pytest
import torch

from fastrlhf.config import load_config
from fastrlhf.dataflow.batch import Batch
from fastrlhf.errors import UserError
from fastrlhf.train.loop import step_seed, train
from fastrlhf.train.state import TrainingState

ray = pytest.importorskip("ray")


def overrides(run_dir, steps=3, extra=()):
    return [f"train.run_dir={run_dir}", f"train.steps={steps}", "train.prompts_per_step=8", "rollout.samples_per_prompt=4",
            "train.eval_every=0", "task.eval_size=16", "train.checkpoint_every=0", *extra]


def ray_overrides(rollout=2, trainer=1, extra=()):
    return ["runtime.backend=ray", f"runtime.rollout_workers={rollout}", f"runtime.trainer_workers={trainer}", *extra]


def prompts_batch(state, count=8, position=0):
    rows = state.source.rows_at(position, count)
    return Batch({"prompts": [r["prompt"] for r in rows]})


def generate_both(local_cfg, ray_cfg, step=0):
    """One generate call of step `step` through the local actor and through the ray pool."""
    from fastrlhf.runtime.session import RaySession

    local = TrainingState(local_cfg, schedule_steps=10)
    local.set_step(step, step_seed(0, step))
    batch = prompts_batch(local)
    expected, _ = local.actor.generate(batch)
    session = RaySession(ray_cfg, schedule_steps=10)
    try:
        session.set_step(step, step_seed(0, step))
        actor = session.workers["actor"]
        actor.sync_weights()
        got, stats = actor.generate(batch)
        pool_stats = session.pool.last
    finally:
        session.close()
    return expected, got, stats, pool_stats


def assert_same_samples(expected, got, exact_logprobs=True):
    assert torch.equal(expected["prompt_index"], got["prompt_index"])
    assert torch.equal(expected["sequences"], got["sequences"])
    assert torch.equal(expected["response_mask"], got["response_mask"])
    assert expected["completions"] == got["completions"]
    if exact_logprobs:
        assert torch.equal(expected["logprobs"], got["logprobs"])


@pytest.mark.parametrize("workers,balance", [(1, "static"), (3, "static"), (3, "tokens")])
def test_ray_rollout_workers_draw_the_local_tokens(ray_cluster, tmp_path, workers, balance):
    local = load_config(None, overrides(tmp_path / "l"))
    remote = load_config(None, overrides(tmp_path / "r", extra=ray_overrides(workers, extra=[f"runtime.balance={balance}"])))
    expected, got, stats, _ = generate_both(local, remote, step=1)
    # tokens: identical whoever draws them. Log-probs: the same bits when the decode batches match
    # (one worker, one thread on both sides); split over 3 workers each engine decodes a smaller batch,
    # and fp32 GEMMs round a row differently with the batch's shape (measured max 6.3e-7)
    assert_same_samples(expected, got, exact_logprobs=workers == 1)
    assert (expected["logprobs"] - got["logprobs"]).abs().max() <= 2e-6
    assert stats["rollout/rounds"] >= 1


@pytest.mark.parametrize("carry", ["kv", "tokens"])
def test_migrated_samples_equal_unmigrated_ones_none_lost_or_duplicated(ray_cluster, tiny_policy, tmp_path, carry):
    common = [f"model.path={tiny_policy}", "rollout.max_new_tokens=24"]  # a random policy: ragged lengths
    local = load_config(None, overrides(tmp_path / "l", extra=common))
    # a deliberately bad split (static) re-balanced every few engine steps
    remote = load_config(None, overrides(tmp_path / "r", extra=[*common, *ray_overrides(
        2, extra=["runtime.balance=static", "runtime.migrate_threshold=0.05", "runtime.round_seconds=0.002",
                  f"runtime.migrate_with={carry}"])]))
    expected, got, stats, pool = generate_both(local, remote)
    assert pool.migrated > 0, "the test must actually migrate sequences"
    assert pool.migrated_kv == (pool.migrated if carry == "kv" else 0)
    assert_same_samples(expected, got, exact_logprobs=False)
    # smaller decode batches (and a re-prefill's other summation order): equal to fp32 rounding
    assert (expected["logprobs"] - got["logprobs"]).abs().max() <= 1e-5
    ids = (got["prompt_index"] * 4).tolist()
    assert len(got) == 32 and sorted(ids) == sorted(k * 4 for k in range(8) for _ in range(4))


def test_a_killed_rollout_worker_is_rerun_elsewhere_then_restarted_and_resynced(ray_cluster, tmp_path, monkeypatch):
    from fastrlhf.runtime.pool_call import PoolCall
    from fastrlhf.runtime.session import RaySession

    replies = []
    original = PoolCall._on_advance

    def kill_worker_0_after_the_second_reply(call, w, reply, extra):
        replies.append(w)
        if len(replies) == 2 and call.call == 1:  # worker 0 dies with work in flight (Ray restarts it)
            ray.kill(call.workers[0], no_restart=False)
        return original(call, w, reply, extra)

    monkeypatch.setattr(PoolCall, "_on_advance", kill_worker_0_after_the_second_reply)
    local = TrainingState(load_config(None, overrides(tmp_path / "l")), schedule_steps=10)
    config = load_config(None, overrides(tmp_path / "r", extra=ray_overrides(2, extra=["runtime.migrate_threshold=0",
                                                                                      "runtime.round_seconds=0.001"])))
    session = RaySession(config, schedule_steps=10)
    try:
        actor = session.workers["actor"]
        for step in (0, 1):
            local.set_step(step, step_seed(0, step))
            session.set_step(step, step_seed(0, step))
            batch = prompts_batch(local, position=8 * step)
            expected, _ = local.actor.generate(batch)
            sync = actor.sync_weights()
            if step == 1:
                assert sync["sync/workers"] == 1  # only the restarted worker needed the weights again
            got, stats = actor.generate(batch)
            assert_same_samples(expected, got, exact_logprobs=False)  # two engines: smaller decode batches
            # fp32 reduction-order noise of other decode-batch shapes — which shapes depends on when the
            # kill lands (2.0e-6 and 3.1e-6 seen); the project's engine-vs-trainer bound for it is 1e-5
            assert (expected["logprobs"] - got["logprobs"]).abs().max() <= 1e-5
            if step == 0:
                assert stats["rollout/worker_restarts"] == 1 and stats["rollout/rerun"] > 0
        assert session.pool.versions == [0, 0]
    finally:
        session.close()


def test_streaming_scoring_gives_the_barrier_result(ray_cluster, tmp_path):
    """Streamed to a separate scoring actor vs scored after the barrier on trainer rank 0."""
    runs = {}
    for stream, scoring in (("true", "separate"), ("false", "trainer")):
        cfg = load_config(None, overrides(tmp_path / stream, steps=2, extra=ray_overrides(
            2, extra=[f"runtime.stream_scoring={stream}", f"runtime.scoring={scoring}"])))
        runs[stream] = train(cfg, show_progress=False).history
    for streamed, barrier in zip(runs["true"], runs["false"]):
        for key in ("reward", "kl", "loss", "grad_norm", "response_length"):
            assert streamed[key] == barrier[key], key
    assert runs["true"][0]["stream/reward.score_parts"] >= 1 and "stream/reward.score_parts" not in runs["false"][0]


def test_a_ray_run_trains_like_the_local_run(ray_cluster, tmp_path):
    local = train(load_config(None, overrides(tmp_path / "local")), show_progress=False)
    remote = train(load_config(None, overrides(tmp_path / "ray", extra=ray_overrides(1))), show_progress=False)
    for a, b in zip(local.history, remote.history):
        for key in ("reward", "kl", "response_length", "loss", "grad_norm"):
            assert a[key] == b[key], key
    from safetensors.torch import load_file

    w_local = load_file(str(tmp_path / "local/final/model.safetensors"))
    w_ray = load_file(str(tmp_path / "ray/final/model.safetensors"))
    assert all(torch.equal(w_local[k], w_ray[k]) for k in w_local)


def test_two_trainer_ranks_follow_the_one_rank_trajectory(ray_cluster, tmp_path):
    extra = ["train.mini_batches=2", "train.micro_batch_tokens=96"]  # several micro-batches per rank
    histories = {}
    for ranks in (1, 2):
        cfg = load_config(None, overrides(tmp_path / f"m{ranks}", steps=4, extra=[*extra, *ray_overrides(1, ranks)]))
        histories[ranks] = train(cfg, show_progress=False).history
    for one, two in zip(histories[1], histories[2]):
        assert one["reward"] == two["reward"]  # the samples stay identical while the weights agree this well
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-6)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)


def test_a_dead_trainer_rank_stops_the_run_in_one_line_and_resume_is_exact(ray_cluster, tmp_path, monkeypatch):
    from fastrlhf.train import loop

    straight = train(load_config(None, overrides(tmp_path / "straight", steps=4, extra=ray_overrides(1, 2))),
                     show_progress=False)
    run_dir = tmp_path / "killed"
    original = loop.Run.step

    def kill_rank_1_in_step_3(self, step):
        if step == 2:
            ray.kill(self.trainer.trainers.ranks[1], no_restart=True)
        return original(self, step)

    monkeypatch.setattr(loop.Run, "step", kill_rank_1_in_step_3)
    cfg = load_config(None, overrides(run_dir, steps=4, extra=[*ray_overrides(1, 2), "train.checkpoint_every=2"]))
    with pytest.raises(UserError) as failure:
        train(cfg, show_progress=False)
    message = str(failure.value)
    assert "\n" not in message and "trainer rank 1 of 2 died" in message
    assert f"steps 1-2 are saved; continue with: fastrlhf train --resume {run_dir}" in message
    monkeypatch.setattr(loop.Run, "step", original)
    resumed = train(cfg, resume=True, show_progress=False)
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in straight.history[2:]]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight/final/model.safetensors"))
    b = load_file(str(run_dir / "final/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
