"""Reward workers: the `reward` role of a graph, from any of the three reward sources.

- `RewardWorker`: a Python callable `f(completions, **fields) -> list[float]` (TRL's convention);
  an HTTP reward server is such a callable (`tasks.http_reward.HTTPReward`).
- `RewardModelWorker`: a learned reward model (our decoder + scalar head, an HF
  `*ForSequenceClassification` directory) scoring prompt + completion text with its own tokenizer.

`reward_worker(spec, field_names, ...)` picks one from a user's `task.reward` string:
`http(s)://...` → HTTP server, an existing directory → reward model, otherwise `module:function`
or `file.py:function`. Every failure is a one-line `UserError`, never a silent zero reward.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastrlhf.dataflow.batch import Batch
from fastrlhf.errors import UserError
from fastrlhf.tasks.rewards import load_reward, score


class RewardWorker:
    def __init__(self, fn, field_names: tuple[str, ...] = ()):
        self.fn, self.field_names = fn, field_names

    def inference(self, batch: Batch) -> Batch:
        fields = {name: list(batch[name]) if not torch.is_tensor(batch[name]) else batch[name].tolist()
                  for name in self.field_names}
        rewards = score(self.fn, list(batch["completions"]), fields)
        return Batch({"rewards": torch.tensor(rewards, dtype=torch.float32)})


class RewardModelWorker:
    """Scores `prompts` + `completions` with a learned reward model (the value at the last token)."""

    def __init__(self, model, tokenizer, micro_batch_size: int = 64, precision=None):
        """`precision` (model/precision.py): the model is stored in its compute dtype and scores under autocast."""
        self.precision = precision
        if precision is not None:
            model = precision.frozen(model)
        self.model, self.tokenizer, self.micro_batch_size = model.eval(), tokenizer, micro_batch_size

    def inference(self, batch: Batch) -> Batch:
        import contextlib

        from fastrlhf.train.reward_model import reward_model_scores

        with self.precision.autocast() if self.precision is not None else contextlib.nullcontext():
            scores = reward_model_scores(self.model, self.tokenizer, list(batch["prompts"]), list(batch["completions"]),
                                         micro_batch_size=self.micro_batch_size)
        return Batch({"rewards": scores.float().cpu()})


def is_reward_model_dir(spec: str) -> bool:
    return Path(spec).is_dir()


def load_reward_model(path: str | Path, device="cpu"):
    """(model, tokenizer) of a reward-model directory; a one-line error if it has no scalar head."""
    from fastrlhf.model.hf_io import load_model
    from fastrlhf.model.tokenizer import load_tokenizer

    model = load_model(path, device=device)
    if not model.config.score_head:
        raise UserError(f"{path}: not a reward model (config.json architectures must end in "
                        "'ForSequenceClassification'; train one with `fastrlhf train-rm`)")
    return model, load_tokenizer(path)


def reward_worker(spec, field_names: tuple[str, ...], task, device="cpu", micro_batch_size: int = 64, precision=None):
    """The worker for a reward `spec`: a callable, an http(s) URL, a reward-model directory or 'module:fn'."""
    if callable(spec):
        return RewardWorker(spec, field_names)
    from fastrlhf.tasks.http_reward import HTTPReward, is_http_reward

    if is_http_reward(spec):
        return RewardWorker(HTTPReward(spec, batch_size=task.reward_batch_size, timeout=task.reward_timeout,
                                       retries=task.reward_retries), field_names)
    if is_reward_model_dir(spec):
        model, tokenizer = load_reward_model(spec, device)
        return RewardModelWorker(model, tokenizer, micro_batch_size, precision)
    return RewardWorker(load_reward(spec), field_names)
