"""`fastrlhf bench rollout`: our rollout engine vs `transformers` `generate` on the same weights.

Protocol (both sides, same process, same thread count):
- one model directory: by default a random Llama-family model (seeded) saved as an HF directory, or
  the user's own (`--model DIR`, e.g. one written by `fastrlhf bench make-model`); ours loads it with
  `load_model(dir).to(dtype)`, transformers with `AutoModelForCausalLM.from_pretrained(dir, dtype=dtype)`
  — the same weights in the same precision (`--dtype fp32 | bf16 | fp16`);
- each side at its own best settings: transformers with its KV cache (`use_cache=True`), its default
  attention implementation and no torch.compile (eager PyTorch); ours, the engine as is (`--compile`
  adds compiled rows);
- the same prompts (random token ids 3 .. vocab − 1, lengths 16–47) and sampling settings: temperature 1, no
  top-k / top-p, exactly `new_tokens` new tokens per sequence (no stop token on either side, so both
  generate the same number of tokens);
- per batch size: one untimed warm-up per side (for `compile`, the warm-up includes the compile,
  reported separately), then `repeats` timed runs, alternating which side goes first so drift hits
  both equally;
- tokens/s = batch × new_tokens / wall seconds; the table reports medians and our/HF ratios.

Left out: other frameworks (vLLM has no CPU wheel; TRL generates through transformers), GPU runs.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastrlhf.errors import UserError
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.hf_io import load_model, save_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams


@dataclass
class BenchSpec:
    batch_sizes: tuple[int, ...] = (1, 8, 64)
    new_tokens: int = 128
    repeats: int = 3
    compile_modes: tuple[bool, ...] = (False, True)
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    vocab: int = 2048
    threads: int = 2
    seed: int = 0
    model_dir: str | None = None  # None: the random model above
    dtype: str = "fp32"  # fp32 | bf16 | fp16, both sides


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT_LENGTHS = (16, 48)  # [low, high) tokens per prompt


@dataclass
class Row:
    batch: int
    compiled: bool
    ours: list[float] = field(default_factory=list)  # tokens/s per repeat
    hf: list[float] = field(default_factory=list)
    compile_seconds: float = 0.0

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def hf_median(self) -> float:
        return statistics.median(self.hf)

    @property
    def ratio(self) -> float:
        return self.ours_median / self.hf_median


def bench_model_config(spec: BenchSpec) -> ModelConfig:
    return ModelConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=int(spec.hidden * 8 / 3 + 63) // 64 * 64,
                       num_layers=spec.layers, num_heads=spec.heads, num_kv_heads=spec.kv_heads,
                       head_dim=spec.hidden // spec.heads, max_position_embeddings=1024)


def make_prompts(batch: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(*PROMPT_LENGTHS, (batch,), generator=g)
    return [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in lengths]


def _time_ours(engine: RolloutEngine, prompts, params) -> float:
    started = time.perf_counter()
    out = engine.generate(prompts, params)
    seconds = time.perf_counter() - started
    assert all(len(s.token_ids) == params.max_new_tokens for s in out)
    return len(prompts) * params.max_new_tokens / seconds


def _left_padded(prompts: list[list[int]]):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def _time_hf(model, prompts, new_tokens: int) -> float:
    ids, mask = _left_padded(prompts)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None,
                             use_cache=True)
    seconds = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == new_tokens
    return len(prompts) * new_tokens / seconds


def run(spec: BenchSpec, log=print) -> tuple[list[Row], dict]:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    dtype = DTYPES[spec.dtype]
    if spec.model_dir is None:
        cfg = bench_model_config(spec)
        with tempfile.TemporaryDirectory() as tmp:
            save_model(CausalLM(cfg), Path(tmp) / "model")
            ours, hf = _load_both(Path(tmp) / "model", dtype)
    else:
        cfg = check_model_dir(spec)
        ours, hf = _load_both(Path(spec.model_dir), dtype)
    params = SamplingParams(temperature=1.0, max_new_tokens=spec.new_tokens)
    rows = []
    for batch in spec.batch_sizes:
        prompts = make_prompts(batch, cfg.vocab_size, spec.seed + batch)
        _time_hf(hf, prompts, spec.new_tokens)  # warm-up
        for compiled in spec.compile_modes:
            row = Row(batch, compiled)
            engine = RolloutEngine(ours, num_slots=batch, compile=compiled)
            started = time.perf_counter()
            _time_ours(engine, prompts, params)  # warm-up (and compile)
            row.compile_seconds = time.perf_counter() - started if compiled else 0.0
            for r in range(spec.repeats):
                if r % 2:  # odd repeats time transformers first: drift hits both sides alike
                    row.hf.append(_time_hf(hf, prompts, spec.new_tokens))
                    row.ours.append(_time_ours(engine, prompts, params))
                else:
                    row.ours.append(_time_ours(engine, prompts, params))
                    row.hf.append(_time_hf(hf, prompts, spec.new_tokens))
                log(f"  batch {batch:>3} compile={'on ' if compiled else 'off'} repeat {r + 1}/{spec.repeats}: "
                    f"ours {row.ours[-1]:8.0f} tok/s   transformers {row.hf[-1]:8.0f} tok/s")
            rows.append(row)
    info = {"params": cfg.num_params(), "torch": torch.__version__, "threads": spec.threads,
            "cpu": platform.processor() or platform.machine(), "transformers": _transformers_version(),
            "config": cfg, "attention": getattr(hf.config, "_attn_implementation", None) or "default"}
    return rows, info


def check_model_dir(spec: BenchSpec) -> ModelConfig | None:
    """The `--model` directory's config, checked before anything is loaded: a missing directory, one that is
    not a model directory, or one too short for the prompts + new tokens is a one-line `UserError`."""
    if spec.model_dir is None:
        return None
    from fastrlhf.model.hf_io import read_config, weight_files

    directory = Path(spec.model_dir)
    cfg = read_config(directory)  # UserError: missing, not a directory, no / bad config.json
    weight_files(directory)  # UserError: no safetensors
    longest = PROMPT_LENGTHS[1] - 1 + spec.new_tokens
    if longest > cfg.max_position_embeddings:
        fits = cfg.max_position_embeddings - PROMPT_LENGTHS[1] + 1
        raise UserError(f"{directory}: prompts of up to {PROMPT_LENGTHS[1] - 1} tokens + --new-tokens {spec.new_tokens} "
                        f"exceed the model's max_position_embeddings {cfg.max_position_embeddings}"
                        + (f"; pass --new-tokens {fits} or fewer" if fits >= 1 else ""))
    return cfg


def _load_both(directory: Path, dtype: torch.dtype):
    """(ours, transformers') models of one directory, in `dtype`; a directory transformers cannot load is one line."""
    from transformers import AutoModelForCausalLM

    ours = load_model(directory).to(dtype)
    try:
        hf = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    except Exception as exc:  # transformers raises many types for a directory it cannot load
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UserError(f"{directory}: transformers cannot load this model ({type(exc).__name__}: {detail})") from None
    return ours, hf


def model_label(spec: BenchSpec) -> str:
    return "the random 4 M model" if spec.model_dir is None else f"`{Path(spec.model_dir).resolve().name}`"


def section_heading(spec: BenchSpec, info: dict) -> str:
    """The markdown section a run replaces: the default table's, or one per model directory and dtype."""
    if spec.model_dir is None and spec.dtype == "fp32":
        from fastrlhf.bench.cli import SECTION

        return SECTION
    return f"## Rollout on {model_label(spec)} ({spec.dtype}): our engine vs transformers generate"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def markdown_table(rows: list[Row], spec: BenchSpec, info: dict, command: str) -> str:
    if spec.model_dir is None:
        model = (f"Model: Llama-family, hidden {spec.hidden}, {spec.layers} layers, {spec.heads} heads / {spec.kv_heads} KV "
                 f"heads, vocab {spec.vocab} — {info['params'] / 1e6:.2f} M parameters, {spec.dtype}.")
    else:
        from fastrlhf.bench.shapes import describe

        model = (f"Model: {model_label(spec)} ({describe(info['config'])}), {spec.dtype} on both sides "
                 f"(ours: `load_model(dir).to(dtype)`; transformers: `from_pretrained(dir, dtype=...)`).")
    lines = [
        f"{model} {spec.new_tokens} new tokens per sequence, no stop token, "
        f"temperature 1, no top-k / top-p, prompts of 16–47 random tokens. transformers: KV cache on, "
        f"{info.get('attention', 'default')} attention, no torch.compile. torch {info['torch']}, transformers "
        f"{info['transformers']}, {info['threads']} threads, {info['cpu']}. Medians of {spec.repeats} repeats (sides alternated).",
        "",
        f"Command: `{command}`",
        "",
        "| batch | torch.compile (ours) | ours tok/s | transformers tok/s | ratio | compile time |",
        "|---:|:---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.batch} | {'on' if r.compiled else 'off'} | {r.ours_median:,.0f} | {r.hf_median:,.0f} | "
                     f"{r.ratio:.2f}× | {f'{r.compile_seconds:.0f} s' if r.compiled else '—'} |")
    return "\n".join(lines) + "\n"
