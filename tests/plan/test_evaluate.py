import dataclasses
import math

import pytest

from fastrlhf.plan import memory
from fastrlhf.plan.evaluate import Evaluator
from fastrlhf.plan.graphs import get_graph
from fastrlhf.plan.hardware import ACCELERATORS, make_cluster
from fastrlhf.plan.layout import Layout, Mesh
from fastrlhf.plan.model_spec import PRESETS
from fastrlhf.plan.plan import Workload


def _evaluator(hbm, batch=64, gpus=2):
    acc = dataclasses.replace(ACCELERATORS["A100-80G"], hbm_bytes=hbm, memory_eff=1.0)
    a = PRESETS["qwen2.5-1.5b"]
    models = {"actor": a, "ref": a, "reward": a.as_critic()}
    return Evaluator(get_graph("grpo"), models, make_cluster(acc, 1, gpus), Workload(batch, 128, 128))


def test_peak_memory_is_homes_plus_largest_transient():
    ev = _evaluator(80e9)
    p = (Mesh(0, 2), Layout(2, 1, 1))
    res = ev.evaluate((p,) * 4)
    a = ev.models["actor"]
    homes = (memory.train_state_bytes(a, p[1], 1) + memory.weight_bytes(a, p[1])
             + memory.weight_bytes(ev.models["reward"], p[1]))
    assert res.offloaded == ()
    assert all(e.memory >= homes for e in res.calls)
    assert res.gpu_peak[0] == pytest.approx(max(e.memory for e in res.calls))
    assert res.gpu_peak[0] <= ev.acc.memory_budget


def test_micro_batches_are_the_fastest_that_fit():
    ev = _evaluator(80e9)
    p = (Mesh(0, 2), Layout(1, 1, 2))
    res = ev.evaluate((p,) * 4)
    train = res.calls[3]
    options = {m: ev._call_cost(3, p[0], p[1], m) for m in ev._micro_options(p[1])}
    free = ev.acc.memory_budget - (train.memory - options[train.n_micro][1])
    fitting = [m for m, (t, need) in options.items() if need <= free]
    assert train.n_micro == min(fitting, key=lambda m: options[m][0])
    assert train.n_micro > 1  # pp 2 needs micro-batches to fill the pipeline


def test_frozen_model_offloaded_when_memory_is_short():
    roomy = _evaluator(80e9, gpus=1).evaluate(((Mesh(0, 1), Layout(1, 1, 1)),) * 4)
    assert roomy.feasible and roomy.offloaded == ()
    # 1.5B actor: 27.8 GB of training state; ref 3.1 GB and reward 3.1 GB no longer all fit
    tight = _evaluator(34e9, gpus=1, batch=8).evaluate(((Mesh(0, 1), Layout(1, 1, 1)),) * 4)
    assert tight.feasible and tight.offloaded
    assert {s.kind for s in tight.steps} == {"reload"}
    assert max(tight.gpu_peak) <= 34e9


def test_decode_batch_limited_by_kv_cache():
    ev = _evaluator(60e9, batch=4096, gpus=1)
    res = ev.evaluate(((Mesh(0, 1), Layout(1, 1, 1)),) * 4)
    gen = res.calls[0]
    db = gen.decode_batch
    assert 0 < db < 4096
    per_seq = memory.kv_bytes_per_seq(ev.models["actor"], Layout(1, 1, 1), 256)
    waves = math.ceil(4096 / db)
    assert db == math.ceil(4096 / waves)  # equal waves
    assert gen.memory <= ev.acc.memory_budget  # that fit
    one_wave_fewer = math.ceil(4096 / (waves - 1))  # and one wave fewer would not fit
    assert gen.memory + (one_wave_fewer - db) * per_seq > ev.acc.memory_budget


def test_fixed_micro_batches_are_honoured():
    ev = _evaluator(80e9)
    p = (Mesh(0, 2), Layout(2, 1, 1))
    res = ev.evaluate((p,) * 4, fixed=(3, 2, 2, 4))
    assert [res.calls[0].decode_batch] + [e.n_micro for e in res.calls[1:]] == [3, 2, 2, 4]
