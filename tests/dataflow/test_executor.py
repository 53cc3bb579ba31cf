import itertools

import pytest
import torch

from fastrlhf.dataflow import Batch, ExecutorError, Graph, LocalExecutor, ModelCall

SAMPLES_PER_PROMPT = 3


class FakeActor:
    def __init__(self, log):
        self.log = log

    def generate(self, batch):
        self.log.append(("actor.generate", batch.keys()))
        prompts = batch["prompt"]
        prompt_index = torch.arange(len(prompts)).repeat_interleave(SAMPLES_PER_PROMPT)
        completions = [f"{prompts[i]}-{k}" for i in range(len(prompts)) for k in range(SAMPLES_PER_PROMPT)]
        seq = torch.arange(len(completions) * 2).reshape(-1, 2)
        out = Batch({"prompt_index": prompt_index, "seq": seq, "completion": completions,
                     "undeclared": torch.zeros(len(completions))})
        return out, {"tokens": float(seq.numel())}

    def train(self, batch):
        self.log.append(("actor.train", batch.keys()))
        self.train_batch = batch
        return {"loss": 0.5}


class FakeReward:
    def __init__(self, log):
        self.log = log

    def inference(self, batch):
        self.log.append(("reward.score", batch.keys()))
        self.answers_seen = list(batch["answer"])
        return {"reward": torch.tensor([float(a) for a in batch["answer"]])}


class FakeRef:
    def __init__(self, log):
        self.log = log

    def inference(self, batch):
        self.log.append(("ref.inference", batch.keys()))
        return Batch({"ref_lp": batch["seq"].float() * 0.5})


def make_graph() -> Graph:
    return Graph([
        ModelCall("actor", "train", ("seq", "ref_lp", "reward", "prompt_index", "prompt")),
        ModelCall("reward", "inference", ("completion", "answer"), ("reward",), name="reward.score"),
        ModelCall("actor", "generate", ("prompt",), ("prompt_index", "seq", "completion")),
        ModelCall("ref", "inference", ("seq",), ("ref_lp",)),
    ], data_keys=["prompt", "answer"])


def make_workers(log):
    return {"actor": FakeActor(log), "reward": FakeReward(log), "ref": FakeRef(log)}


def test_runs_calls_in_order_with_declared_inputs_and_merges_outputs():
    log = []
    workers = make_workers(log)
    ticks = itertools.count()
    executor = LocalExecutor(make_graph(), workers, clock=lambda: float(next(ticks)))
    data = Batch({"prompt": ["p0", "p1"], "answer": ["7", "9"], "unused": torch.zeros(2)})
    result = executor.run(data)

    assert log == [
        ("actor.generate", ("prompt",)),
        ("reward.score", ("completion", "answer")),
        ("ref.inference", ("seq",)),
        ("actor.train", ("seq", "ref_lp", "reward", "prompt_index", "prompt")),
    ]
    # per-prompt data fields were repeated onto each prompt's 3 samples
    assert workers["reward"].answers_seen == ["7", "7", "7", "9", "9", "9"]
    assert workers["actor"].train_batch["prompt"] == ["p0"] * 3 + ["p1"] * 3
    assert result.batch["reward"].tolist() == [7.0] * 3 + [9.0] * 3
    assert torch.equal(result.batch["ref_lp"], torch.arange(12).reshape(6, 2) * 0.5)
    assert result.batch["prompt_index"].tolist() == [0, 0, 0, 1, 1, 1]
    assert "undeclared" not in result.batch and len(result.batch) == 6
    assert result.batch["unused"].shape == (6,)  # extra data fields ride along, repeated
    # every call took exactly one tick of the fake clock
    assert result.seconds == {"actor.generate": 1.0, "reward.score": 1.0, "ref.inference": 1.0, "actor.train": 1.0}
    assert result.stats == {"actor.generate": {"tokens": 12.0}, "actor.train": {"loss": 0.5}}


def test_missing_workers_and_methods_are_reported_before_running():
    log = []
    workers = make_workers(log)
    del workers["ref"]
    workers["reward"] = object()
    with pytest.raises(ExecutorError, match=r"'reward' has no method inference\(\).*no worker for role 'ref'"):
        LocalExecutor(make_graph(), workers)
    assert log == []


def test_contract_violations_are_clear_errors():
    log = []
    executor = LocalExecutor(make_graph(), make_workers(log))
    with pytest.raises(ExecutorError, match=r"lacks the graph's data key\(s\) \['answer'\]"):
        executor.run(Batch({"prompt": ["p"]}))

    class NoIndexActor(FakeActor):
        def generate(self, batch):
            out, _ = super().generate(batch)
            return out.select_keys(["seq", "completion"])

    graph = Graph([ModelCall("actor", "generate", ("prompt",), ("seq", "completion"))], ["prompt"])
    with pytest.raises(ExecutorError, match="turned 2 rows into 6 without returning 'prompt_index'"):
        LocalExecutor(graph, {"actor": NoIndexActor(log)}).run(Batch({"prompt": ["a", "b"]}))

    graph = Graph([ModelCall("actor", "generate", ("prompt",), ("seq", "logprobs"))], ["prompt"])
    with pytest.raises(ExecutorError, match=r"did not return its declared output\(s\) \['logprobs'\]"):
        LocalExecutor(graph, {"actor": FakeActor(log)}).run(Batch({"prompt": ["a", "b"]}))
