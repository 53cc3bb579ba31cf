"""`rollout.speculative` in training runs: drafter choice, draft-model refresh, exactness, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fastrlhf.cli import main
from fastrlhf.config import load_config
from fastrlhf.errors import UserError
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.strategy import AdaptiveSpeculator
from fastrlhf.rollout.speculative.verify import Speculator
from fastrlhf.train.loop import train
from fastrlhf.train.speculation import RolloutSpeculation, draft_layers, make_speculator


def overrides(policy, reward, run_dir, steps, extra=()):
    return [f"model.path={policy}", f"task.reward={reward}", f"train.run_dir={run_dir}", f"train.steps={steps}",
            "train.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=6",
            "train.checkpoint_every=2", "train.eval_every=0", "task.eval_size=4", "train.micro_batch_size=8",
            "algorithm.kl_coef=0.05", "train.lr=0.01", *extra]


def step_metrics(run_dir):
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "reward" in m]


def weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def rollout_config(**values):
    return load_config(None, [f"rollout.{k}={v}" for k, v in values.items()]).rollout


# ------------------------------------------------------------------ set-up
def test_speculator_per_setting():
    draft = DraftModelDrafter(model=None)
    assert make_speculator(rollout_config()) is None  # default 'off'
    fixed = make_speculator(rollout_config(speculative="draft", gamma=3), draft)
    assert type(fixed) is Speculator and fixed.drafter is draft and fixed.gamma == 3
    chosen = make_speculator(rollout_config(speculative="draft"), draft)
    assert isinstance(chosen, AdaptiveSpeculator) and chosen.drafter is draft and 0 in chosen.gammas
    both = make_speculator(rollout_config(speculative="adaptive"), draft)
    assert isinstance(both.drafter, NGramDrafter) and both.others == {"draft": draft} and 0 in both.gammas
    both_fixed = make_speculator(rollout_config(speculative="adaptive", gamma=2), draft)
    assert both_fixed.gammas == (2,) and set(both_fixed.drafters) == {"ngram", "draft"}


def test_draft_layers_default_to_half_and_must_be_fewer_than_the_actor():
    assert draft_layers(rollout_config(speculative="draft"), 4) == 2
    assert draft_layers(rollout_config(speculative="draft"), 3) == 2
    assert draft_layers(rollout_config(speculative="draft", draft_layers=3), 4) == 3
    with pytest.raises(UserError, match="rollout.draft_layers=1 .* 1 layers"):
        draft_layers(rollout_config(speculative="draft"), 1)


def test_refresh_moves_the_draft_towards_the_actor_without_touching_the_actor_or_the_global_rng(tiny_policy):
    from fastrlhf.model.hf_io import load_model
    from fastrlhf.train.padding import pack_sequences

    actor = load_model(tiny_policy)
    before_actor = {k: v.clone() for k, v in actor.state_dict().items()}
    spec = RolloutSpeculation.build(rollout_config(speculative="draft", draft_layers=1, draft_refresh_every=2,
                                                   draft_epochs=4, draft_lr=0.01),
                                    actor, SamplingParams(temperature=1.0), micro_batch=4)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, actor.config.vocab_size, (5,), generator=g).tolist() for _ in range(8)]
    responses = [torch.randint(3, actor.config.vocab_size, (6,), generator=g).tolist() for _ in range(8)]
    sequences, attention_mask, response_mask = pack_sequences(prompts, responses, 0)
    batch = {"sequences": sequences, "attention_mask": attention_mask, "response_mask": response_mask,
             "logprobs": torch.zeros(sequences.shape)}
    rng = torch.get_rng_state()
    assert spec.after_step(0, batch, seed=5) == {}  # not due: refresh after steps 2, 4, ...
    stats = spec.after_step(1, batch, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert stats["spec/draft_kl_last"] < stats["spec/draft_kl"]
    assert all(torch.equal(v, before_actor[k]) for k, v in actor.state_dict().items())
    assert spec.after_step(1, {k: v for k, v in batch.items() if k != "logprobs"}, seed=5) == {}  # not rollouts
    assert set(spec.companions()) == {"draft"}


# ------------------------------------------------------------------ runs
def test_greedy_runs_are_identical_with_and_without_draft_speculation(tiny_policy, digit_reward, tmp_path):
    """At temperature 0 the draft model drafts its argmax, verified by comparison: every setting
    commits plain decoding's tokens, so every step's rewards are identical, and the weights agree up
    to the rounding of the behaviour log-probs (a (1+γ)-token verification pass vs one-token decode,
    ≤ 1e-5 apart) — far below what one update moves them. The draft refresh leaves the actor alone."""
    common = ["rollout.temperature=0", "algorithm.name=reinforce_pp", "rollout.samples_per_prompt=2",
              "rollout.draft_refresh_every=1"]
    runs = {"off": [], "draft": ["rollout.speculative=draft", "rollout.gamma=3"], "adaptive": ["rollout.speculative=adaptive"]}
    for name, extra in runs.items():
        train(load_config(None, overrides(tiny_policy, digit_reward, tmp_path / name, 3, [*common, *extra])), show_progress=False)
    plain = step_metrics(tmp_path / "off")
    for name in ("draft", "adaptive"):
        spec = step_metrics(tmp_path / name)
        for key in ("reward", "response_length"):
            assert [m[key] for m in spec] == [m[key] for m in plain]
        assert all("spec/draft_kl" in m and m["logprob_diff"] <= 1e-5 for m in spec)
        assert any(m.get("spec/acceptance", 0) > 0 for m in spec)
        a, b = weights(tmp_path / "off"), weights(tmp_path / name)
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    base = load_file(str(tiny_policy / "model.safetensors"))
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-2  # training moved the weights far more


def test_stochastic_draft_run_speculates_and_resumes_bit_identically(tiny_policy, digit_reward, tmp_path, monkeypatch):
    """speculative=draft at T = 1 with a fixed γ and a refresh every step: drafts are accepted, the
    trainer's log-probs match the engine's, and a run killed after its step-2 checkpoint resumes to the
    same weights and rewards (the refreshed draft is restored from the checkpoint)."""
    from fastrlhf.train import loop

    extra = ["rollout.speculative=draft", "rollout.gamma=2", "rollout.draft_refresh_every=1"]
    config = lambda run_dir: load_config(None, overrides(tiny_policy, digit_reward, run_dir, 4, extra))
    train(config(tmp_path / "straight"), show_progress=False)
    straight = step_metrics(tmp_path / "straight")
    assert len(straight) == 4
    assert all(m["logprob_diff"] <= 1e-5 for m in straight)
    assert all(m["spec/acceptance"] > 0 and m["spec/tokens_per_pass"] > 1 and m["spec/gamma"] == 2 for m in straight)
    assert all(m["spec/draft_kl"] > 0 for m in straight)
    assert (tmp_path / "straight" / "checkpoints" / "step_000004" / "draft" / "optimizer.safetensors").is_file()

    original_step = loop.Run.step

    def dies_at_step_3(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original_step(self, step)

    monkeypatch.setattr(loop.Run, "step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "resumed"), show_progress=False)
    monkeypatch.setattr(loop.Run, "step", original_step)
    train(config(tmp_path / "resumed"), resume=True, show_progress=False)
    resumed = step_metrics(tmp_path / "resumed")
    for key in ("reward", "spec/acceptance", "spec/draft_kl"):
        assert [m[key] for m in resumed] == [m[key] for m in straight], key
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args,message", [
    (["rollout.speculative=medusa"], "rollout.speculative"),
    (["rollout.draft_refresh_every=-1"], "rollout.draft_refresh_every"),
    (["rollout.draft_lr=0"], "rollout.draft_lr"),
    (["rollout.speculative=draft", "rollout.draft_layers=4"], "rollout.draft_layers=4"),  # the built-in policy has 4
])
def test_bad_speculation_config_is_one_line_exit_2(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    code = main(["train", f"train.run_dir={run_dir}", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()
