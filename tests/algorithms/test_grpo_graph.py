"""The GRPO graph run by the executor on a tiny tabular policy: the pieces fit and it learns."""

import torch

from fastrlhf.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs
from fastrlhf.algorithms.graphs import GRAPHS, grpo_graph
from fastrlhf.algorithms.losses.policy import clipped_policy_loss
from fastrlhf.config import AlgorithmSection
from fastrlhf.dataflow import Batch, LocalExecutor

VOCAB, RESPONSE_TOKENS, SAMPLES = 4, 2, 8


class TabularActor:
    """Policy pi(token | prompt "want d") = softmax(table[d]); each response is 2 independent tokens."""

    def __init__(self):
        self.table = torch.zeros(VOCAB, VOCAB, requires_grad=True)  # [prompt digit, token]
        self.optimizer = torch.optim.Adam([self.table], lr=0.1)

    def token_logprobs(self, sequences):  # [N, 1 + R] -> [N, 1 + R], 0 at the prompt position
        log_probs = torch.log_softmax(self.table[sequences[:, 0]], dim=-1)  # [N, V]
        picked = log_probs.gather(1, sequences[:, 1:])                      # [N, R]
        return torch.cat([torch.zeros(len(sequences), 1), picked], dim=1)

    def generate(self, batch):
        digits = torch.tensor([int(p.split()[-1]) for p in batch["prompts"]])
        prompt_index = torch.arange(len(digits)).repeat_interleave(SAMPLES)  # [N]
        with torch.no_grad():
            probs = torch.softmax(self.table[digits[prompt_index]], dim=-1)  # [N, V]
            tokens = torch.multinomial(probs, RESPONSE_TOKENS, replacement=True)  # [N, R]
            sequences = torch.cat([digits[prompt_index, None], tokens], dim=1)
            logprobs = self.token_logprobs(sequences)
        response_mask = torch.tensor([[0] + [1] * RESPONSE_TOKENS]).expand_as(sequences)
        return Batch({
            "prompt_index": prompt_index, "sequences": sequences, "attention_mask": torch.ones_like(sequences),
            "response_mask": response_mask, "logprobs": logprobs,
            "completions": [" ".join(str(t) for t in row.tolist()) for row in tokens],
            "policy_version": torch.zeros(len(prompt_index), dtype=torch.int64),  # on-policy: trained at once
        })

    def train(self, batch):
        inputs = AdvantageInputs(batch["rewards"], batch["prompt_index"], batch["response_mask"])
        advantages = ADVANTAGE_ESTIMATORS["grpo"](inputs, AlgorithmSection())  # [N, T]
        loss, stats = clipped_policy_loss(
            self.token_logprobs(batch["sequences"]), batch["logprobs"], advantages, batch["response_mask"],
            clip_low=0.2, clip_high=0.28, aggregation="sequence_mean",
            ref_logprobs=batch["ref_logprobs"], kl_coef=0.01)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return stats


class FrozenRef:
    def __init__(self, actor):
        self.actor = actor
        self.table = actor.table.detach().clone()

    def inference(self, batch):
        log_probs = torch.log_softmax(self.table[batch["sequences"][:, 0]], dim=-1)
        picked = log_probs.gather(1, batch["sequences"][:, 1:])
        return {"ref_logprobs": torch.cat([torch.zeros(len(picked), 1), picked], dim=1)}


class CountReward:
    """Reward = how many response tokens equal the prompt's target (an extra per-prompt data field)."""

    def inference(self, batch):
        rewards = [float(c.split().count(t)) for c, t in zip(batch["completions"], batch["target"])]
        return {"rewards": torch.tensor(rewards)}


def test_grpo_graph_shape():
    graph = grpo_graph(extra_reward_inputs=("target",))
    assert [c.name for c in graph.order] == ["actor.generate", "reward.score", "ref.inference", "actor.train"]
    assert graph.data_keys == ("prompts", "target")
    assert "ref_logprobs" in graph.call("actor.train").inputs
    no_ref = grpo_graph(use_reference=False)
    assert [c.name for c in no_ref.order] == ["actor.generate", "reward.score", "actor.train"]
    assert "ref_logprobs" not in no_ref.call("actor.train").inputs
    assert GRAPHS["grpo"] is grpo_graph


def test_grpo_on_a_tabular_policy_raises_the_reward():
    torch.manual_seed(0)
    actor = TabularActor()
    workers = {"actor": actor, "ref": FrozenRef(actor), "reward": CountReward()}
    executor = LocalExecutor(grpo_graph(extra_reward_inputs=("target",)), workers)
    data = Batch({"prompts": ["want 1", "want 3"], "target": ["1", "3"]})
    mean_rewards = []
    for _ in range(30):
        result = executor.run(data)
        mean_rewards.append(result.batch["rewards"].mean().item())
        assert len(result.batch) == 2 * SAMPLES
        assert result.stats["actor.train"]["kl_ref"] >= 0
    # uniform start: expected reward 2 tokens * 1/4 = 0.5; the per-prompt target must reach the samples
    assert sum(mean_rewards[:3]) / 3 < 1.0
    assert sum(mean_rewards[-3:]) / 3 > 1.5
    probs = torch.softmax(actor.table.detach(), dim=-1)
    assert probs[1, 1] > 0.7 and probs[3, 3] > 0.7
    assert set(result.seconds) == {"actor.generate", "reward.score", "ref.inference", "actor.train"}
