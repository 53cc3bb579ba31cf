import pytest

from fastrlhf.plan.layout import Layout
from fastrlhf.plan.memory import (forward_act_bytes, kv_bytes_per_seq, prefill_act_bytes,
                                  stage_params, train_act_bytes, train_state_bytes, weight_bytes)
from fastrlhf.plan.model_spec import PRESETS


def test_stage_params(tiny):
    assert stage_params(tiny, 1) == 1352
    assert stage_params(tiny, 2) == 592 + 88  # one layer + head (88) > embedding (80)
    assert weight_bytes(tiny, Layout(1, 2, 2)) == 680 * 2 / 2


@pytest.mark.parametrize("zero,per_param", [(0, 18), (1, 2 + 4 + 12 / 2), (2, 2 + 2 + 6),
                                            (3, 1 + 2 + 6)])
def test_train_states_with_zero(tiny, zero, per_param):
    assert train_state_bytes(tiny, Layout(2, 1, 1), zero) == pytest.approx(1352 * per_param)


def test_llama2_7b_training_states_exact():
    m = PRESETS["llama2-7b"]
    # 18 bytes per parameter split over tp 8: 6_738_415_616 * 18 / 8
    assert train_state_bytes(m, Layout(1, 8, 1), 0) == 15_161_435_136
    assert weight_bytes(m, Layout(1, 1, 1)) == 13_476_831_232


def test_activation_and_kv_bytes(tiny):
    # 1F1B, pp 2, 4 micro-batches: 2 in flight x 10 tokens x 240 B x 1 layer + logits 10 x 40 B
    assert train_act_bytes(tiny, Layout(1, 1, 2), 10, 4) == 4800 + 400
    assert train_act_bytes(tiny, Layout(1, 2, 2), 10, 1) == (2400 + 400) / 2
    assert forward_act_bytes(tiny, Layout(1, 1, 1), 10) == 10 * (240 + 40)
    # 10 tokens x (K,V) x 2 layers x kv_dim 4 x 2 B; one kv head cannot be split by tp 2
    assert kv_bytes_per_seq(tiny, Layout(1, 2, 1), 10) == 320
    assert kv_bytes_per_seq(tiny, Layout(1, 1, 2), 10) == 160
    assert prefill_act_bytes(tiny, Layout(1, 1, 1), 10**6) == 4096 * 280


def test_fp32_training_and_unfused_loss(tiny):
    import dataclasses

    fp32 = dataclasses.replace(tiny, dtype_bytes=4)
    # fp32 weights are the master copy: 4 weights + 4 grads + 8 Adam m, v
    assert train_state_bytes(fp32, Layout(1, 1, 1), 0) == 1352 * 16
    # plain F.cross_entropy: logits, saved log-probs' gradient and logits' gradient = 3 x 40 B/token
    assert train_act_bytes(fp32, Layout(1, 1, 1), 10, 1, logit_copies=3) == 10 * 480 * 2 + 3 * 400
