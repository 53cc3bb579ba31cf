"""`fastrlhf bench rollout --speculative`: plain vs n-gram vs draft model vs adaptive speculation.

Workload (GRPO-shaped): a built-in task's shipped starting policy on that task's training prompts,
n = 8 samples per prompt, temperature 1, stop at EOS. A "batch" is the number of sequences
(prompts × 8), and the engine gets that many slots. Tasks (`--task`, WORKLOADS):
- `worked_addition` (default): answers show their column-by-column working, so responses are long
  and long-tailed (operand sizes 1-8 digits, most of them small): the rollout shape where the tail
  of a batch leaves the hardware idle and speculation has room;
- `arithmetic`: bare 3-4-token answers (little to speculate on; kept for comparison).
Every repeat draws *new* prompts (the same for every method within the repeat), as every RL step
does, so no method profits from having seen the prompt in an earlier timed call.

Two scenarios (`seen_prompts`):
- first epoch (default): nobody has answered these prompts before; drafts can come only from the
  prompt, the sequence itself, its siblings (which decode in lockstep) or the draft model;
- later epoch (`--seen-prompts`): RL datasets are finite and run for several epochs, so a prompt
  usually comes back. Before each timed call every speculator is given (`Speculator.remember`) the
  responses of an untimed plain call on the same prompts with another seed — the *same* policy,
  so this is an optimistic stand-in for last epoch's rollouts of a policy that has since moved
  (scripts/speculative_training.py measures the real thing in a training run).

Methods, all on the same prompts and seeds, in one process:
- `plain`: the engine without speculation;
- `ngram γ=k`, `draft γ=k` for each fixed k (k = 1, 2, 4, 8 by default);
- `adaptive`: strategy.AdaptiveSpeculator choosing among plain / ngram / draft and γ every step;
  one instance per batch size serves the warm-up and every timed call, as one serves a whole
  training run (its start-up profile and first estimates happen in the untimed warm-up).
The draft model is the policy truncated to `draft_layers` layers and, unless `distill_epochs` = 0,
distilled (distill.py) on the policy's own rollouts of *other* prompts (a different seed).

Per batch size: `warmups` untimed rounds (default 1), then `repeats` timed runs with the methods
interleaved so drift hits all equally; tokens/s = generated tokens / wall seconds (medians), with
each method's acceptance and committed tokens per sequence-verification. Sanity checked in the
run: n-gram methods must return exactly plain's tokens (deterministic drafter).

Left out: user prompt files as workloads, GPU runs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams
from fastrlhf.rollout.speculative.distill import distill_draft, pack_rollouts
from fastrlhf.rollout.speculative.draft_model import DraftModelDrafter, truncated_draft
from fastrlhf.rollout.speculative.ngram import NGramDrafter
from fastrlhf.rollout.speculative.strategy import AdaptiveSpeculator
from fastrlhf.rollout.speculative.verify import Speculator, SpecStats

GROUP = 8  # samples per prompt (GRPO n)


@dataclass(frozen=True)
class Workload:
    policy_dir: str  # "module:function" returning the shipped policy's directory
    rows: str  # "module:function"(start, count, seed) -> training rows with a "prompt"
    new_tokens: int  # default longest response


WORKLOADS = {
    "worked_addition": Workload("fastrlhf.tasks.builtin_policy:worked_policy_dir",
                                "fastrlhf.tasks.worked_addition:train_rows", 96),
    "arithmetic": Workload("fastrlhf.tasks.builtin_policy:builtin_policy_dir",
                           "fastrlhf.tasks.arithmetic:train_rows", 16),
}


def _function(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class SpecBenchSpec:
    batch_sizes: tuple[int, ...] = (8, 32, 128)  # sequences = prompts × GROUP
    task: str = "worked_addition"  # a WORKLOADS key
    new_tokens: int | None = None  # None: the workload's default
    repeats: int = 3
    warmups: int = 1  # untimed rounds first: the adaptive speculator profiles and explores in them
    gammas: tuple[int, ...] = (1, 2, 4, 8)
    draft_layers: int = 1
    distill_epochs: int = 20
    temperature: float = 1.0
    threads: int = 2
    seed: int = 0
    seen_prompts: bool = False  # later-epoch scenario: earlier responses to the prompts are remembered


@dataclass
class SpecRow:
    batch: int
    method: str
    tokens_per_s: list[float] = field(default_factory=list)
    stats: list[SpecStats] = field(default_factory=list)  # per timed repeat (speculative methods)

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)

    @property
    def acceptance(self) -> float:
        """Accepted / drafted over all timed repeats."""
        drafted = sum(s.drafted for s in self.stats)
        return sum(s.accepted for s in self.stats) / drafted if drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        passes = sum(s.passes for s in self.stats)
        return sum(s.committed for s in self.stats) / passes if passes else 0.0


def load_policy(task: str):
    from fastrlhf.model.hf_io import load_model
    from fastrlhf.model.tokenizer import load_tokenizer

    directory = _function(WORKLOADS[task].policy_dir)()
    return load_model(directory), load_tokenizer(directory)


def grpo_prompts(task: str, tokenizer, count: int, seed: int) -> list[list[int]]:
    rows = _function(WORKLOADS[task].rows)(0, count, seed)
    return [tokenizer.encode_prompt(row["prompt"]) for row in rows]


def new_tokens(spec: SpecBenchSpec) -> int:
    return spec.new_tokens or WORKLOADS[spec.task].new_tokens


def sampling(spec: SpecBenchSpec, tokenizer, seed: int) -> SamplingParams:
    return SamplingParams(temperature=spec.temperature, max_new_tokens=new_tokens(spec), n=GROUP, seed=seed,
                          stop_token_ids=tuple(tokenizer.stop_token_ids()))


def make_draft(policy, tokenizer, spec: SpecBenchSpec, log=print):
    """The policy truncated to `draft_layers` layers, distilled on its own rollouts of other prompts."""
    draft = truncated_draft(policy, spec.draft_layers)
    if spec.distill_epochs:
        prompts = grpo_prompts(spec.task, tokenizer, 64, seed=spec.seed + 10_000)
        params = sampling(spec, tokenizer, seed=spec.seed + 10_000)
        rollouts = RolloutEngine(policy, num_slots=len(prompts) * GROUP).generate(prompts, params)
        stats = distill_draft(draft, policy, *pack_rollouts(rollouts, tokenizer.pad_token_id), params,
                              epochs=spec.distill_epochs, micro_batch=64, lr=1e-3, seed=spec.seed)
        log(f"  distilled a {spec.draft_layers}-layer draft on {len(rollouts)} rollouts: "
            f"KL {stats['distill/kl_first']:.3f} → {stats['distill/kl_last']:.3f}")
    return draft


def methods(spec: SpecBenchSpec, draft) -> dict[str, object]:
    """Method name → a fresh-speculator factory (None = plain)."""
    out: dict[str, object] = {"plain": None}
    for g in spec.gammas:
        out[f"ngram γ={g}"] = lambda g=g: Speculator(NGramDrafter(), gamma=g)
        out[f"draft γ={g}"] = lambda g=g: Speculator(DraftModelDrafter(draft), gamma=g)
    out["adaptive"] = lambda: AdaptiveSpeculator(NGramDrafter(), others={"draft": DraftModelDrafter(draft)},
                                                 gammas=(0, *spec.gammas))
    return out


def run_once(policy, prompts, params, factory, slots: int, history=None):
    """→ (tokens/s, token lists, speculator or None). `history`: (prompt, response) pairs the
    speculator remembers before the (timed) call."""
    speculator = factory() if factory else None
    if speculator is not None and history:
        speculator.remember(history)
    engine = RolloutEngine(policy, num_slots=slots, speculator=speculator)
    started = time.perf_counter()
    out = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    tokens = [s.token_ids for s in out]
    return sum(map(len, tokens)) / seconds, tokens, speculator


def _fresh_stats(speculator):
    """The same speculator (what it learned is kept) with its counters zeroed for the next timed call."""
    speculator.stats = SpecStats()
    return speculator


def run(spec: SpecBenchSpec, log=print) -> tuple[list[SpecRow], dict]:
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    policy, tokenizer = load_policy(spec.task)
    draft = make_draft(policy, tokenizer, spec, log)
    table = methods(spec, draft)
    rows: list[SpecRow] = []
    lengths: list[int] = []  # response lengths of plain's timed runs (the workload's shape)
    for batch in spec.batch_sizes:
        slots = max(batch // GROUP, 1) * GROUP
        params = sampling(spec, tokenizer, seed=spec.seed)
        by_method = {name: SpecRow(slots, name) for name in table}
        # adaptive keeps its cost table and acceptance estimates across calls, as in training (one
        # speculator per run): its start-up profile happens in the untimed warm-up
        adaptive = table["adaptive"]()
        factories = {**table, "adaptive": lambda: _fresh_stats(adaptive)}
        for round_ in range(spec.warmups + spec.repeats):
            repeat = max(round_ - spec.warmups + 1, 0)  # 0: warm-up, untimed
            # new prompts every repeat (as every RL step has), the same for every method
            prompts = grpo_prompts(spec.task, tokenizer, slots // GROUP, seed=spec.seed + 1000 * batch + round_)
            history = None
            if spec.seen_prompts:  # "last epoch's" rollouts: the same prompts, another seed, untimed
                earlier = sampling(spec, tokenizer, seed=spec.seed + 7919)
                _, responses, _ = run_once(policy, prompts, earlier, None, slots)
                history = [(prompts[i // GROUP], r) for i, r in enumerate(responses)]
            reference = None
            for name, factory in factories.items():
                rate, tokens, speculator = run_once(policy, prompts, params, factory, slots, history)
                if name == "plain":
                    reference = tokens
                    if repeat:
                        lengths.extend(map(len, tokens))
                elif name.startswith("ngram") and tokens != reference:
                    raise AssertionError(f"{name} changed the sampled tokens (it must not)")
                if repeat:
                    row = by_method[name]
                    row.tokens_per_s.append(rate)
                    if speculator is not None:
                        row.stats.append(speculator.stats)
            if repeat:
                log(f"  batch {slots:>4} repeat {repeat}/{spec.repeats}: " +
                    ", ".join(f"{n} {by_method[n].tokens_per_s[-1]:.0f}" for n in ("plain", "adaptive")) + " tok/s")
        rows.extend(by_method.values())
    lengths.sort()
    info = {"torch": torch.__version__, "threads": spec.threads, "policy_params": policy.config.num_params(),
            "length_mean": statistics.fmean(lengths), "length_median": statistics.median(lengths),
            "length_p90": lengths[int(0.9 * (len(lengths) - 1))], "length_max": lengths[-1]}
    return rows, info


def markdown_table(rows: list[SpecRow], spec: SpecBenchSpec, info: dict, command: str) -> str:
    lines = [
        f"Workload: the `{spec.task}` task's shipped policy ({info['policy_params'] / 1e6:.2f} M parameters, fp32) on "
        f"its training prompts (new ones every repeat), {GROUP} samples per prompt, temperature {spec.temperature}, "
        f"≤ {new_tokens(spec)} new tokens, stop at EOS; response length (tokens) mean {info['length_mean']:.1f}, "
        f"median {info['length_median']:.0f}, 90th percentile {info['length_p90']}, max {info['length_max']}. "
        + ("Later-epoch scenario: before each timed call every speculator remembers the same policy's responses to "
           "the same prompts from another seed (an optimistic stand-in for last epoch's rollouts). " if spec.seen_prompts
           else "First-epoch scenario: no earlier responses to these prompts. ")
        + f"Draft: the policy's first {spec.draft_layers} layer(s)"
        + (f", distilled {spec.distill_epochs} epochs on its own rollouts of other prompts" if spec.distill_epochs else "")
        + f". torch {info['torch']}, {info['threads']} threads. Medians of {spec.repeats} repeats after {spec.warmups} untimed round(s) (methods interleaved).",
        "",
        f"Command: `{command}`",
        "",
        "| batch | method | tok/s | × plain | acceptance | tokens / verification |",
        "|---:|:---|---:|---:|---:|---:|",
    ]
    plain = {r.batch: r.median for r in rows if r.method == "plain"}
    for r in rows:
        spec_cols = f"{r.acceptance:.2f} | {r.tokens_per_pass:.2f}" if r.method != "plain" else "— | —"
        lines.append(f"| {r.batch} | {r.method} | {r.median:,.0f} | {r.median / plain[r.batch]:.2f}× | {spec_cols} |")
    return "\n".join(lines) + "\n"
