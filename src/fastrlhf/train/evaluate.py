"""Held-out evaluation: greedy accuracy / mean reward of a policy on evaluation rows."""

from __future__ import annotations

import torch

from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.tokenizer import Tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks.rewards import score


@torch.no_grad()
def evaluate(model: CausalLM, tokenizer: Tokenizer, rows: list[dict], reward_fn, field_names, max_new_tokens: int,
             num_slots: int = 128) -> dict[str, float]:
    """Greedy completions of every row → mean reward (= accuracy for an exact-match reward)."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    engine = RolloutEngine(model, num_slots=num_slots)
    stops = tuple(tokenizer.stop_token_ids())
    seqs = engine.generate([tokenizer.encode_prompt(r["prompt"]) for r in rows],
                           SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=stops))
    completions = [tokenizer.decode(s.token_ids) for s in seqs]
    rewards = score(reward_fn, completions, {n: [r[n] for r in rows] for n in field_names})
    model.train(was_training)
    return {"eval/reward": sum(rewards) / len(rewards),
            "eval/response_length": sum(len(s.token_ids) for s in seqs) / len(seqs)}
