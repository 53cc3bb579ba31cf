"""`RayExecutor`: the `LocalExecutor`'s iteration with the calls running on Ray worker groups.

The executor is the same graph walk (dataflow/executor.py: declared inputs in, declared outputs
merged, rows re-gathered by `prompt_index`); the role workers it calls are proxies
(runtime/session.py) for the rollout pool and the trainer group. Two things are added:

- **The weight-sync edge** (`Graph.weight_syncs`): before a generate call of a role that also
  trains, the role's `sync_weights()` brings every rollout worker to the trainer's committed policy
  version (timed as `<role>.sync`). It runs *before* generating, not after training, because a
  step's last update is applied at commit (updates.DeferredUpdates), after the graph has run.
- **Streaming scoring** (RLHFuse inter-stage fusion; `runtime.stream_scoring`): the calls that read
  only the data and the generate call's outputs (`Graph.streamable`: reward.score, ref.inference,
  critic.inference) are started on each batch of finished prompt groups while the long tail still
  generates; after generation the executor waits for them, puts their rows back in sample order and
  merges them as if they had run after a barrier. Each sample's reward and log-probs depend only on
  its own row, so the step's result is the barrier result (tests/runtime/test_ray_runtime.py).

Left out: running independent non-streamed calls concurrently (e.g. PPO's two train calls).
"""

from __future__ import annotations

import torch

from fastrlhf.dataflow.batch import Batch
from fastrlhf.dataflow.executor import ExecutorError, IterationResult, LocalExecutor, _merge, _unpack
from fastrlhf.dataflow.graph import ModelCall


class RayExecutor(LocalExecutor):
    def __init__(self, graph, workers, stream: bool = True, clock=None, on_call=None):
        kwargs = {"on_call": on_call} if clock is None else {"clock": clock, "on_call": on_call}
        super().__init__(graph, workers, **kwargs)
        self.stream = stream
        self.sync_targets = {edge.target for edge in graph.weight_syncs}

    def run(self, data: Batch, done=None, only=None) -> IterationResult:
        """LocalExecutor.run's contract; a call in `done` (made ahead) is merged without a weight sync
        or streaming (its samples are finished; their scoring runs here)."""
        result = self._start(data)
        done = done or {}
        pending: dict[str, list] = {}
        for call in self.graph.order:
            if only is not None and call.name not in only:
                continue
            if call.name in pending:
                self._collect(call, pending.pop(call.name), result)
                continue
            if call.name in done:
                self._run_call(call, result, done[call.name])
                continue
            if call.name in self.sync_targets:
                self._sync(call, result)
            streamable = self.graph.streamable(call) if call.kind == "generate" and self.stream and only is None else ()
            if streamable:
                self._generate_streaming(call, streamable, result, pending)
            else:
                self._run_call(call, result)
        return result

    def _sync(self, call: ModelCall, result: IterationResult) -> None:
        name = f"{call.role}.sync"
        if self.on_call is not None:
            self.on_call(name)
        started = self.clock()
        stats = self.workers[call.role].sync_weights()
        result.seconds[name] = self.clock() - started
        if stats:
            result.stats[name] = dict(stats)

    def _generate_streaming(self, call: ModelCall, streamable, result: IterationResult, pending: dict) -> None:
        data = result.batch
        worker = self.workers[call.role]

        def on_groups(sequences) -> None:
            rows = worker.group_batch(sequences)  # the generate outputs of these samples
            joined = data.select(rows["prompt_index"]).update(rows)
            ids = torch.tensor([s.seq_id for s in sequences])
            for target in streamable:
                submitted = self.workers[target.role].submit(target.kind, joined.select_keys(target.inputs))
                pending.setdefault(target.name, []).append((ids, submitted))

        if self.on_call is not None:
            self.on_call(call.name)
        started = self.clock()
        returned = worker.generate(data.select_keys(call.inputs), on_groups=on_groups)
        result.seconds[call.name] = self.clock() - started
        outputs, stats = _unpack(call, returned)
        if stats:
            result.stats[call.name] = dict(stats)
        result.batch = _merge(call, result.batch, outputs)
        if len(result.batch) and not all(name in pending for name in (c.name for c in streamable)):
            raise ExecutorError(f"call {call.name} finished without handing every sample group to scoring")

    def _collect(self, call: ModelCall, parts: list, result: IterationResult) -> None:
        """Wait for a streamed call's parts; merge them in sample order (seq_id = row of the batch)."""
        if self.on_call is not None:
            self.on_call(call.name)
        started = self.clock()
        returned = self.workers[call.role].collect([ref for _, ref in parts])
        result.seconds[call.name] = self.clock() - started  # only the wait the stream did not hide
        outputs, merged_stats = [], {}
        for item in returned:
            batch, stats = _unpack(call, item)
            outputs.append(batch.select_keys(call.outputs))
            for key, value in (stats or {}).items():
                merged_stats[key] = merged_stats.get(key, 0.0) + value / len(returned)
        ids = torch.cat([ids for ids, _ in parts])
        if len(ids) != len(result.batch) or not torch.equal(ids.sort().values, torch.arange(len(result.batch))):
            raise ExecutorError(f"streamed call {call.name} scored {len(ids)} rows for a batch of {len(result.batch)}")
        wide = {key: 0 for key in call.outputs if isinstance(outputs[0][key], torch.Tensor) and outputs[0][key].dim() >= 2}
        combined = Batch.concat(outputs, pad_values=wide)
        result.batch = result.batch.update(combined.select(ids.argsort()))
        merged_stats[f"stream/{call.name}_parts"] = float(len(parts))
        result.stats[call.name] = merged_stats
