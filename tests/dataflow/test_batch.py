import pytest
import torch

from fastrlhf.dataflow.batch import Batch, BatchError


def make_batch(rows: int = 5) -> Batch:
    return Batch({
        "ids": torch.arange(rows * 2).reshape(rows, 2),   # [rows, 2]
        "reward": torch.arange(rows, dtype=torch.float32),  # [rows]
        "text": [f"row{i}" for i in range(rows)],          # list field
    })


def assert_same(a: Batch, b: Batch) -> None:
    assert a.keys() == b.keys() and len(a) == len(b)
    for key in a.keys():
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_construction_validates_rows_and_types():
    batch = make_batch()
    assert len(batch) == 5 and batch.keys() == ("ids", "reward", "text") and "text" in batch
    with pytest.raises(BatchError, match="'text': 3"):
        Batch({"ids": torch.zeros(5, 2), "text": ["a", "b", "c"]})
    with pytest.raises(BatchError, match="0-dim"):
        Batch({"x": torch.tensor(1.0)})
    with pytest.raises(BatchError, match="got str"):
        Batch({"x": "abc"})  # a string is not a list of rows
    with pytest.raises(BatchError, match="rows=N"):
        Batch({})
    assert len(Batch({}, rows=3)) == 3
    with pytest.raises(KeyError, match="no field 'nope'"):
        batch["nope"]


def test_split_by_count_and_sizes_then_concat_round_trips():
    batch = make_batch(5)
    pieces = batch.split(2)
    assert [len(p) for p in pieces] == [3, 2]
    assert pieces[1]["text"] == ["row3", "row4"]
    assert torch.equal(pieces[1]["ids"], torch.tensor([[6, 7], [8, 9]]))
    assert_same(Batch.concat(pieces), batch)
    pieces = batch.split([1, 0, 4])
    assert [len(p) for p in pieces] == [1, 0, 4]
    assert_same(Batch.concat(pieces), batch)
    with pytest.raises(BatchError, match="do not add up"):
        batch.split([2, 2])
    with pytest.raises(BatchError, match="non-empty"):
        batch.split(6)


def test_select_reorders_repeats_and_masks_rows():
    batch = make_batch(4)
    picked = batch.select(torch.tensor([3, 0, 0]))
    assert picked["text"] == ["row3", "row0", "row0"]
    assert picked["reward"].tolist() == [3.0, 0.0, 0.0]
    assert torch.equal(picked["ids"], torch.tensor([[6, 7], [0, 1], [0, 1]]))
    masked = batch.select(torch.tensor([True, False, True, False]))
    assert masked["text"] == ["row0", "row2"] and masked["reward"].tolist() == [0.0, 2.0]
    assert len(batch.select([])) == 0
    # a permutation and its inverse give the original back
    perm = torch.tensor([2, 0, 3, 1])
    assert_same(batch.select(perm).select(torch.argsort(perm)), batch)
    with pytest.raises(IndexError):
        batch.select([4])


def test_concat_checks_keys_and_shapes_and_pads_on_request():
    a = Batch({"seq": torch.ones(2, 3, dtype=torch.long), "mask": torch.ones(2, 3), "s": ["a", "b"]})
    b = Batch({"seq": torch.full((1, 5), 2), "mask": torch.ones(1, 5), "s": ["c"]})
    with pytest.raises(BatchError, match="pad_values"):
        Batch.concat([a, b])
    joined = Batch.concat([a, b], pad_values={"seq": 0, "mask": 0})
    assert joined["seq"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert joined["mask"].sum().item() == 11 and joined["seq"].dtype == torch.long
    assert joined["s"] == ["a", "b", "c"]
    with pytest.raises(BatchError, match="key sets differ"):
        Batch.concat([a, b.select_keys(["seq", "mask"])], pad_values={"seq": 0, "mask": 0})


def test_update_select_keys_and_to():
    batch = make_batch(3)
    updated = batch.update({"reward": torch.ones(3), "extra": [{"a": 1}] * 3})
    assert updated["reward"].tolist() == [1.0, 1.0, 1.0] and updated["extra"][2] == {"a": 1}
    assert batch["reward"].tolist() == [0.0, 1.0, 2.0]  # the original is unchanged
    with pytest.raises(BatchError, match="3 rows with one of 2"):
        batch.update(Batch({"x": torch.zeros(2)}))
    assert batch.select_keys(["text", "ids"]).keys() == ("text", "ids")
    with pytest.raises(KeyError, match="nope"):
        batch.select_keys(["nope"])
    moved = batch.to("meta")
    assert moved["ids"].device.type == "meta" and moved["text"] == batch["text"]
