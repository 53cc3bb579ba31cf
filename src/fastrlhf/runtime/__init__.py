"""The runtime: where model calls run when they leave the driver process (runtime.backend=ray).

The only package that knows about processes (docs/runtime.md):
    cluster.py        join or start the Ray cluster
    session.py        RaySession: the run's state on Ray behind TrainingState's methods; role proxies
    executor.py       RayExecutor: the graph walk + the weight-sync edge + streaming scoring
    trainer_group.py  M data-parallel trainer ranks (Ray actors, one torch.distributed group)
    rollout_pool.py   N rollout workers: assignment, rounds, migration, fault re-runs
    rollout_worker.py one rollout engine as a Ray actor
    weights.py        versioned, checksummed weight buckets
    pool.py           the pool's pure decisions (length prediction, balancing, migration plans)
"""
