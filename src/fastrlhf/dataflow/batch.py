"""`Batch`: the unit of data passed between model calls.

A batch is an ordered set of named *fields* that all have the same number of rows (the leading
dimension). A field is either

* a `torch.Tensor` of shape [rows, ...] (token ids, masks, log-probs, rewards, ...), or
* a Python `list` of length `rows` (per-row values that are not tensors: prompt and completion
  strings, ragged token-id lists, dicts of extra JSONL fields a reward function wants).

Rows move together: `split` (micro-batches, data-parallel shards), `concat` (gather results from
several rollout workers), `select` (any reordering, subset or repetition of rows — e.g. repeating
each prompt's fields onto its n samples with `select(prompt_index)`).

Why our own class and not `tensordict.TensorDict` (DESIGN decision 4):
* RLHF batches carry non-tensor per-row data (strings, ragged lists, reward-function kwargs) in the
  same row order as the tensors; here that is a plain list field that `split`/`select`/`concat`
  handle like a tensor, where TensorDict needs its NonTensorData/NonTensorStack wrappers.
* tensordict ships compiled extensions built against specific torch releases, so it would couple
  our pinned torch (constraints-cpu.txt) to its release cadence; this class needs only torch.
* We use a handful of operations (about 200 lines here); the rest of TensorDict's surface
  (nested keys, memory mapping, lazy stacks, `vmap`) is not needed by the executor.

Deliberately left out: nested keys, in-place mutation (every method returns a new `Batch`; the
tensors themselves are shared, not copied, where slicing allows), automatic padding except the
explicit `pad_values` of `concat`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Union

import torch

Field = Union[torch.Tensor, list]


class BatchError(ValueError):
    """A batch was built or combined with inconsistent fields (row counts, keys, shapes)."""


def _as_field(key: str, value: object) -> Field:
    """Check one field and return it as a tensor or a fresh list."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            raise BatchError(f"field {key!r}: a 0-dim tensor has no rows; use shape [rows, ...]")
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BatchError(
            f"field {key!r}: expected a torch.Tensor or a list with one entry per row, "
            f"got {type(value).__name__}"
        )
    return list(value)


def _row_count(value: Field) -> int:
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value)


def _as_index(indices: Sequence[int] | torch.Tensor, rows: int) -> torch.Tensor:
    """Row indices as a 1-D int64 CPU tensor; a bool mask becomes the indices of its True rows."""
    index = torch.as_tensor(indices).cpu()
    if index.dtype == torch.bool:
        if index.shape != (rows,):
            raise BatchError(f"bool row mask has shape {tuple(index.shape)}, expected ({rows},)")
        return index.nonzero().flatten()
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex:
        raise BatchError(f"row indices must be a 1-D integer sequence, got {index.dtype}{list(index.shape)}")
    index = index.long()
    if index.min() < 0 or index.max() >= rows:
        raise IndexError(f"row index out of range for a batch of {rows} rows: {index.tolist()}")
    return index


class Batch:
    """Named fields (tensors [rows, ...] or lists of length rows) sharing a leading dimension."""

    __slots__ = ("_fields", "_rows")

    def __init__(self, fields: Mapping[str, object] | None = None, *, rows: int | None = None):
        """Build and validate a batch.

        `rows` is only needed for a batch without fields; when given with fields it is checked.
        """
        checked = {key: _as_field(key, value) for key, value in (fields or {}).items()}
        counts = {key: _row_count(value) for key, value in checked.items()}
        if rows is None:
            if not counts:
                raise BatchError("a batch without fields needs rows=N")
            rows = next(iter(counts.values()))
        wrong = {key: n for key, n in counts.items() if n != rows}
        if wrong:
            raise BatchError(f"fields disagree on the number of rows (expected {rows}): {wrong}")
        self._fields: dict[str, Field] = checked
        self._rows: int = rows

    # --- mapping-style access ----------------------------------------------------------------
    def __len__(self) -> int:
        return self._rows

    def __getitem__(self, key: str) -> Field:
        try:
            return self._fields[key]
        except KeyError:
            raise KeyError(f"batch has no field {key!r}; it has {list(self._fields)}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def keys(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def items(self) -> Iterator[tuple[str, Field]]:
        return iter(self._fields.items())

    def get(self, key: str, default: object = None) -> object:
        return self._fields.get(key, default)

    def __repr__(self) -> str:
        def describe(value: Field) -> str:
            if isinstance(value, torch.Tensor):
                return f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
            return "list"

        parts = ", ".join(f"{key}: {describe(value)}" for key, value in self._fields.items())
        return f"Batch(rows={self._rows}, {parts})"

    # --- fields ------------------------------------------------------------------------------
    def select_keys(self, keys: Sequence[str]) -> Batch:
        """A batch with only `keys` (in that order); a missing key is an error naming it."""
        missing = [key for key in keys if key not in self._fields]
        if missing:
            raise KeyError(f"batch has no field(s) {missing}; it has {list(self._fields)}")
        return Batch({key: self._fields[key] for key in keys}, rows=self._rows)

    def update(self, other: Batch | Mapping[str, object]) -> Batch:
        """A batch with the fields of `other` added; `other` wins on a shared key.

        Row counts must match.
        """
        other = other if isinstance(other, Batch) else Batch(other, rows=self._rows)
        if len(other) != self._rows:
            raise BatchError(f"cannot update a batch of {self._rows} rows with one of {len(other)} rows")
        return Batch({**self._fields, **other._fields}, rows=self._rows)

    def to(self, device: torch.device | str) -> Batch:
        """Tensors moved to `device`; list fields are shared unchanged."""
        moved = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in self._fields.items()
        }
        return Batch(moved, rows=self._rows)

    # --- rows --------------------------------------------------------------------------------
    def _slice(self, start: int, stop: int) -> Batch:
        return Batch({key: value[start:stop] for key, value in self._fields.items()}, rows=stop - start)

    def split(self, parts: int | Sequence[int]) -> list[Batch]:
        """Split rows into consecutive pieces.

        `parts` is either the number of pieces (sizes as equal as possible, the first
        `rows % parts` pieces one row larger; every piece non-empty) or the list of piece sizes
        (summing to `len(self)`). Tensor pieces are views of the original tensors.
        """
        if isinstance(parts, int):
            if not 1 <= parts <= self._rows:
                raise BatchError(f"cannot split {self._rows} rows into {parts} non-empty pieces")
            base, extra = divmod(self._rows, parts)
            sizes = [base + 1] * extra + [base] * (parts - extra)
        else:
            sizes = list(parts)
            if sum(sizes) != self._rows or any(size < 0 for size in sizes):
                raise BatchError(f"split sizes {sizes} do not add up to the {self._rows} rows")
        pieces, start = [], 0
        for size in sizes:
            pieces.append(self._slice(start, start + size))
            start += size
        return pieces

    def select(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        """Rows `indices` in that order (repeats allowed); a bool mask of shape [rows] keeps its True rows."""
        index = _as_index(indices, self._rows)
        picked = {}
        for key, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                picked[key] = value.index_select(0, index.to(value.device))
            else:
                picked[key] = [value[i] for i in index.tolist()]
        return Batch(picked, rows=index.numel())

    @staticmethod
    def concat(batches: Sequence[Batch], pad_values: Mapping[str, float] | None = None) -> Batch:
        """Rows of all `batches`, in order. All batches must have the same keys.

        Tensor fields must agree on every dimension after the first, except keys named in
        `pad_values`: those are right-padded along dim 1 with the given value to the longest
        (e.g. `{"sequence_ids": pad_id, "response_mask": 0}` when rollout workers return
        different padded lengths).
        """
        if not batches:
            raise BatchError("concat needs at least one batch")
        keys = batches[0].keys()
        for batch in batches[1:]:
            if set(batch.keys()) != set(keys):
                raise BatchError(f"concat: key sets differ: {sorted(keys)} vs {sorted(batch.keys())}")
        pad_values = pad_values or {}
        joined = {key: _concat_field(key, [b[key] for b in batches], pad_values.get(key)) for key in keys}
        return Batch(joined, rows=sum(len(b) for b in batches))


def _concat_field(key: str, values: list[Field], pad_value: float | None) -> Field:
    """Join one field's pieces: lists are chained, tensors concatenated (optionally right-padded)."""
    if all(isinstance(value, list) for value in values):
        return [item for value in values for item in value]
    if not all(isinstance(value, torch.Tensor) for value in values):
        raise BatchError(f"concat: field {key!r} is a tensor in some batches and a list in others")
    if pad_value is not None:
        values = _right_pad(key, values, pad_value)
    shapes = {tuple(value.shape[1:]) for value in values}
    if len(shapes) > 1:
        raise BatchError(
            f"concat: field {key!r} has different trailing shapes {sorted(shapes)}; "
            f"pass pad_values={{{key!r}: ...}} to right-pad dim 1"
        )
    return torch.cat(values, dim=0)


def _right_pad(key: str, tensors: list[torch.Tensor], pad_value: float) -> list[torch.Tensor]:
    if any(tensor.dim() < 2 for tensor in tensors):
        raise BatchError(f"concat: cannot pad field {key!r} along dim 1: it has fewer than 2 dims")
    width = max(tensor.shape[1] for tensor in tensors)
    padded = []
    for tensor in tensors:
        extra = list(tensor.shape)
        extra[1] = width - tensor.shape[1]
        filler = torch.full(extra, pad_value, dtype=tensor.dtype, device=tensor.device)
        padded.append(torch.cat([tensor, filler], dim=1))
    return padded
