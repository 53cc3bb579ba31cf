"""Time formulas on the toy accelerator: peak 1e12 x eff 0.5, memory 1e9 x 0.5, NVLink 1e9 B/s,
IB 1e8 B/s, latencies 1 us / 10 us."""

import math

import pytest

from fastrlhf.plan import cost
from fastrlhf.plan.layout import Layout


def test_gemm_rate_and_collectives(toy_acc):
    assert cost.gemm_rate(toy_acc, 64) == pytest.approx(0.5e12 * 0.5)
    assert cost.allreduce_time(1000, 4, 1e9, 1e-6) == pytest.approx(1e-6 + 1.5e-6)
    assert cost.allreduce_time(1000, 1, 1e9, 1e-6) == 0.0
    assert cost.p2p_time(1000, 1e9, 1e-6) == pytest.approx(2e-6)


def test_forward_pass_single_gpu(tiny, toy_acc):
    per_mb = 64 * 2656 / 2.5e11  # tokens x F(ctx=3) / R(64)
    assert cost.stage_time(tiny, toy_acc, Layout(1, 1, 1), 64, 3, False, True) == pytest.approx(per_mb)
    assert cost.pass_time(tiny, toy_acc, Layout(1, 1, 1), 128, 3, 2, False, True) == pytest.approx(2 * per_mb)


def test_tensor_parallel_adds_two_allreduces_per_layer(tiny, toy_acc):
    compute = 64 * 2656 / (2 * 2.5e11)
    one = 1e-6 + 1024 / 1e9  # 64 tokens x h 8 x 2 B over 2 GPUs: alpha + 2*(1/2)*n/B
    got = cost.stage_time(tiny, toy_acc, Layout(1, 2, 1), 64, 3, False, True)
    assert got == pytest.approx(compute + 4 * one)
    got_bwd = cost.stage_time(tiny, toy_acc, Layout(1, 2, 1), 64, 3, True, True)
    assert got_bwd == pytest.approx(3 * compute + 8 * one)


def test_pipeline_bubble_and_inter_node_hops(tiny, toy_acc):
    compute = 64 * 2656 / (2 * 2.5e11)
    hop = 1e-5 + 1024 / 1e8  # inter-node p2p of one micro-batch's activations
    stage = compute + hop
    got = cost.pass_time(tiny, toy_acc, Layout(1, 1, 2), 4 * 64, 3, 4, False, False)
    assert got == pytest.approx((4 + 2 - 1) * stage)


def test_train_time_adds_grad_sync_and_adam(tiny, toy_acc):
    layout = Layout(2, 1, 1)  # batch 4 -> 2 sequences of 5 tokens per rank, ctx (5+1)/2 = 3
    rate = 0.5e12 * 10 / (10 + 64)
    compute = 3 * 10 * 2656 / rate
    sync = 1e-6 + 2 * (1 / 2) * 2704 / 1e9  # bf16 grads 1352 x 2 B over NVLink
    adam = 1352 / 2 * 30 / 0.5e9  # ZeRO-1 shards the update over dp 2
    got = cost.train_time(tiny, toy_acc, layout, 4, 5, 1, True, True, 1)
    assert got == pytest.approx(compute + sync + adam)


def test_decode_step_memory_bound(tiny, toy_acc):
    # weights 2704 B less the untied embedding table (10 x 8 x 2 B, a lookup reads one row)
    # + KV 64 seqs x ctx 3 x 32 B, at 0.5e9 B/s; compute is 25x smaller
    expected = (2544 + 64 * 3 * 32) / 0.5e9
    assert cost.decode_step_time(tiny, toy_acc, Layout(1, 1, 1), 64, 3, True) == pytest.approx(expected)
    # pp 2 re-reads weights per micro-batch but halves the KV read, plus 2 intra-node hops
    got = cost.decode_step_time(tiny, toy_acc, Layout(1, 1, 2), 64, 3, True)
    hop = 1e-6 + 32 * 8 * 2 / 1e9
    assert got == pytest.approx((2544 + 64 * 3 * 32 / 2) / 0.5e9 + 2 * hop)


def test_measured_gemm_curve_and_dispatch_latencies(tiny, toy_acc):
    import dataclasses

    acc = dataclasses.replace(toy_acc, gemm_half_rows=10.0, step_latency=1e-3, layer_latency=1e-4)
    assert cost.gemm_rate(acc, 10) == pytest.approx(0.5e12 * 0.5)
    base = cost.decode_step_time(tiny, toy_acc, Layout(1, 1, 1), 64, 3, True)
    slow = dataclasses.replace(toy_acc, step_latency=1e-3, layer_latency=1e-4)
    # + step latency + 2 layers x layer latency
    assert cost.decode_step_time(tiny, slow, Layout(1, 1, 1), 64, 3, True) == pytest.approx(base + 1.2e-3)
    # a forward+backward stage pays the layer latency twice per layer
    fwd_bwd = cost.stage_time(tiny, toy_acc, Layout(1, 1, 1), 10, 3, True, True)
    assert cost.stage_time(tiny, slow, Layout(1, 1, 1), 10, 3, True, True) == pytest.approx(fwd_bwd + 4e-4)


def test_generate_time_waves(tiny, toy_acc):
    lay = Layout(1, 1, 1)
    prefill = cost.pass_time(tiny, toy_acc, lay, 8 * 4, 2.5, 1, False, True)
    step = cost.decode_step_time(tiny, toy_acc, lay, 8, 4 + 3, True)
    got = cost.generate_time(tiny, toy_acc, lay, 16, 4, 6, 8, True)
    assert got == pytest.approx(2 * (prefill + 6 * step))
    # 16 sequences in waves of 12: one full wave and a last wave of the 4 left, not two of 12
    four = cost.pass_time(tiny, toy_acc, lay, 4 * 4, 2.5, 1, False, True) + 6 * cost.decode_step_time(
        tiny, toy_acc, lay, 4, 7, True)
    twelve = cost.wave_time(tiny, toy_acc, lay, 12, 4, 6, True)
    assert cost.generate_time(tiny, toy_acc, lay, 16, 4, 6, 12, True) == pytest.approx(twelve + four)


def test_realloc_reload_transfer(tiny, toy_acc):
    assert cost.realloc_time(tiny, toy_acc, Layout(1, 1, 1), True) == pytest.approx(1e-6 + 2704 / 1e9)
    assert cost.realloc_time(tiny, toy_acc, Layout(1, 2, 2), False) == pytest.approx(1e-5 + 680 / 1e8)
    assert cost.reload_time(tiny, toy_acc, Layout(1, 1, 1)) == pytest.approx(2704 / 1e8)
    from fastrlhf.plan.layout import Mesh
    assert cost.transfer_time(4000, Mesh(0, 2), Mesh(0, 2), toy_acc, True) == 0.0
    assert cost.transfer_time(4000, Mesh(0, 2), Mesh(2, 1), toy_acc, True) == pytest.approx(1e-6 + 4e-6)


def test_half_rows_by_weight_bytes_and_sampler_terms(tiny, toy_acc):
    import dataclasses

    table = ((1e3, 10.0), (1e5, 30.0))  # t_half 10 at <= 1 kB of weights, 30 at >= 100 kB
    acc = dataclasses.replace(toy_acc, half_rows_by_bytes=table)
    assert cost.half_rows(acc, 10.0) == 10.0 and cost.half_rows(acc, 1e7) == 30.0
    assert cost.half_rows(acc, 1e4) == pytest.approx(20.0)  # log-linear: 1e4 is half way
    assert cost.half_rows(toy_acc, 1e4) == 64.0  # no table: gemm_half_rows everywhere
    # tiny streams 2544 B (2704 less the untied 160 B embedding): t_half 10 + 20 log(2.544)/log(100)
    t_half = 10.0 + 20.0 * math.log(2.544) / math.log(100.0)
    assert cost.streamed_bytes(tiny, Layout(1, 1, 1)) == 2544
    # hand count: F(3) = 2 * (2 layers * 576 + head 80) + 4 * 2 * 8 * 3 = 2656
    assert cost.matmul_time(tiny, acc, 10, 10, 3, 2544) == pytest.approx(
        10 * 2656 / (0.5e12 * 10 / (10 + t_half)))
    # the sampler touches batch x vocab logits per decode step
    base = cost.decode_step_time(tiny, toy_acc, Layout(1, 1, 1), 64, 3, True)
    sampled = dataclasses.replace(toy_acc, logit_time=1e-9)
    assert cost.decode_step_time(tiny, sampled, Layout(1, 1, 1), 64, 3, True) == pytest.approx(base + 64 * 10 * 1e-9)


def test_training_pays_the_loss_over_the_vocabulary(tiny, toy_acc):
    import dataclasses

    lossy = dataclasses.replace(toy_acc, loss_time=1e-9)
    base = cost.train_time(tiny, toy_acc, Layout(2, 1, 1), 4, 5, 1, True, True, 1)
    # 2 sequences x 5 tokens per rank x vocab 10 logits
    assert cost.train_time(tiny, lossy, Layout(2, 1, 1), 4, 5, 1, True, True, 1) == pytest.approx(base + 100e-9)
    # tp 2 splits the vocabulary; a value head has one output per token
    assert cost.loss_time(tiny, lossy, Layout(1, 2, 1), 10) == pytest.approx(50e-9)
    assert cost.loss_time(tiny.as_critic(), lossy, Layout(1, 1, 1), 10) == pytest.approx(10e-9)
