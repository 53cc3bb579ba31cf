"""Joining or starting the Ray cluster a run uses.

`runtime.address` unset: a private local cluster for this run (`ray.init` with exactly the CPUs and
GPUs the run's workers ask for, no dashboard), shut down when the run ends. Set: join that cluster
(`ray start --head` prints the address; `auto` finds a local one) and leave it running. A process
that already called `ray.init` (a test, a notebook) keeps its own connection.

Every worker process gets one BLAS thread per CPU it was given: the env vars below cap the thread
pools a library starts on import, and each worker sets `torch.set_num_threads` itself.
"""

from __future__ import annotations


from fastrlhf.errors import UserError

WORKER_ENV = {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}


def worker_env(threads: int) -> dict[str, str]:
    return {**WORKER_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def resources_needed(runtime) -> tuple[float, float]:
    """(CPUs, GPUs) the run's actors reserve."""
    separate = runtime.scoring == "separate"
    cpus = (runtime.rollout_workers * runtime.rollout_cpus + runtime.trainer_workers * runtime.trainer_cpus
            + separate * runtime.scoring_cpus)
    gpus = (runtime.rollout_workers * runtime.rollout_gpus + runtime.trainer_workers * runtime.trainer_gpus
            + separate * runtime.scoring_gpus)
    return cpus, gpus


def connect(runtime) -> bool:
    """Connect for a run; True when this call started the cluster (and `disconnect` must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    threads = max(runtime.rollout_cpus, runtime.trainer_cpus)
    env = {"env_vars": worker_env(threads)}
    if runtime.address:
        try:
            ray.init(address=runtime.address, runtime_env=env, logging_level="WARNING", log_to_driver=True)
        except ConnectionError as exc:
            raise UserError(f"runtime.address={runtime.address}: cannot join the Ray cluster ({exc})") from None
        return True
    cpus, gpus = resources_needed(runtime)
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, runtime_env=env, logging_level="WARNING",
             log_to_driver=True)
    return True


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
