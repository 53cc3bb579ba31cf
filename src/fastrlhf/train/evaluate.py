"""Held-out evaluation of a policy.

- `evaluate`: greedy completions → mean reward (= accuracy for an exact-match reward).
- `evaluate_preference`: the reward-model over-optimisation view (Gao et al. 2022): on held-out
  prompts, `samples` completions each at temperature 1 from the policy and
    eval/gold_reward  mean hidden gold score of the samples (what "humans" prefer),
    eval/gold_greedy  gold score of the greedy completion,
    eval/kl           mean per-sequence KL(π ‖ π_ref) estimate Σ_t [log π(x_t) − log π_ref(x_t)] over
                      the samples (π_ref = the starting SFT policy; plain model distributions),
    eval/reward       mean training reward of the samples (e.g. the learned reward model),
    eval/response_length.
  Sampling is seeded, so two policies are compared on the same random numbers.
"""

from __future__ import annotations

import torch

from fastrlhf.dataflow.batch import Batch
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.tokenizer import Tokenizer
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.tasks.rewards import score
from fastrlhf.train.logprobs import sequence_logprobs

EVAL_SEED = 20_261_123


@torch.no_grad()
def evaluate(model: CausalLM, tokenizer: Tokenizer, rows: list[dict], reward_fn, field_names, max_new_tokens: int,
             num_slots: int = 128) -> dict[str, float]:
    """Greedy completions of every row → mean reward (= accuracy for an exact-match reward).

    `reward_fn`: a reward callable, or a reward worker (anything with `.inference(batch)`)."""
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    engine = RolloutEngine(model, num_slots=num_slots)
    stops = tuple(tokenizer.stop_token_ids())
    seqs = engine.generate([tokenizer.encode_prompt(r["prompt"]) for r in rows],
                           SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=stops))
    completions = [tokenizer.decode(s.token_ids) for s in seqs]
    fields = {n: [r[n] for r in rows] for n in field_names}
    if hasattr(reward_fn, "inference"):
        batch = Batch({"prompts": [r["prompt"] for r in rows], "completions": completions, **fields})
        rewards = reward_fn.inference(batch)["rewards"].tolist()
    else:
        rewards = score(reward_fn, completions, fields)
    model.train(was_training)
    return {"eval/reward": sum(rewards) / len(rewards),
            "eval/response_length": sum(len(s.token_ids) for s in seqs) / len(seqs)}


@torch.no_grad()
def evaluate_preference(model: CausalLM, tokenizer: Tokenizer, rows: list[dict], reference: CausalLM,
                        reward_worker=None, max_new_tokens: int = 8, samples: int = 2,
                        num_slots: int = 128) -> dict[str, float]:
    """Gold reward, KL to `reference` and training reward of sampled completions (module docstring)."""
    from fastrlhf.tasks.preference import gold_reward
    from fastrlhf.train.padding import pack_sequences

    if not rows:
        return {}
    was_training = model.training
    model.eval()
    engine = RolloutEngine(model, num_slots=num_slots)
    stops = tuple(tokenizer.stop_token_ids())
    prompts = [tokenizer.encode_prompt(r["prompt"]) for r in rows]
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=max_new_tokens, stop_token_ids=stops))
    sampled = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, stop_token_ids=stops,
                                                      n=samples, seed=EVAL_SEED))
    digits = [rows[s.prompt_index]["digits"] for s in sampled]
    completions = [tokenizer.decode(s.token_ids) for s in sampled]
    metrics = {
        "eval/gold_reward": _mean(gold_reward(completions, digits)),
        "eval/gold_greedy": _mean(gold_reward([tokenizer.decode(s.token_ids) for s in greedy], [r["digits"] for r in rows])),
        "eval/response_length": _mean([len(s.token_ids) for s in sampled]),
    }
    sequences, attention_mask, response_mask = pack_sequences([s.prompt_ids for s in sampled],
                                                              [s.token_ids for s in sampled], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    plain = SamplingParams(temperature=1.0)
    args = (sequences.to(device), attention_mask.to(device), response_mask.to(device), plain)
    log_ratio = sequence_logprobs(model, *args) - sequence_logprobs(reference, *args)  # [N, T], 0 off the response
    metrics["eval/kl"] = float(log_ratio.sum(1).mean())
    if reward_worker is not None:
        batch = Batch({"prompts": [rows[s.prompt_index]["prompt"] for s in sampled], "completions": completions,
                       "digits": digits})
        metrics["eval/reward"] = float(reward_worker.inference(batch)["rewards"].mean())
    model.train(was_training)
    return metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)
