"""What a run builds from its config: the device, the starting policy's directory, the PPO critic and
the rollout speculator (train/loop.py assembles them into a `Run`)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastrlhf.config import Config
from fastrlhf.errors import UserError
from fastrlhf.model.precision import Precision
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.train.critic import CriticWorker
from fastrlhf.train.optim import build_optimizer, build_scheduler
from fastrlhf.train.reward_workers import is_reward_model_dir, load_reward_model
from fastrlhf.train.speculation import RolloutSpeculation


def model_directory(config: Config) -> Path:
    """`model.path`, or for "builtin" the shipped starting policy of `task.name` (`BUILTIN_POLICIES`)."""
    if config.model.path == "builtin":
        return BUILTIN_POLICIES[config.task.name]()
    return Path(config.model.path)


def _preference_policy() -> Path:
    from fastrlhf.tasks.preference import policy_dir

    return policy_dir()


def _arithmetic_policy() -> Path:
    from fastrlhf.tasks.builtin_policy import builtin_policy_dir

    return builtin_policy_dir()


def _worked_addition_policy() -> Path:
    from fastrlhf.tasks.builtin_policy import worked_policy_dir

    return worked_policy_dir()


# built-in task name -> its shipped policy directory (model.path=builtin)
BUILTIN_POLICIES = {"arithmetic": _arithmetic_policy, "preference": _preference_policy,
                    "worked_addition": _worked_addition_policy}


def make_speculation(config: Config, model, params: SamplingParams) -> RolloutSpeculation:
    """The engine's speculator for `rollout.speculative`, with the draft model and its refresh
    (train/speculation.py)."""
    return RolloutSpeculation.build(config.rollout, model, params, config.train.micro_batch_size)


def build_critic(config: Config, policy, tokenizer, reward, device, schedule_steps: int, dtype=None,
                 data_parallel=None) -> CriticWorker:
    """PPO's critic from the reward model (`critic_init` auto / reward_model, when the reward is one
    with the policy's vocabulary: the critic reads the policy's token ids) or the policy + a fresh head."""
    from fastrlhf.model.heads import with_score_head

    a, t = config.algorithm, config.train
    from_rm = isinstance(reward, str) and is_reward_model_dir(reward)
    if from_rm and load_tokenizer(reward).hf.get_vocab() != tokenizer.hf.get_vocab():
        if a.critic_init == "reward_model":
            raise UserError(f"algorithm.critic_init=reward_model: {reward} has a different vocabulary from the policy")
        from_rm = False
    if a.critic_init == "reward_model" and not from_rm:
        raise UserError(f"algorithm.critic_init=reward_model but the reward ({reward!r}) is not a reward-model directory")
    if a.critic_init != "policy" and from_rm:
        model = load_reward_model(reward, device)[0]
    else:
        model = with_score_head(policy, seed=t.seed)
    optimizer = build_optimizer(model, a.critic_lr, t.weight_decay)
    scheduler = build_scheduler(optimizer, t.warmup_steps, schedule_steps, t.lr_decay)
    precision = Precision(dtype or torch.float32, device)  # its own fp16 loss scale, if any
    return CriticWorker(model, optimizer, scheduler, a, t.micro_batch_size, t.mini_batches, t.grad_clip, precision,
                        data_parallel=data_parallel)
