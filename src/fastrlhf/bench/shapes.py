"""Model shapes for benchmarks: named presets written as loadable Hugging Face directories.

Presets (`SHAPES`):
- `builtin` — the arithmetic task's shipped 0.79 M-parameter SFT policy (`builtin_policy_dir()`),
  copied as is;
- `23m` — a random-init Llama: hidden 512, 8 layers, 8 heads / 4 KV heads (head_dim 64),
  intermediate 1280, vocab 2048, tied embeddings: 23.08 M parameters;
- `135m` — a random-init Llama with SmolLM-135M's proportions: hidden 576, 30 layers, 9 heads / 3 KV
  heads (head_dim 64), intermediate 1536, vocab 49152, tied embeddings: 134.52 M parameters (the
  same count as SmolLM-135M).

`write_shape(name, out_dir)` writes config.json + model.safetensors (our `save_model`) and the
tokenizer files; both `fastrlhf.model.hf_io.load_model` and `transformers.AutoModelForCausalLM`
load the directory. Random weights are seeded (`seed`, default 0: the same shape gives the same
bytes every time) and drawn from N(0, 0.02²) for every matrix and embedding (transformers'
`initializer_range` convention), RMSNorm weights 1; so logits start near-uniform and sampling at
temperature 1 gives varied tokens.

Tokenizer of the random shapes: the built-in tasks' character tokenizer (`tokenizer_builder`:
`<pad> <bos> <eos> <unk>`, digits, `+ - * =`, space, newline — ids 0..19, unchanged) extended with
filler tokens up to the model's vocabulary, one per id: filler id i is the single character
U+F0000 + (i − 20) (Supplementary Private Use Area-A, never in task text). So the arithmetic prompts
("47+815=") tokenize exactly as with the built-in policy, the built-in reward works, every id the
model can sample decodes on both sides (to one character), and decode → encode round-trips.

Left out: other architectures (Qwen, Mistral) and downloading real checkpoints: point the benchmarks
at any HF directory with `--model DIR` instead.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_dir
from fastrlhf.model.config import ModelConfig

FILLER_START = 0xF0000  # Supplementary Private Use Area-A: 65,534 code points
INIT_STD = 0.02


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    config: ModelConfig | None  # None: the shipped built-in policy (copied, not generated)


def _llama(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, max_positions: int,
           rms_norm_eps: float = 1e-5) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                       rms_norm_eps=rms_norm_eps, rope_theta=10000.0, max_position_embeddings=max_positions,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)


SHAPES: dict[str, Shape] = {
    "builtin": Shape("builtin", "the arithmetic task's shipped SFT policy", None),
    "23m": Shape("23m", "random-init Llama, hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1280, "
                        "vocab 2048, tied embeddings",
                 _llama(vocab=2048, hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1280, max_positions=1024)),
    "135m": Shape("135m", "random-init Llama with SmolLM-135M's proportions: hidden 576, 30 layers, 9 heads / "
                          "3 KV heads, intermediate 1536, vocab 49152, tied embeddings",
                  _llama(vocab=49152, hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536, max_positions=2048)),
}


def shape(name: str) -> Shape:
    if name not in SHAPES:
        raise UserError(f"unknown shape {name!r} (choose from {', '.join(SHAPES)})")
    return SHAPES[name]


def filler_characters(count: int) -> tuple[str, ...]:
    if count > 65534:
        raise ValueError(f"at most 65,534 filler tokens fit the private use area, asked for {count}")
    return tuple(chr(FILLER_START + i) for i in range(count))


def tokenizer_files(vocab_size: int) -> dict[str, bytes]:
    """The task character tokenizer extended with filler tokens to exactly `vocab_size` ids, as the
    bytes of its HF files (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from fastrlhf.model.hf_io import copy_tokenizer_files
    from fastrlhf.tasks.tokenizer_builder import SPECIAL_TOKENS, TASK_CHARACTERS, build_char_tokenizer, save_hf_tokenizer

    base = len(SPECIAL_TOKENS) + len(TASK_CHARACTERS)
    if vocab_size < base:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the task tokenizer's {base} tokens")
    tokenizer = build_char_tokenizer(TASK_CHARACTERS + filler_characters(vocab_size - base))
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_tokenizer(tokenizer, tmp)
        return copy_tokenizer_files(tmp)


def random_model(cfg: ModelConfig, seed: int = 0):
    """Our `CausalLM` of `cfg`, weights N(0, INIT_STD²) from a generator seeded with `seed`, norms 1."""
    from fastrlhf.model.decoder import CausalLM

    with torch.random.fork_rng(devices=[]):  # the default init draws from the global RNG: leave it as it was
        model = CausalLM(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.normal_(0.0, INIT_STD, generator=generator)
            elif "norm" in name:
                p.fill_(1.0)
            else:  # biases (none in these Llama shapes)
                p.zero_()
    return model.eval()


def write_shape(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write preset `name` as an HF model directory at `out_dir` (replaced atomically); returns it."""
    preset = shape(name)
    out_dir = Path(out_dir)
    if preset.config is None:
        from fastrlhf.tasks.builtin_policy import builtin_policy_dir

        source = builtin_policy_dir()
        with atomic_dir(out_dir) as tmp:
            for f in sorted(source.iterdir()):
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        return out_dir
    from fastrlhf.model.hf_io import save_model

    return save_model(random_model(preset.config, seed), out_dir, extra_files=tokenizer_files(preset.config.vocab_size))


def num_params(name: str) -> int:
    """Parameter count of preset `name` (the built-in policy's read from its config.json)."""
    preset = shape(name)
    if preset.config is not None:
        return preset.config.num_params()
    from fastrlhf.model.hf_io import read_config
    from fastrlhf.tasks.builtin_policy import builtin_policy_dir

    return read_config(builtin_policy_dir()).num_params()


def describe(cfg: ModelConfig) -> str:
    """One line: architecture and size of a model config."""
    return (f"{cfg.model_type}, hidden {cfg.hidden_size}, {cfg.num_layers} layers, {cfg.num_heads} heads / "
            f"{cfg.num_kv_heads} KV heads, intermediate {cfg.intermediate_size}, vocab {cfg.vocab_size}"
            f"{', tied embeddings' if cfg.tie_word_embeddings else ''} — {cfg.num_params() / 1e6:.2f} M parameters")


def make_model(shape_name: str, out_dir: str, seed: int = 0) -> int:
    """`fastrlhf bench make-model`: refuse a non-empty OUT_DIR, write the shape, print one line."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty directory (choose a new OUT_DIR)")
    write_shape(shape_name, out, seed)
    from fastrlhf.model.hf_io import read_config

    print(f"wrote {out}: {shape_name} ({describe(read_config(out))}, seed {seed})")
    return 0
