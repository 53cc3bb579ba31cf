"""`fastrlhf bench rollout`: our rollout engine vs `transformers` `generate` on the same weights.

Protocol (both sides, same process, same thread count):
- one random Llama-family model (seeded) is saved as an HF directory; ours loads it with `load_model`,
  transformers with `AutoModelForCausalLM.from_pretrained` — the same fp32 weights;
- the same prompts (random token ids, lengths 16–47) and sampling settings: temperature 1, no
  top-k / top-p, exactly `new_tokens` new tokens per sequence (no stop token on either side, so both
  generate the same number of tokens);
- per batch size: one untimed warm-up per side (for `compile`, the warm-up includes the compile,
  reported separately), then `repeats` timed runs, alternating sides so drift hits both equally;
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
    lengths = torch.randint(16, 48, (batch,), generator=g)
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
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None)
    seconds = time.perf_counter() - started
    assert out.shape[1] - ids.shape[1] == new_tokens
    return len(prompts) * new_tokens / seconds


def run(spec: BenchSpec, log=print) -> tuple[list[Row], dict]:
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    cfg = bench_model_config(spec)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(CausalLM(cfg), Path(tmp) / "model")
        ours = load_model(Path(tmp) / "model")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "model", dtype=torch.float32).eval()
    params = SamplingParams(temperature=1.0, max_new_tokens=spec.new_tokens)
    rows = []
    for batch in spec.batch_sizes:
        prompts = make_prompts(batch, spec.vocab, spec.seed + batch)
        _time_hf(hf, prompts, spec.new_tokens)  # warm-up
        for compiled in spec.compile_modes:
            row = Row(batch, compiled)
            engine = RolloutEngine(ours, num_slots=batch, compile=compiled)
            started = time.perf_counter()
            _time_ours(engine, prompts, params)  # warm-up (and compile)
            row.compile_seconds = time.perf_counter() - started if compiled else 0.0
            for r in range(spec.repeats):
                row.ours.append(_time_ours(engine, prompts, params))
                row.hf.append(_time_hf(hf, prompts, spec.new_tokens))
                log(f"  batch {batch:>3} compile={'on ' if compiled else 'off'} repeat {r + 1}/{spec.repeats}: "
                    f"ours {row.ours[-1]:8.0f} tok/s   transformers {row.hf[-1]:8.0f} tok/s")
            rows.append(row)
    info = {"params": cfg.num_params(), "torch": torch.__version__, "threads": spec.threads,
            "cpu": platform.processor() or platform.machine(), "transformers": _transformers_version()}
    return rows, info


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def markdown_table(rows: list[Row], spec: BenchSpec, info: dict, command: str) -> str:
    lines = [
        f"Model: Llama-family, hidden {spec.hidden}, {spec.layers} layers, {spec.heads} heads / {spec.kv_heads} KV heads, "
        f"vocab {spec.vocab} — {info['params'] / 1e6:.2f} M parameters, fp32. {spec.new_tokens} new tokens per sequence, "
        f"temperature 1, prompts of 16–47 tokens. torch {info['torch']}, transformers {info['transformers']}, "
        f"{info['threads']} threads, {info['cpu']}. Medians of {spec.repeats} repeats (sides alternated).",
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
