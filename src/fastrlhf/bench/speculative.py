"""`fastrlhf bench rollout --speculative`: plain vs n-gram vs draft model vs adaptive speculation.

Workload (GRPO-shaped): the shipped built-in policy (`tasks.builtin_policy`) on training prompts of
the built-in arithmetic task, n = 8 samples per prompt, temperature 1, stop at EOS. A "batch" is
the number of sequences (prompts × 8), and the engine gets that many slots.

Methods, all on the same prompts and seeds, in one process:
- `plain`: the engine without speculation;
- `ngram γ=k`, `draft γ=k` for each fixed k (k = 1, 2, 4, 8 by default);
- `adaptive`: strategy.AdaptiveSpeculator choosing among plain / ngram / draft and γ every step;
  one instance per batch size serves the warm-up and every timed call, as one serves a whole
  training run (its start-up profile and first estimates happen in the untimed warm-up).
The draft model is the policy truncated to `draft_layers` layers and, unless `distill_epochs` = 0,
distilled (distill.py) on the policy's own rollouts of *other* prompts (a different seed).

Per batch size: one untimed warm-up per method, then `repeats` timed runs with the methods
interleaved so drift hits all equally; tokens/s = generated tokens / wall seconds (medians), with
each method's acceptance and committed tokens per sequence-verification. Sanity checked in the
run: n-gram methods must return exactly plain's tokens (deterministic drafter).

Left out: long-tailed workloads other than the built-in task (its answers are short), GPU runs.
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


@dataclass
class SpecBenchSpec:
    batch_sizes: tuple[int, ...] = (8, 32, 128)  # sequences = prompts × GROUP
    new_tokens: int = 16
    repeats: int = 3
    gammas: tuple[int, ...] = (1, 2, 4, 8)
    draft_layers: int = 1
    distill_epochs: int = 20
    temperature: float = 1.0
    threads: int = 2
    seed: int = 0


@dataclass
class SpecRow:
    batch: int
    method: str
    tokens_per_s: list[float] = field(default_factory=list)
    acceptance: float = 0.0
    tokens_per_pass: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)


def load_policy():
    from fastrlhf.model.hf_io import load_model
    from fastrlhf.model.tokenizer import load_tokenizer
    from fastrlhf.tasks.builtin_policy import builtin_policy_dir

    return load_model(builtin_policy_dir()), load_tokenizer(builtin_policy_dir())


def grpo_prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    from fastrlhf.tasks.arithmetic import train_rows

    return [tokenizer.encode_prompt(row["prompt"]) for row in train_rows(0, count, seed)]


def sampling(spec: SpecBenchSpec, tokenizer, seed: int) -> SamplingParams:
    return SamplingParams(temperature=spec.temperature, max_new_tokens=spec.new_tokens, n=GROUP, seed=seed,
                          stop_token_ids=tuple(tokenizer.stop_token_ids()))


def make_draft(policy, tokenizer, spec: SpecBenchSpec, log=print):
    """The policy truncated to `draft_layers` layers, distilled on its own rollouts of other prompts."""
    draft = truncated_draft(policy, spec.draft_layers)
    if spec.distill_epochs:
        prompts = grpo_prompts(tokenizer, 64, seed=spec.seed + 10_000)
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


def run_once(policy, prompts, params, factory, slots: int):
    """→ (tokens/s, token lists, speculator or None)."""
    speculator = factory() if factory else None
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
    policy, tokenizer = load_policy()
    draft = make_draft(policy, tokenizer, spec, log)
    table = methods(spec, draft)
    rows: list[SpecRow] = []
    for batch in spec.batch_sizes:
        prompts = grpo_prompts(tokenizer, max(batch // GROUP, 1), seed=spec.seed + batch)
        slots = len(prompts) * GROUP
        params = sampling(spec, tokenizer, seed=spec.seed)
        by_method = {name: SpecRow(slots, name) for name in table}
        # adaptive keeps its cost table and acceptance estimates across calls, as in training (one
        # speculator per run): its start-up profile happens in the untimed warm-up
        adaptive = table["adaptive"]()
        factories = {**table, "adaptive": lambda: _fresh_stats(adaptive)}
        for repeat in range(spec.repeats + 1):  # repeat 0: warm-up, untimed
            reference = None
            for name, factory in factories.items():
                rate, tokens, speculator = run_once(policy, prompts, params, factory, slots)
                if name == "plain":
                    reference = tokens
                elif name.startswith("ngram") and tokens != reference:
                    raise AssertionError(f"{name} changed the sampled tokens (it must not)")
                if repeat:
                    row = by_method[name]
                    row.tokens_per_s.append(rate)
                    if speculator is not None:
                        row.acceptance, row.tokens_per_pass = speculator.stats.acceptance, speculator.stats.tokens_per_pass
            if repeat:
                log(f"  batch {slots:>4} repeat {repeat}/{spec.repeats}: " +
                    ", ".join(f"{n} {by_method[n].tokens_per_s[-1]:.0f}" for n in ("plain", "adaptive")) + " tok/s")
        rows.extend(by_method.values())
    info = {"torch": torch.__version__, "threads": spec.threads, "policy_params": policy.config.num_params()}
    return rows, info


def markdown_table(rows: list[SpecRow], spec: SpecBenchSpec, info: dict, command: str) -> str:
    lines = [
        f"Workload: the built-in policy ({info['policy_params'] / 1e6:.2f} M parameters, fp32) on built-in arithmetic "
        f"prompts, {GROUP} samples per prompt, temperature {spec.temperature}, ≤ {spec.new_tokens} new tokens, stop at EOS. "
        f"Draft: the policy's first {spec.draft_layers} layer(s)"
        + (f", distilled {spec.distill_epochs} epochs on its own rollouts of other prompts" if spec.distill_epochs else "")
        + f". torch {info['torch']}, {info['threads']} threads. Medians of {spec.repeats} repeats (methods interleaved).",
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
