"""`LocalExecutor`: run one iteration of a `Graph` in this process.

For each call in `graph.order` the executor hands the role's worker a batch holding exactly the
call's declared inputs and invokes the method named by the call kind:

    worker.generate(batch)  -> Batch                     (or (Batch, stats))
    worker.inference(batch) -> Batch                     (or (Batch, stats))
    worker.train(batch)     -> Mapping[str, float]       (statistics)

The declared outputs of the returned batch are merged into the iteration's batch (undeclared
fields are dropped: the graph is the contract), and the call's wall time is recorded under its
name. There are no algorithm-specific branches: the graph says everything.

Rows that change number (prompts -> samples). A call may return a different number of rows than
it was given — `generate` returns n samples per prompt. Such a call must return the field
`prompt_index` (int64 [samples]: for each output row, the input row it came from). The executor
then re-gathers every field of the iteration batch with `select(prompt_index)`, so per-prompt
fields (the prompt text, a reference answer, extra JSONL fields for the reward function) appear on
each of their samples, and merges the call's outputs on top. A call that declares `prompt_index`
as an output is re-gathered the same way even when the row count happens not to change (n = 1).
Downstream calls can read `prompt_index` as the sample's group id (GRPO, RLOO).

Left out here: concurrency (calls on disjoint devices running at once), streaming samples between
calls before the whole batch is done (RLHFuse-style fusion), and device synchronisation before
timing (a GPU worker should synchronise before returning for the timing to be meaningful).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from fastrlhf.dataflow.batch import Batch
from fastrlhf.dataflow.graph import ROW_SOURCE_KEY, Graph, ModelCall


# a call that ran before the iteration: (what its worker returned, its seconds)
Done = tuple[object, float]


class ExecutorError(RuntimeError):
    """A worker broke the graph's contract (missing method, missing output, bad row count)."""


@dataclass
class IterationResult:
    """What one iteration produced.

    batch:   every field of the iteration, one row per sample (after the last row-changing call).
    stats:   per call name, the statistics its worker returned (train calls; optional for others).
    seconds: per call name, wall-clock seconds spent in the worker method.
    """

    batch: Batch
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class LocalExecutor:
    """Runs a graph's calls in order on in-process workers (role -> worker object)."""

    def __init__(self, graph: Graph, workers: Mapping[str, object], clock: Callable[[], float] = time.perf_counter,
                 on_call: Callable[[str], None] | None = None):
        """`on_call(name)` is told before each call starts (the run's hang watchdog listens)."""
        self.graph = graph
        self.workers = dict(workers)
        self.clock = clock
        self.on_call = on_call
        _check_workers(graph, self.workers)

    def run(self, data: Batch, done: Mapping[str, Done] | None = None,
            only: Sequence[str] | None = None) -> IterationResult:
        """One iteration: `data` holds the graph's data keys (one row per prompt).

        `done`: calls that already ran (rollouts made ahead, train/rollout_queue.py) — their results
        are merged as if they had run here. `only`: run just these calls (and merge their outputs)."""
        result = self._start(data)
        for call in self.graph.order:
            if only is None or call.name in only:
                self._run_call(call, result, (done or {}).get(call.name))
        return result

    def _start(self, data: Batch) -> IterationResult:
        missing = [key for key in self.graph.data_keys if key not in data]
        if missing:
            raise ExecutorError(f"data batch lacks the graph's data key(s) {missing}; it has {list(data.keys())}")
        return IterationResult(batch=data)

    def _run_call(self, call: ModelCall, result: IterationResult, done: Done | None = None) -> None:
        inputs = result.batch.select_keys(call.inputs)
        if done is not None:
            returned, result.seconds[call.name] = done
        else:
            method = getattr(self.workers[call.role], call.kind)
            if self.on_call is not None:
                self.on_call(call.name)
            started = self.clock()
            returned = method(inputs)
            result.seconds[call.name] = self.clock() - started
        if call.kind == "train":
            result.stats[call.name] = dict(returned or {})
            return
        outputs, stats = _unpack(call, returned)
        if stats:
            result.stats[call.name] = dict(stats)
        result.batch = _merge(call, result.batch, outputs)


def _check_workers(graph: Graph, workers: Mapping[str, object]) -> None:
    """Every call's role has a worker with a callable method named after the call kind."""
    problems = []
    for call in graph.calls:
        worker = workers.get(call.role)
        if worker is None:
            problems.append(f"no worker for role {call.role!r} (call {call.name})")
        elif not callable(getattr(worker, call.kind, None)):
            problems.append(f"worker for role {call.role!r} has no method {call.kind}() (call {call.name})")
    if problems:
        raise ExecutorError("; ".join(problems))


def _unpack(call: ModelCall, returned: object) -> tuple[Batch, Mapping[str, float] | None]:
    """A generate/inference result is a Batch (or a mapping of fields), optionally with stats."""
    stats = None
    if isinstance(returned, tuple) and len(returned) == 2:
        returned, stats = returned
    if isinstance(returned, Mapping):
        returned = Batch(returned)
    if not isinstance(returned, Batch):
        raise ExecutorError(f"call {call.name} returned {type(returned).__name__}, expected a Batch")
    missing = [key for key in call.outputs if key not in returned]
    if missing:
        raise ExecutorError(f"call {call.name} did not return its declared output(s) {missing}")
    return returned, stats


def _merge(call: ModelCall, batch: Batch, outputs: Batch) -> Batch:
    """Merge a call's declared outputs into the iteration batch, re-gathering rows if they changed."""
    rows_changed = len(outputs) != len(batch)
    if rows_changed and ROW_SOURCE_KEY not in outputs:
        raise ExecutorError(
            f"call {call.name} turned {len(batch)} rows into {len(outputs)} without returning "
            f"{ROW_SOURCE_KEY!r} (the input row of each output row)"
        )
    if rows_changed or ROW_SOURCE_KEY in call.outputs:
        batch = batch.select(outputs[ROW_SOURCE_KEY])
    return batch.update(outputs.select_keys(call.outputs))
