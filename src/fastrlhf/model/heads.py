"""Scalar heads for value and reward models.

A reward / value model is our decoder with `score`: Linear(d → 1, no bias) on the final hidden state,
saved as HF `*ForSequenceClassification` with num_labels = 1 (transformers reads the score of the
last non-pad token; a critic reads every position). The LM head is kept so a policy checkpoint can
seed a critic without surgery.
"""

from __future__ import annotations

import copy

import torch

from fastrlhf.model.decoder import CausalLM


def with_score_head(model: CausalLM, seed: int = 0, std: float | None = None) -> CausalLM:
    """A copy of `model` with a freshly initialised scalar head (N(0, std²), std = 1/sqrt(d) by default)."""
    cfg = model.config.replace(score_head=True)
    out = CausalLM(cfg).to(next(model.parameters()).device)
    out.load_state_dict(copy.deepcopy(model.state_dict()), strict=False)
    g = torch.Generator().manual_seed(seed)
    std = std if std is not None else cfg.hidden_size ** -0.5
    with torch.no_grad():
        out.score.weight.copy_(torch.randn(out.score.weight.shape, generator=g) * std)
    return out.eval()
