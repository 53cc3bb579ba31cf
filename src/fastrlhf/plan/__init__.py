"""Execution-plan search for RLHF dataflow graphs (ReaLHF, arXiv 2406.14088).

Pure library: no torch, no numpy (matplotlib only for the Gantt chart). Modules, one job each:
`hardware` (accelerators, clusters), `model_spec` (parameter / FLOP / byte counts), `graphs` (the
calls of the algorithms' dataflow graphs, `fastrlhf.algorithms.graphs`), `layout` (meshes and dp x
tp x pp layouts), `plan` (execution plans, JSON), `cost` (time model), `memory` (memory model),
`evaluate` (plan -> augmented plan with derived micro-batches, offload and reallocation steps),
`simulator` (list scheduling), `search` (annealing + exhaustive), `baselines`, `planner` (glue),
`gantt`, `cli`. See docs/plan.md.
"""
