"""Kill harness: `kill -9` a training run at random moments, resume it, compare with an uninterrupted run.

    python benchmarks/kill_resume.py                      # 20 trials for each of grpo, ppo, draft
    python benchmarks/kill_resume.py --jobs grpo --trials 5 --seed 1

For each job an uninterrupted reference run is made first. Each trial then starts the same job in a
fresh run directory, SIGKILLs the process at a random moment (uniform over the reference run's wall
time, so kills land in start-up, rollouts, updates, evaluation and checkpoint writes alike; every
third kill instead waits for a checkpoint write to begin — its temporary directory to appear — and
kills inside it), resumes with `fastrlhf train --resume`, may be killed again (up to `--max-kills`
times per trial), and finally runs to the end. A trial passes when

- the final policy (`final/model.safetensors`) and every trained companion in the last checkpoint
  (PPO critic, distilled draft model) equal the reference bit for bit, and
- `metrics.jsonl` holds exactly the reference's steps (nothing lost, nothing duplicated).

The table gives, per job: trials, kills, kills that landed inside a checkpoint write (a temporary
checkpoint directory was left behind), resumes that succeeded, and bit-identical finals.
Jobs: grpo (the default task), ppo (a critic, KL in the reward), draft (speculative rollouts with
a distilled draft model and fixed γ, which keep a run bit-reproducible), async (rollouts generated 2
steps ahead by a rollout worker actor, `runtime.max_staleness=2`) and offpolicy (N = 3 off-policy
steps): in both, checkpoints hold rollouts made from weights they no longer have.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file

COMMON = ["train.steps=8", "train.prompts_per_step=8", "rollout.samples_per_prompt=4", "task.eval_size=16",
          "train.checkpoint_every=1", "train.eval_every=4", "train.seed=3"]
JOBS = {
    "grpo": [],
    "ppo": ["algorithm.name=ppo", "algorithm.kl_in=reward"],
    "draft": ["rollout.speculative=draft", "rollout.gamma=2", "rollout.draft_refresh_every=3"],
    "async": ["runtime.max_staleness=2"],  # a generator actor 2 steps ahead: checkpoints hold queued rollouts
    "offpolicy": ["train.off_policy_steps=3"],
}


@dataclass
class Tally:
    trials: int = 0
    kills: int = 0
    in_checkpoint_write: int = 0
    resumes_ok: int = 0
    identical: int = 0
    failures: list[str] = field(default_factory=list)


def train_command(run_dir: Path, job: str, resume: bool) -> list[str]:
    base = [sys.executable, "-m", "fastrlhf.cli", "train"]
    if resume:
        return [*base, "--resume", str(run_dir), "--quiet"]
    return [*base, *COMMON, *JOBS[job], f"train.run_dir={run_dir}", "--quiet"]


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_to_end(run_dir: Path, job: str, resume: bool) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(run_dir, job, resume), capture_output=True, text=True, env=child_env(),
                          timeout=900)


def _checkpoint_temps(run_dir: Path) -> set[str]:
    """Names of the temporary directories of checkpoint writes now under way (or left by a kill)."""
    root = run_dir / "checkpoints"
    return {p.name for p in root.iterdir() if p.name.startswith(".step_")} if root.is_dir() else set()


def killed_run(run_dir: Path, job: str, resume: bool, delay: float, in_write: bool) -> tuple[bool, bool]:
    """Start the job, SIGKILL it after `delay` s (or, `in_write`, once a checkpoint write has begun,
    giving up at `delay`) → (killed, killed inside a checkpoint write); (False, False) if it finished first."""
    stale = _checkpoint_temps(run_dir)  # left by an earlier kill: the next save removes them
    process = subprocess.Popen(train_command(run_dir, job, resume), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=child_env())
    deadline = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < deadline:
        if in_write and _checkpoint_temps(run_dir) - stale:
            break
        time.sleep(0.002 if in_write else 0.01)
    if process.poll() is not None:
        process.stderr.close()
        if process.returncode != 0:
            raise RuntimeError(f"run failed on its own (exit {process.returncode})")
        return False, False
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return True, bool(_checkpoint_temps(run_dir) - stale)


def trained_weights(run_dir: Path) -> dict[str, dict]:
    """The final policy and the companions (critic/, draft/) of the last checkpoint."""
    out = {"final": load_file(str(run_dir / "final" / "model.safetensors"))}
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    for name in ("critic", "draft"):
        path = checkpoints[-1] / name / "model.safetensors"
        if path.is_file():
            out[name] = load_file(str(path))
    return out


def logged_steps(run_dir: Path) -> list[tuple[int, tuple[str, ...]]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(row["step"], tuple(sorted(k for k in row if k not in ("time",) and not k.startswith("time/")
                                       and k not in ("tokens_per_s", "rollout_tokens_per_s")))) for row in rows]


def identical(a: dict[str, dict], b: dict[str, dict]) -> bool:
    return a.keys() == b.keys() and all(a[m].keys() == b[m].keys() and all(a[m][k].equal(b[m][k]) for k in a[m])
                                        for m in a)


def trial(job: str, reference: Path, seconds: float, rng: random.Random, work: Path, kills: tuple[int, int],
          tally: Tally, kill_index: list[int]) -> None:
    run_dir = work / f"{job}-trial{tally.trials}"
    tally.trials += 1
    resume = False
    for _ in range(rng.randint(*kills)):
        kill_index[0] += 1
        in_write = kill_index[0] % 3 == 0
        killed, inside_write = killed_run(run_dir, job, resume, seconds if in_write else rng.uniform(0.5, seconds),
                                          in_write)
        if not killed:  # it finished before the kill
            break
        tally.kills += 1
        tally.in_checkpoint_write += inside_write
        resume = run_dir.is_dir() and (run_dir / "config.yaml").is_file()
    else:
        done = run_to_end(run_dir, job, resume)
        if done.returncode != 0:
            tally.failures.append(f"{run_dir.name}: resume exited {done.returncode}: {done.stderr.strip()[-300:]}")
            return
    tally.resumes_ok += 1
    if identical(trained_weights(run_dir), trained_weights(reference)) and logged_steps(run_dir) == logged_steps(reference):
        tally.identical += 1
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        tally.failures.append(f"{run_dir.name}: differs from the uninterrupted run (kept for inspection)")


def harness(jobs: list[str], trials: int, seed: int, max_kills: int, work: Path, progress=print,
            min_kills: int = 1) -> dict[str, Tally]:
    """`trials` trials of each job, each killed `min_kills`..`max_kills` times (drawn) before it runs to the end."""
    rng = random.Random(seed)
    results = {}
    for job in jobs:
        reference = work / f"{job}-reference"
        started = time.monotonic()
        done = run_to_end(reference, job, resume=False)
        if done.returncode != 0:
            raise RuntimeError(f"{job}: the reference run failed: {done.stderr.strip()[-500:]}")
        seconds = time.monotonic() - started
        tally, kill_index = Tally(), [0]
        for t in range(trials):
            trial(job, reference, seconds, rng, work, (min_kills, max_kills), tally, kill_index)
            progress(f"{job}: trial {t + 1}/{trials}: {tally.identical}/{tally.trials} bit-identical, "
                     f"{tally.kills} kills ({tally.in_checkpoint_write} inside a checkpoint write)")
        results[job] = tally
    return results


def table(results: dict[str, Tally]) -> str:
    lines = ["| job | trials | kills | inside a checkpoint write | resumes ok | bit-identical |",
             "|---|---|---|---|---|---|"]
    for job, t in results.items():
        lines.append(f"| {job} | {t.trials} | {t.kills} | {t.in_checkpoint_write} | {t.resumes_ok}/{t.trials} | "
                     f"{t.identical}/{t.trials} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--max-kills", type=int, default=2, help="kills per trial (1..N, drawn at random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="where runs go (default: a temporary directory, removed after)")
    args = parser.parse_args()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    results = harness(args.jobs, args.trials, args.seed, args.max_kills, work,
                      progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(results))
    failures = [f for t in results.values() for f in t.failures]
    for failure in failures:
        print(f"FAILED {failure}")
    if not args.work_dir and not failures:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
