"""Weight sync buckets: round trip, dtype cast, checksums naming the tensor, all-or-nothing swap."""

import pytest
import torch

from fastrlhf.runtime.weights import WeightReceiver, WeightSyncError, bucket_bytes, pack, unpack


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def test_round_trip_is_bitwise_and_buckets_respect_the_size_limit():
    source = _model(0)
    state = source.state_dict()
    buckets = pack(state, version=3, bucket_mb=1)
    assert bucket_bytes(buckets) == sum(t.numel() * t.element_size() for t in state.values())
    target = _model(1)
    WeightReceiver(target, version=2).load(buckets, 3)
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, state[key])


def test_many_buckets_when_tensors_exceed_the_limit():
    state = {f"w{i}": torch.randn(300, 1000) for i in range(3)}  # 1.2 MB each
    buckets = pack(state, version=0, bucket_mb=1)
    assert len(buckets) == 3
    out = unpack(buckets, 0, state)
    assert all(torch.equal(out[k], state[k]) for k in state)


def test_cast_to_the_rollout_dtype():
    state = _model(0).state_dict()
    buckets = pack(state, version=1, dtype=torch.bfloat16)
    assert bucket_bytes(buckets) * 2 == sum(t.numel() * 4 for t in state.values())
    target = _model(1).to(torch.bfloat16)
    receiver = WeightReceiver(target)
    receiver.load(buckets, 1)
    assert receiver.version == 1
    for key, tensor in target.state_dict().items():
        assert torch.equal(tensor, state[key].to(torch.bfloat16))


def test_a_corrupt_byte_names_the_tensor_and_keeps_the_previous_version_whole():
    target = _model(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    receiver = WeightReceiver(target, version=4)
    buckets = pack(_model(0).state_dict(), version=5)
    entry = buckets[0].entries[2]  # the second layer's weight
    data = buckets[0].data.copy()
    data[entry.offset + 5] ^= 0x10
    buckets[0].data = data
    with pytest.raises(WeightSyncError, match=f"checksum mismatch in tensor '{entry.name}'"):
        receiver.load(buckets, 5)
    assert receiver.version == 4
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_wrong_version_missing_and_misshapen_tensors_are_refused():
    state = _model(0).state_dict()
    with pytest.raises(WeightSyncError, match="version 7 arrived for version 8"):
        unpack(pack(state, version=7), 8, state)
    partial = dict(state)
    partial.pop("2.bias")
    with pytest.raises(WeightSyncError, match="lacks tensor"):
        unpack(pack(partial, version=1), 1, state)
    wrong = {**state, "0.weight": torch.zeros(3, 3)}
    with pytest.raises(WeightSyncError, match="'0.weight' has shape"):
        unpack(pack(wrong, version=1), 1, state)
