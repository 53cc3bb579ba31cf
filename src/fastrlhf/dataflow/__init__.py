"""Dataflow: batches of named fields, graphs of model calls, and the in-process executor.

Names are imported lazily so that `fastrlhf.dataflow.graph` (pure Python) can be imported by
`plan/` without importing torch, which `batch` and `executor` need.
"""

import importlib

_EXPORTS = {
    "Batch": "batch", "BatchError": "batch",
    "ROW_SOURCE_KEY": "graph", "ExecutorError": "executor", "IterationResult": "executor",
    "LocalExecutor": "executor",
    "KINDS": "graph", "Edge": "graph", "Graph": "graph", "GraphError": "graph", "ModelCall": "graph",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastrlhf.dataflow' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fastrlhf.dataflow.{_EXPORTS[name]}"), name)
