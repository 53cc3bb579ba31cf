"""Algorithms as dataflow graphs of model calls, run by `fastrlhf.dataflow.LocalExecutor`.

GRPO (one iteration):

    prompts ─► actor.generate ─► sequences, logprobs, completions, prompt_index, ...
                 ├─► reward.score  (prompts, completions, extra fields) ─► rewards
                 ├─► ref.inference (sequences, masks)                   ─► ref_logprobs
                 └─► actor.train   (everything above)                   ─► stats

The actor's train worker turns `rewards` + `prompt_index` into advantages (an estimator from
`algorithms.advantages.ADVANTAGE_ESTIMATORS`) and minimises `clipped_policy_loss`. RLOO and
REINFORCE++ use this same graph with another estimator; Dr. GRPO and DAPO differ only in options.

Batch fields (N samples, T positions; per-prompt data fields are repeated onto each sample by the
executor through `prompt_index`):

    prompts         list[str]    [N]     the prompt text (data key; one row per prompt before generate)
    prompt_index    int64        [N]     row of the prompt each sample came from = its GRPO group
    sequences       int64        [N, T]  prompt + response token ids, padded with the pad id
    attention_mask  int64/bool   [N, T]  1 on real (non-pad) tokens of prompt and response
    response_mask   int64/bool   [N, T]  1 on generated tokens (where log-probs and losses live)
    logprobs        float        [N, T]  behaviour-policy log-probs of each token (pi_old), 0 elsewhere
    completions     list[str]    [N]     decoded responses, for reward functions
    policy_version  int64        [N]     the policy version that generated the sample (its staleness
                                         at train time = the trainer's version − this)
    rewards         float        [N]     scalar reward per sample
    ref_logprobs    float        [N, T]  frozen reference log-probs of each token

Position t of `logprobs` / `ref_logprobs` is the log-prob of token `sequences[:, t]` (aligned with
the token, not with the logits that predicted it).

PPO adds `values` [N, T] (critic.inference, aligned with tokens); offline DPO's data are the
tokenised pairs themselves. Left out: any scheduling choice — placement and concurrency
of these calls belong to the execution plan (`fastrlhf plan` plans these same graphs).

Pure Python, no torch import: the planner (`plan/`) reads these graphs on machines without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastrlhf.dataflow.graph import ROW_SOURCE_KEY, Graph, ModelCall

GENERATE_OUTPUTS = (ROW_SOURCE_KEY, "sequences", "attention_mask", "response_mask", "logprobs", "completions",
                    "policy_version")
SEQUENCE_INPUTS = ("sequences", "attention_mask", "response_mask")


def grpo_graph(extra_reward_inputs: Sequence[str] = (), use_reference: bool = True) -> Graph:
    """GRPO as a graph.

    extra_reward_inputs: further data keys the reward function reads (e.g. "answer" from the
        prompt JSONL); they become data keys of the graph.
    use_reference: False drops ref.inference (no KL term, as in DAPO / Dr. GRPO).
    """
    reference_keys = ("ref_logprobs",) if use_reference else ()
    calls = [
        ModelCall("actor", "generate", inputs=("prompts",), outputs=GENERATE_OUTPUTS),
        ModelCall("reward", "inference", inputs=("prompts", "completions", *extra_reward_inputs),
                  outputs=("rewards",), name="reward.score"),
    ]
    if use_reference:
        calls.append(ModelCall("ref", "inference", inputs=SEQUENCE_INPUTS, outputs=reference_keys))
    train_inputs = (*SEQUENCE_INPUTS, "logprobs", *reference_keys, "rewards", ROW_SOURCE_KEY, "policy_version")
    calls.append(ModelCall("actor", "train", inputs=train_inputs))
    return Graph(calls, data_keys=("prompts", *extra_reward_inputs))


def ppo_graph(extra_reward_inputs: Sequence[str] = (), use_reference: bool = True) -> Graph:
    """PPO with a critic:

        actor.generate ─► {reward.score, ref.inference, critic.inference} ─► {actor.train, critic.train}

    Both train calls compute GAE from the same rewards, values and KL (`objectives.ppo_targets`).
    """
    reference_keys = ("ref_logprobs",) if use_reference else ()
    calls = [
        ModelCall("actor", "generate", inputs=("prompts",), outputs=GENERATE_OUTPUTS),
        ModelCall("reward", "inference", inputs=("prompts", "completions", *extra_reward_inputs),
                  outputs=("rewards",), name="reward.score"),
        ModelCall("critic", "inference", inputs=SEQUENCE_INPUTS, outputs=("values",)),
    ]
    if use_reference:
        calls.append(ModelCall("ref", "inference", inputs=SEQUENCE_INPUTS, outputs=reference_keys))
    targets = (*SEQUENCE_INPUTS, "logprobs", *reference_keys, "rewards", "values")
    calls.append(ModelCall("actor", "train", inputs=(*targets, ROW_SOURCE_KEY, "policy_version")))
    calls.append(ModelCall("critic", "train", inputs=targets))
    return Graph(calls, data_keys=("prompts", *extra_reward_inputs))


def online_dpo_graph(extra_reward_inputs: Sequence[str] = (), use_reference: bool = True) -> Graph:
    """Online DPO: GRPO's graph — k samples per prompt, rewards pick chosen / rejected inside actor.train.

    The reference is not optional: DPO's loss is relative to it."""
    return grpo_graph(extra_reward_inputs, use_reference=True)


def dpo_graph(extra_reward_inputs: Sequence[str] = (), use_reference: bool = True) -> Graph:
    """Offline DPO on tokenised preference pairs (rows chosen₀, rejected₀, chosen₁, ...):

        data (sequences, masks) ─► ref.inference ─► actor.train
    """
    calls = [ModelCall("ref", "inference", inputs=SEQUENCE_INPUTS, outputs=("ref_logprobs",)),
             ModelCall("actor", "train", inputs=(*SEQUENCE_INPUTS, "ref_logprobs"))]
    return Graph(calls, data_keys=SEQUENCE_INPUTS)


# algorithm name -> graph builder (RLOO and REINFORCE++ share GRPO's graph; see module docstring)
GRAPHS: dict[str, Callable[..., Graph]] = {
    "grpo": grpo_graph,
    "rloo": grpo_graph,
    "reinforce_pp": grpo_graph,
    "ppo": ppo_graph,
    "online_dpo": online_dpo_graph,
    "dpo": dpo_graph,
}
