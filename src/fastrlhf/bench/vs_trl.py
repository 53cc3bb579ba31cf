"""`python benchmarks/vs_trl.py`: `fastrlhf train` (GRPO) vs TRL's `GRPOTrainer` on the same job.

Protocol:
- one model directory for every side: a preset (`--shape builtin | 23m | 135m`, bench/shapes.py,
  written once to a temporary directory) or the user's (`--model DIR`);
- the same job: the built-in arithmetic task's training prompts (its seeded stream, the rows our
  trainer draws, in the same order — TRL gets them as a `datasets.Dataset`: a "prompt" column of the
  plain prompt text our tokenizer's `encode_prompt` sees, "47+815=", and the "answer" column); the same
  reward function (`fastrlhf.tasks.arithmetic:reward`, exact match, imported by both); the same group
  size, prompts per step, max new tokens (stop at EOS), temperature 1, learning rate (constant, no
  warm-up), KL coefficient, clip range and number of steps (TRL's mapping: bench/trl_grpo.py);
- sides: ours at `model.dtype=fp32` and `model.dtype=bf16`, TRL at fp32 and with `bf16=True`; each run
  is a fresh process (`python -m fastrlhf.cli train ...` / `python -m fastrlhf.bench.trl_grpo`) with the
  same thread count (`OMP_NUM_THREADS` / `MKL_NUM_THREADS`; TRL's runner also calls
  `torch.set_num_threads`), `--repeats` whole runs per side, the order of sides reversed every other
  repeat so drift hits all of them;
- measured per run: s/step = median wall time between the ends of consecutive optimizer steps,
  steps 2..N (step 1 holds the warm-up; ours: the `time` stamps of metrics.jsonl, which our trainer
  writes at the end of each step; TRL: `on_step_end` of a callback); samples/s = prompts × group /
  s/step; peak RSS = the process's maximum resident set size (`os.wait4` rusage; the TRL process
  includes importing trl / datasets / pandas / pyarrow, as a TRL user's does); train reward = mean of
  the logged per-step training reward over the last half of the steps; held-out = greedy accuracy on
  the task's 200 held-out problems of the start model and of each side's final model, computed
  afterwards in this process by our evaluator (the same code for both sides; `--no-eval` skips it);
- reported: medians over the repeats; "× TRL best" = the fastest TRL side's s/step ÷ this side's
  (above 1: faster than TRL at its best).

Our trainer's in-run held-out evaluation is shrunk to one problem (`task.eval_size=1`, outside the
timed steps either way) so that the start / end evaluation costs the same on every side.
Left out: vLLM (no CPU wheel), multi-process / multi-GPU runs, TRL's experimental
`use_transformers_continuous_batching` generation path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fastrlhf.errors import UserError

SIDES = ("ours-fp32", "ours-bf16", "trl-fp32", "trl-bf16")
REWARD = "fastrlhf.tasks.arithmetic:reward"
SECTION = "## GRPO training vs TRL GRPOTrainer ({label})"
EVAL_SIZE = 200


@dataclass
class Job:
    model_dir: str
    label: str
    steps: int = 10
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 8
    lr: float = 3e-4
    kl_coef: float = 0.02
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    ours_overrides: tuple[str, ...] = ()  # extra `key=value` settings of our side (--ours-set)

    @property
    def batch(self) -> int:
        return self.prompts_per_step * self.group_size

    def rows(self) -> list[dict]:
        from fastrlhf.tasks import arithmetic

        return arithmetic.train_rows(0, self.steps * self.prompts_per_step, self.seed)


@dataclass
class RunResult:
    side: str
    step_seconds: list[float] = field(default_factory=list)  # steps 2..N
    rewards: list[float] = field(default_factory=list)  # per step, in order
    peak_rss_bytes: int = 0
    wall_seconds: float = 0.0
    final_dir: str | None = None
    error: str | None = None
    notes: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return statistics.median(self.step_seconds)

    def last_reward(self) -> float:
        tail = self.rewards[len(self.rewards) // 2:] or self.rewards
        return sum(tail) / len(tail)


# ---------------------------------------------------------------------------- one run per side
def ours_command(job: Job, dtype: str, run_dir: Path, with_dtype_key: bool = True) -> list[str]:
    overrides = [
        f"model.path={job.model_dir}", "task.name=arithmetic", f"task.reward={REWARD}", "task.eval_size=1",
        "algorithm.name=grpo", f"algorithm.kl_coef={job.kl_coef}", "algorithm.kl_in=loss", "algorithm.clip_low=0.2",
        "algorithm.clip_high=0.28", "algorithm.normalize_std=true", "algorithm.loss_aggregation=token_mean",
        f"rollout.samples_per_prompt={job.group_size}", f"rollout.max_new_tokens={job.max_new_tokens}",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "rollout.top_k=0", f"rollout.num_slots={max(128, job.batch)}",
        f"train.steps={job.steps}", f"train.prompts_per_step={job.prompts_per_step}", f"train.lr={job.lr}",
        "train.warmup_steps=0", "train.lr_decay=none", "train.weight_decay=0.0", "train.grad_clip=1.0",
        f"train.seed={job.seed}", f"train.device={job.device}", "train.eval_every=0", "train.checkpoint_every=0",
        f"train.run_dir={run_dir}",
    ]
    if with_dtype_key:
        overrides.insert(1, f"model.dtype={dtype}")
    overrides += list(job.ours_overrides)
    return [sys.executable, "-m", "fastrlhf.cli", "train", *overrides]


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    return env


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_process(command: list[str], log_path: Path, threads: int, timeout: float,
                rss_timeline: list | None = None) -> tuple[int, int, float]:
    """Run `command` in a fresh process (its own session) → (exit code, peak RSS in bytes, wall seconds).

    Peak RSS is the kernel's (`os.wait4` rusage `ru_maxrss`); `rss_timeline`, when given, also gets
    [wall time.time(), RSS MiB] of the process every ~0.25 s (from /proc, where there is one) to see
    where the peak falls."""
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_env(threads), start_new_session=True)
        deadline, next_sample = started + timeout, started
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            now = time.perf_counter()
            if now > deadline:
                os.killpg(proc.pid, signal.SIGKILL)  # its own process group: only what this run started
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            if rss_timeline is not None and now >= next_sample:
                rss = _rss_mib(proc.pid)
                if rss is not None:
                    rss_timeline.append([round(time.time(), 3), round(rss, 1)])
                next_sample = now + 0.25
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, time.perf_counter() - started  # Linux: ru_maxrss in KiB


def _last_line(log_path: Path) -> str:
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("fastrlhf: error", "Traceback")) or "Error" in line]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:200]


def _ours_steps(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted((r for r in records if r.get("step", 0) >= 1 and "reward" in r), key=lambda r: r["step"])


def ours_metrics(run_dir: Path) -> tuple[list[float], list[float]]:
    """(step durations for steps 2..N, per-step rewards) from our trainer's metrics.jsonl, whose `time`
    (Unix seconds) is stamped as each step's record is written, at the step's end."""
    steps = _ours_steps(run_dir)
    ends = [r["time"] for r in steps]
    return [b - a for a, b in zip(ends, ends[1:])], [float(r["reward"]) for r in steps]


def run_ours(job: Job, dtype: str, work: Path, timeout: float, with_dtype_key: bool) -> RunResult:
    result = RunResult(f"ours-{dtype}")
    if not with_dtype_key and dtype != "fp32":
        result.error = "this fastrlhf has no model.dtype key (fp32 only)"
        return result
    run_dir = work / "run"
    timeline = result.notes.setdefault("rss_timeline", [])
    code, rss, wall = run_process(ours_command(job, dtype, run_dir, with_dtype_key), work / "log.txt", job.threads, timeout,
                                  timeline)
    result.peak_rss_bytes, result.wall_seconds = rss, wall
    if code != 0:
        result.error = f"exit {code}: {_last_line(work / 'log.txt')}"
        return result
    result.step_seconds, result.rewards = ours_metrics(run_dir)
    result.notes["step_end_unix"] = [r["time"] for r in _ours_steps(run_dir)]
    result.final_dir = str(run_dir / "final")
    return result


def run_trl(job: Job, dtype: str, work: Path, timeout: float) -> RunResult:
    result = RunResult(f"trl-{dtype}")
    spec = {"model_dir": job.model_dir, "rows": job.rows(), "reward": REWARD, "steps": job.steps,
            "prompts_per_step": job.prompts_per_step, "group_size": job.group_size,
            "max_new_tokens": job.max_new_tokens, "lr": job.lr, "beta": job.kl_coef, "seed": job.seed,
            "bf16": dtype == "bf16", "threads": job.threads, "device": job.device,
            "output_dir": str(work / "trainer"), "final_dir": str(work / "final"), "result": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "fastrlhf.bench.trl_grpo", str(work / "spec.json")]
    timeline: list = []
    code, rss, wall = run_process(command, work / "log.txt", job.threads, timeout, timeline)
    result.peak_rss_bytes, result.wall_seconds = rss, wall
    if code != 0:
        result.error = f"exit {code}: {_last_line(work / 'log.txt')}"
        return result
    out = json.loads((work / "result.json").read_text())
    ends = out["step_end"]
    result.step_seconds = [b - a for a, b in zip(ends, ends[1:])]
    result.rewards = [out["reward"][k] for k in sorted(out["reward"], key=int)]
    result.final_dir = str(work / "final")
    result.notes = {**{k: out.get(k) for k in ("prompt_ids_match", "chat_template", "optim", "param_dtype")},
                    "step_end_unix": out.get("step_end_unix"), "rss_timeline": timeline}
    if not out.get("prompt_ids_match", True):
        result.error = "TRL tokenizes the prompts differently from our encode_prompt"
    return result


# ---------------------------------------------------------------------------- held-out evaluation
def heldout_accuracy(model_dir: str, max_new_tokens: int) -> float:
    """Greedy accuracy on the arithmetic task's held-out problems (our evaluator, fp32)."""
    from fastrlhf.model.hf_io import load_model_and_tokenizer
    from fastrlhf.tasks import arithmetic
    from fastrlhf.train.evaluate import evaluate

    model, tokenizer = load_model_and_tokenizer(model_dir)
    return evaluate(model, tokenizer, arithmetic.eval_rows(EVAL_SIZE), arithmetic.reward, ("answer",), max_new_tokens)["eval/reward"]


# ---------------------------------------------------------------------------- the benchmark
@dataclass
class SideSummary:
    side: str
    runs: list[RunResult]
    heldout: list[float] = field(default_factory=list)

    @property
    def ok(self) -> list[RunResult]:
        return [r for r in self.runs if r.error is None and r.step_seconds]

    @property
    def error(self) -> str | None:
        failed = [r.error for r in self.runs if r.error is not None]
        if not self.ok:
            return failed[0] if failed else "no timed steps (use --steps 2 or more)"
        return None

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) if not callable(getattr(r, attr)) else getattr(r, attr)() for r in self.ok]
        return statistics.median(values)


def run_benchmark(job: Job, sides: list[str], repeats: int, work_root: Path, timeout: float = 3600.0,
                  evaluate: bool = True, log=print) -> tuple[list[SideSummary], dict]:
    from fastrlhf.config import all_keys

    with_dtype_key = "model.dtype" in all_keys()
    summaries = {s: SideSummary(s, []) for s in sides}
    for r in range(repeats):
        order = sides if r % 2 == 0 else list(reversed(sides))
        for side in order:
            kind, dtype = side.split("-")
            work = work_root / f"{side}-{r}"
            work.mkdir(parents=True)
            result = run_ours(job, dtype, work, timeout, with_dtype_key) if kind == "ours" else run_trl(job, dtype, work, timeout)
            summaries[side].runs.append(result)
            if result.error:
                log(f"  repeat {r + 1}/{repeats} {side}: FAILED {result.error} (log: {work / 'log.txt'})")
            else:
                log(f"  repeat {r + 1}/{repeats} {side}: {result.seconds_per_step:.3f} s/step, "
                    f"peak RSS {result.peak_rss_bytes / 2**20:.0f} MiB, reward (last half) {result.last_reward():.3f}, "
                    f"{result.wall_seconds:.0f} s wall")
    info = versions()
    info["with_dtype_key"] = with_dtype_key
    if evaluate:
        import torch

        torch.set_num_threads(job.threads)
        info["heldout_start"] = heldout_accuracy(job.model_dir, job.max_new_tokens)
        for summary in summaries.values():
            summary.heldout = [heldout_accuracy(r.final_dir, job.max_new_tokens) for r in summary.ok]
    return list(summaries.values()), info


def versions() -> dict:
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": platform.processor() or platform.machine()}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    return info


# ---------------------------------------------------------------------------- the table
DTYPE_LABEL = {"ours-fp32": "fp32 (`model.dtype=fp32`)", "ours-bf16": "bf16 (`model.dtype=bf16`)",
               "trl-fp32": "fp32 (`bf16=False`)", "trl-bf16": "`bf16=True` (autocast, fp32 weights)"}


def markdown_table(job: Job, summaries: list[SideSummary], info: dict, repeats: int, command: str,
                   model_line: str) -> str:
    trl_times = [s.median("seconds_per_step") for s in summaries if s.side.startswith("trl") and s.error is None]
    best_trl = min(trl_times) if trl_times else None
    tail = job.steps - job.steps // 2
    heldout = "heldout_start" in info
    lines = [
        f"Job: GRPO on the built-in arithmetic task; model {model_line}. {job.prompts_per_step} prompts × "
        f"{job.group_size} samples per step (= {job.batch} completions), ≤ {job.max_new_tokens} new tokens (stop at EOS), "
        f"temperature 1, constant learning rate {job.lr:g} (AdamW, no warm-up), KL coefficient {job.kl_coef:g} "
        f"(k3, in the loss), ratio clipped to [0.8, 1.28], token-mean loss, {job.steps} steps. Both sides: the same "
        f"model directory, the task's training prompts in the same order (seed {job.seed}), the same reward function "
        f"(`{REWARD}`). TRL: `GRPOTrainer`, `num_iterations=1`, no vLLM, gradient checkpointing off. Each run a "
        f"fresh process, {job.threads} threads, {job.device}. s/step: median wall time between the ends of "
        f"consecutive steps, steps 2–{job.steps} (step 1 holds the warm-up); samples/s = {job.batch} / s/step; peak "
        f"RSS: the process's maximum resident set; train reward: mean logged training reward of the last {tail} steps"
        + ("; held-out: greedy accuracy on the task's 200 held-out problems, start → end, our evaluator for both sides"
           if heldout else "")
        + f". torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}, {info['cpu']}. "
          f"Medians of {repeats} run(s) per side (order of sides reversed every other repeat).",
        "",
        f"Command: `{command}`",
        "",
        "| side | dtype | s/step | samples/s | × TRL best | peak RSS | train reward |" + (" held-out |" if heldout else ""),
        "|:---|:---|---:|---:|---:|---:|---:|" + ("---:|" if heldout else ""),
    ]
    for s in summaries:
        name = "fastrlhf" if s.side.startswith("ours") else "TRL"
        if s.error is not None:
            lines.append(f"| {name} | {DTYPE_LABEL[s.side]} | failed: {s.error.replace('|', '/')} | | | | |"
                         + (" |" if heldout else ""))
            continue
        seconds = s.median("seconds_per_step")
        ratio = f"{best_trl / seconds:.2f}×" if best_trl else "—"
        rate = job.batch / seconds
        partial = f" ({len(s.ok)} of {len(s.runs)} runs)" if len(s.ok) < len(s.runs) else ""
        row = (f"| {name} | {DTYPE_LABEL[s.side]} | {seconds:.3f}{partial} | {rate:,.0f}" if rate >= 10 else
               f"| {name} | {DTYPE_LABEL[s.side]} | {seconds:.3f}{partial} | {rate:.2f}")
        row += (f" | {ratio} | "
               f"{s.median('peak_rss_bytes') / 2**20:,.0f} MiB | {s.median('last_reward'):.3f} |")
        if heldout:
            row += f" {info['heldout_start']:.3f} → {statistics.median(s.heldout):.3f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/vs_trl.py",
                                description="fastrlhf train vs TRL GRPOTrainer on the same GRPO job (module docstring).")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--shape", choices=["builtin", "23m", "135m"], default=None,
                       help="model preset (default builtin; bench/shapes.py)")
    which.add_argument("--model", metavar="DIR", help="an HF model directory instead of a preset")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8, help="samples per prompt (TRL: num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--kl-coef", type=float, default=0.02, help="ours: algorithm.kl_coef; TRL: beta")
    p.add_argument("--repeats", type=int, default=3, help="whole runs per side; medians are reported")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--ours-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config overrides of our side, e.g. train.atomic_steps=false (shown in the table's command)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation of the final models")
    p.add_argument("--keep", metavar="DIR", help="keep run directories and logs under DIR (default: a temporary directory)")
    p.add_argument("--json", metavar="FILE", help="also write every run's raw measurements as JSON")
    p.add_argument("--write", metavar="FILE", help="replace this benchmark's section of a markdown file (docs/benchmarks.md)")
    return p


def _check(args: argparse.Namespace) -> None:
    if args.ours_set:  # a bad key or value is refused here, in one line, before any run starts
        from fastrlhf.config import Config, apply_overrides

        apply_overrides(Config(), args.ours_set, source="--ours-set")
    for name in ("steps", "prompts_per_step", "max_new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ 1")
    if args.group_size < 2:
        raise UserError("--group-size must be ≥ 2 (GRPO normalises rewards within a group)")
    if args.lr <= 0 or args.kl_coef < 0:
        raise UserError("--lr must be > 0 and --kl-coef ≥ 0")
    if any(s.startswith("trl") for s in args.sides):
        import importlib.util

        try:
            found = importlib.util.find_spec("trl") is not None
        except ValueError:  # a module object without a spec (e.g. None in sys.modules)
            found = False
        if not found:
            raise UserError("trl is not installed: pip install -e '.[bench]' (or drop the trl sides: --sides ours-fp32 ours-bf16)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    try:
        return _main(args, argv)
    except UserError as exc:
        print(f"vs_trl: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from fastrlhf.bench.shapes import describe, write_shape
    from fastrlhf.model.hf_io import read_config, weight_files

    _check(args)
    command = "python benchmarks/vs_trl.py " + " ".join(shlex.quote(a) for a in argv)
    sides = list(dict.fromkeys(args.sides))
    with tempfile.TemporaryDirectory(prefix="vs_trl-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.model:
            model_dir, label = str(Path(args.model).resolve()), Path(args.model).resolve().name
            read_config(model_dir)  # one line for a missing / non-model directory ...
            weight_files(Path(model_dir))  # ... or one without weights
        else:
            label = args.shape or "builtin"
            model_dir = str(write_shape(label, root / f"model-{label}"))
        cfg = read_config(model_dir)
        if cfg.max_position_embeddings < 16 + args.max_new_tokens:
            raise UserError(f"{model_dir}: max_position_embeddings {cfg.max_position_embeddings} is too short for "
                            f"the prompts + --max-new-tokens {args.max_new_tokens}")
        job = Job(model_dir=model_dir, label=label, steps=args.steps, prompts_per_step=args.prompts_per_step,
                  group_size=args.group_size, max_new_tokens=args.max_new_tokens, lr=args.lr, kl_coef=args.kl_coef,
                  seed=args.seed, threads=args.threads, device=args.device, ours_overrides=tuple(args.ours_set))
        print(f"vs_trl: model {label} ({describe(cfg)}); sides {', '.join(sides)}; {args.repeats} repeat(s); "
              f"runs under {root}", file=sys.stderr)
        summaries, info = run_benchmark(job, sides, args.repeats, root / "runs", args.timeout, not args.no_eval,
                                        log=lambda line: print(line, file=sys.stderr))
        model_line = f"`{label}` ({describe(cfg)})"
        table = markdown_table(job, summaries, info, args.repeats, command, model_line)
        if args.json:
            Path(args.json).write_text(json.dumps({"job": asdict(job), "info": info, "command": command,
                                                   "sides": [{"side": s.side, "heldout": s.heldout,
                                                              "runs": [asdict(r) for r in s.runs]} for s in summaries]},
                                                  indent=1) + "\n")
    print(table)
    if args.write:
        from fastrlhf.bench.cli import write_section

        write_section(Path(args.write), SECTION.format(label=label), table)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0 if all(r.error is None for s in summaries for r in s.runs) else 1  # a failed run: exit 1
