"""Load and save Hugging Face model directories (config.json + *.safetensors), safetensors only.

`load_model(dir)` reads config.json, then `model.safetensors` or the shards listed in
`model.safetensors.index.json`, and checks every tensor name and shape against our decoder; any
problem is a one-line `UserError` naming the file. `save_model(model, dir)` writes a directory that
`transformers.AutoModelForCausalLM` (or `AutoModelForSequenceClassification` for scalar-head models)
loads back, atomically: files go to a temporary sibling directory that is renamed into place.
`load_model_and_tokenizer(dir)` loads both and checks that the model's vocabulary covers the
tokenizer's (`check_vocab`: smaller is a `UserError`, larger — a padded vocabulary — one warning line).

Left out: pickle checkpoints (`pytorch_model.bin`) by design — they can run code on load.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_dir
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM, Rotary
from fastrlhf.model.tokenizer import Tokenizer, load_tokenizer

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry
_LAYER = re.compile(r"model\.layers\.(\d{1,9})\.")


def read_config(model_dir: str | os.PathLike) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).exists():
        raise UserError(f"{model_dir}: model directory does not exist")
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: not a directory (expected a Hugging Face model directory)")
    if not path.is_file():
        raise UserError(f"{path}: missing (expected a Hugging Face model directory)")
    hf = _read_json(path, "config")
    if not isinstance(hf, dict):
        raise UserError(f"{path}: expected a JSON object, got {_json_type(hf)}")
    return ModelConfig.from_hf_dict(hf, source=str(path))


def _read_json(path: Path, what: str):
    """The JSON value in `path`, or a one-line `UserError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except (ValueError, RecursionError) as exc:  # an int of > 4300 digits; nesting deeper than the stack
        raise UserError(f"{path}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} file ({exc.strerror or exc})") from None


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def weight_files(model_dir: Path) -> list[Path]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        data = _read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError(f"{index}: malformed safetensors index (expected an object with a non-empty \"weight_map\" "
                            "of tensor name -> shard file)")
        names = set()
        for tensor, name in weight_map.items():
            if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
                raise UserError(f"{index}: tensor {_short(tensor)} maps to {_short(name)}, not a shard file name "
                                "in the model directory")
            names.add(name)
        files = [model_dir / name for name in sorted(names)]
        for f in files:
            if not f.is_file():
                raise UserError(f"{index}: lists shard {_short(f.name)} which does not exist")
        return files
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise UserError(f"{model_dir}: only pickle weights (*.bin/*.pt) found; fastrlhf loads safetensors only — convert with transformers' save_pretrained(safe_serialization=True)")
    raise UserError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors file(s); a broken file or a tensor that is not a
    floating-point weight is a one-line `UserError` naming the file."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        try:
            tensors = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise UserError(f"{f}: cannot read safetensors file ({detail})") from None
        for name, tensor in tensors.items():
            if tensor.dtype not in FLOAT_DTYPES:
                raise UserError(f"{f}: tensor {_short(name)} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                                "weights must be float16, bfloat16, float32 or float64")
        state.update(tensors)
    return state


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def stack_projections(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names → ours: q/k/v_proj → qkv_proj and gate/up_proj → gate_up_proj (weights and biases)."""
    out = dict(state)
    for i in range(cfg.num_layers):
        for parent, parts, fused in ((f"model.layers.{i}.self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                                     (f"model.layers.{i}.mlp.", ("gate_proj", "up_proj"), "gate_up_proj")):
            for kind in ("weight", "bias"):
                names = [f"{parent}{p}.{kind}" for p in parts]
                present = [n in out for n in names]
                if all(present):
                    out[f"{parent}{fused}.{kind}"] = torch.cat([out.pop(n) for n in names], dim=0)
                elif any(present):
                    missing = names[present.index(False)]
                    raise UserError(f"weights missing for {missing!r}")
    return out


def split_projections(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Ours → HF names (inverse of `stack_projections`)."""
    h, H, K, I = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size
    out = {}
    for name, tensor in state.items():
        if ".qkv_proj." in name:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split([H * h, K * h, K * h], dim=0)):
                out[name.replace("qkv_proj", part)] = piece.contiguous()
        elif ".gate_up_proj." in name:
            for part, piece in zip(("gate_proj", "up_proj"), tensor.split([I, I], dim=0)):
                out[name.replace("gate_up_proj", part)] = piece.contiguous()
        else:
            out[name] = tensor
    return out


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> CausalLM:
    """An HF directory → our `CausalLM` (eval mode, on `device`, in `dtype`)."""
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    state = read_state_dict(model_dir)
    layers_found = {int(m.group(1)) for name in state if (m := _LAYER.match(name))}
    if max(layers_found, default=-1) + 1 != cfg.num_layers:  # checked before anything loops over the layers
        held = f"layers 0..{max(layers_found)}" if layers_found else "no layers"
        raise UserError(f"{model_dir}: config.json num_hidden_layers is {cfg.num_layers} but the weights hold {held}")
    try:
        state = stack_projections(state, cfg)
    except UserError as exc:
        raise UserError(f"{model_dir}: {exc}") from None
    except RuntimeError as exc:
        raise UserError(f"{model_dir}: q/k/v or gate/up shapes do not fit config.json ({str(exc).splitlines()[0]})") from None
    with torch.device("meta"):
        model = CausalLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise UserError(f"{model_dir}: weights missing for {len(missing)} tensors, e.g. {_short(missing[0])}")
    if unexpected:
        raise UserError(f"{model_dir}: unexpected tensors in checkpoint, e.g. {_short(unexpected[0])}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise UserError(f"{model_dir}: tensor {name!r} has shape {tuple(state[name].shape)}, config.json implies {tuple(shape)}")
    rotary = Rotary(cfg)  # non-persistent buffers were built on meta
    if not torch.isfinite(rotary.inv_freq).all():
        raise UserError(f"{model_dir / 'config.json'}: rope_theta {cfg.rope_theta} with RoPE scaling {cfg.rope_scaling} "
                        "gives non-finite rotary frequencies")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.model.rotary = rotary
    return model.to(device).eval()


def save_model(model: CausalLM, out_dir: str | os.PathLike, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write config.json + model.safetensors (+ extra files, e.g. the tokenizer) atomically."""
    out_dir = Path(out_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    state = split_projections(state, model.config)
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
        for name, content in (extra_files or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as fh:
                fh.write(content)
    return out_dir


_VOCAB_WARNED: set[tuple[str, int, int]] = set()  # (directory, model vocab, tokenizer vocab) warned about


def check_vocab(config: ModelConfig, tokenizer: Tokenizer, source: str | os.PathLike) -> None:
    """The model's vocabulary (`config.vocab_size` rows of embeddings / logits) must cover every id
    `tokenizer` produces (`Tokenizer.vocab_size`).

    Smaller: a `UserError` naming both sizes (the first forward over such an id would fail). Larger is
    normal (vocabularies padded to a multiple of 64 or 128): one warning line on stderr, once per
    directory and sizes; the model may still sample the extra ids, which decode to nothing.
    """
    model_vocab, tokenizer_vocab = config.vocab_size, tokenizer.vocab_size
    if model_vocab < tokenizer_vocab:
        raise UserError(f"{source}: config.json vocab_size {model_vocab} is smaller than the tokenizer's vocabulary "
                        f"({tokenizer_vocab} token ids): token ids {model_vocab}..{tokenizer_vocab - 1} have no embedding")
    key = (str(source), model_vocab, tokenizer_vocab)
    if model_vocab > tokenizer_vocab and key not in _VOCAB_WARNED:
        _VOCAB_WARNED.add(key)
        print(f"fastrlhf: warning: {source}: config.json vocab_size {model_vocab} is larger than the tokenizer's "
              f"vocabulary ({tokenizer_vocab} token ids); ids {tokenizer_vocab}..{model_vocab - 1} are padding and "
              "decode to nothing if sampled", file=sys.stderr)


def load_model_and_tokenizer(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                             device: str | torch.device = "cpu") -> tuple[CausalLM, Tokenizer]:
    """(model, tokenizer) of an HF directory, their vocabularies checked (`check_vocab`); the cheap
    checks (directory, config.json, tokenizer) run before the weights are read."""
    cfg = read_config(model_dir)
    tokenizer = load_tokenizer(model_dir)
    check_vocab(cfg, tokenizer, model_dir)
    return load_model(model_dir, dtype=dtype, device=device), tokenizer


def copy_tokenizer_files(src_dir: str | os.PathLike) -> dict[str, bytes]:
    """The tokenizer files of an HF directory, to pass as `extra_files` when exporting."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
    return {n: (Path(src_dir) / n).read_bytes() for n in names if (Path(src_dir) / n).is_file()}
