"""What the Ray runtime costs: the default job on `ray` (1 rollout worker + 1 trainer rank) vs `local`,
and weight-sync throughput vs bytes — measured in one run.

    python benchmarks/runtime_overhead.py                      # the default job (300 steps) both ways
    python benchmarks/runtime_overhead.py --steps 100 --sync-mb 3,50,200

Wall time of each job = `fastrlhf train` from start to exported policy (set-up, evals, checkpoints
included), in this process; the Ray side includes starting its private cluster and actors. Both
runs use the same seed, so their samples are the same.

Weight sync: a trainer-side actor packs a state dict of float32 tensors (runtime/weights.pack:
checksummed buckets, `ray.put`), a rollout-side actor receives, verifies every CRC and copies into
its own tensors (WeightReceiver.load) — the path of every step's sync; median of `--repeats`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def job_seconds(backend: str, steps: int, root: Path) -> tuple[float, dict]:
    from fastrlhf.config import load_config
    from fastrlhf.train.loop import train

    overrides = [f"train.run_dir={root / backend}", f"train.steps={steps}", f"runtime.backend={backend}"]
    started = time.perf_counter()
    result = train(load_config(None, overrides), show_progress=False)
    return time.perf_counter() - started, result.final_eval


class Sender:
    def __init__(self, megabytes: int):
        import torch

        torch.set_num_threads(1)
        elements = megabytes * 1024 * 1024 // 4
        self.state = {f"w{i}": torch.randn(elements // 8) for i in range(8)}

    def publish(self, version: int):
        import ray

        from fastrlhf.runtime.weights import pack

        started = time.perf_counter()
        refs = [ray.put(b) for b in pack(self.state, version, bucket_mb=64)]
        return refs, time.perf_counter() - started


class Receiver:
    def __init__(self, megabytes: int):
        import torch

        from fastrlhf.runtime.weights import WeightReceiver

        torch.set_num_threads(1)
        elements = megabytes * 1024 * 1024 // 4
        module = torch.nn.Module()
        for i in range(8):
            module.register_buffer(f"w{i}", torch.zeros(elements // 8))
        self.receiver = WeightReceiver(module)

    def load(self, version: int, refs: list) -> float:
        import ray

        started = time.perf_counter()
        self.receiver.load(ray.get(list(refs)), version)
        return time.perf_counter() - started


def sync_table(sizes: list[int], repeats: int) -> list[tuple[int, float, float, float]]:
    import ray

    rows = []
    for mb in sizes:
        sender = ray.remote(Sender).options(num_cpus=1).remote(mb)
        receiver = ray.remote(Receiver).options(num_cpus=1).remote(mb)
        walls, packs, loads = [], [], []
        for version in range(repeats + 1):
            started = time.perf_counter()
            refs, pack_s = ray.get(sender.publish.remote(version))
            load_s = ray.get(receiver.load.remote(version, refs))
            if version:  # the first round warms both actors up
                walls.append(time.perf_counter() - started)
                packs.append(pack_s)
                loads.append(load_s)
        rows.append((mb, statistics.median(walls), statistics.median(packs), statistics.median(loads)))
        ray.kill(sender)
        ray.kill(receiver)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sync-mb", default="3,50,200", help="state-dict sizes (MB, fp32) for the sync table")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        local_s, local_eval = job_seconds("local", args.steps, Path(tmp))
        ray_s, ray_eval = job_seconds("ray", args.steps, Path(tmp))
    print(f"default job, {args.steps} steps: local {local_s:.1f} s, ray (1 rollout + 1 trainer) {ray_s:.1f} s, "
          f"ray / local = {ray_s / local_s:.2f}x; held-out reward local {local_eval.get('eval/reward', float('nan')):.3f}, "
          f"ray {ray_eval.get('eval/reward', float('nan')):.3f}\n")
    import ray

    from fastrlhf.runtime import cluster

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": cluster.worker_env(1)})
    try:
        rows = sync_table([int(x) for x in args.sync_mb.split(",")], args.repeats)
    finally:
        ray.shutdown()
    print("| weights (MB) | sync s (pack + put + get + verify + copy) | MB/s | pack + put s | receive s |")
    print("|---|---|---|---|---|")
    for mb, wall, pack_s, load_s in rows:
        print(f"| {mb} | {wall:.3f} | {mb / wall:.0f} | {pack_s:.3f} | {load_s:.3f} |")


if __name__ == "__main__":
    main()
