"""Shared tiny specs whose numbers are easy to work out by hand."""

import pytest

from fastrlhf.plan.hardware import Accelerator
from fastrlhf.plan.model_spec import ModelSpec


@pytest.fixture
def tiny() -> ModelSpec:
    # head_dim 4, q_dim 8, kv_dim 4; see test_model_spec for the hand counts
    return ModelSpec("tiny", n_layers=2, hidden=8, intermediate=16, n_heads=2, n_kv_heads=1,
                     vocab=10)


@pytest.fixture
def toy_acc() -> Accelerator:
    return Accelerator("toy", peak_flops=1e12, hbm_bytes=1e9, hbm_bw=1e9, intra_bw=1e9,
                       inter_bw=1e8, host_bw=1e8, intra_latency=1e-6, inter_latency=1e-5,
                       flops_eff=0.5, bw_eff=0.5, link_eff=1.0, memory_eff=1.0)
