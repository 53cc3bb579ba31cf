"""Data-parallel training vs one rank: the loss / grad-norm trajectory of M = 2 trainer ranks against
M = 1 on the same samples (runtime.backend=ray), and how far apart they drift — the reduction-order
noise that tests/runtime/test_ray_runtime.py's tolerance is set from.

    python benchmarks/dp_trajectory.py                 # 8 steps, 2 mini-batches, 96-token micro-batches
    python benchmarks/dp_trajectory.py --steps 20

Both runs use the built-in arithmetic task from the same seed with 1 rollout worker; the samples of a
step are identical while the weights agree well enough not to flip a sampled token.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def history(ranks: int, steps: int, root: Path) -> list[dict]:
    from fastrlhf.config import load_config
    from fastrlhf.train.loop import train

    overrides = [f"train.run_dir={root / str(ranks)}", f"train.steps={steps}", "train.prompts_per_step=8",
                 "rollout.samples_per_prompt=4", "train.eval_every=0", "task.eval_size=16", "train.checkpoint_every=0",
                 "train.mini_batches=2", "train.micro_batch_tokens=96", "runtime.backend=ray",
                 "runtime.rollout_workers=1", f"runtime.trainer_workers={ranks}"]
    return train(load_config(None, overrides), show_progress=False).history


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        one, two = history(1, args.steps, Path(tmp)), history(2, args.steps, Path(tmp))
    print("| step | reward M=1 | reward M=2 | loss M=1 | loss M=2 | grad_norm M=1 | grad_norm M=2 | rel. diff grad_norm |")
    print("|---|---|---|---|---|---|---|---|")
    worst = {"loss": 0.0, "grad_norm": 0.0}
    for step, (a, b) in enumerate(zip(one, two), 1):
        for key in worst:
            worst[key] = max(worst[key], abs(a[key] - b[key]) / max(abs(a[key]), 1e-12))
        print(f"| {step} | {a['reward']:.4f} | {b['reward']:.4f} | {a['loss']:.7g} | {b['loss']:.7g} | "
              f"{a['grad_norm']:.7g} | {b['grad_norm']:.7g} | {abs(a['grad_norm'] - b['grad_norm']) / a['grad_norm']:.1e} |")
    print(f"\nmax relative difference over {args.steps} steps: loss {worst['loss']:.1e}, grad_norm {worst['grad_norm']:.1e}")


if __name__ == "__main__":
    main()
