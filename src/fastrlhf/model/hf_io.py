"""Load and save Hugging Face model directories (config.json + *.safetensors), safetensors only.

`load_model(dir)` reads config.json, then `model.safetensors` or the shards listed in
`model.safetensors.index.json`, and checks every tensor name and shape against our decoder; any
problem is a one-line `UserError` naming the file. `save_model(model, dir)` writes a directory that
`transformers.AutoModelForCausalLM` (or `AutoModelForSequenceClassification` for scalar-head models)
loads back, atomically: files go to a temporary sibling directory that is renamed into place.

Left out: pickle checkpoints (`pytorch_model.bin`) by design — they can run code on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_dir
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM, Rotary

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


def read_config(model_dir: str | os.PathLike) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not Path(model_dir).is_dir():
        raise UserError(f"{model_dir}: not a directory (expected a Hugging Face model directory)")
    if not path.is_file():
        raise UserError(f"{path}: missing (expected a Hugging Face model directory)")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}: expected a JSON object")
    return ModelConfig.from_hf_dict(hf, source=str(path))


def weight_files(model_dir: Path) -> list[Path]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise UserError(f"{index}: malformed safetensors index ({exc.__class__.__name__}: {exc})") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise UserError(f"{index}: lists shard {f.name} which does not exist")
        return files
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise UserError(f"{model_dir}: only pickle weights (*.bin/*.pt) found; fastrlhf loads safetensors only — convert with transformers' save_pretrained(safe_serialization=True)")
    raise UserError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{f}: cannot read safetensors file ({str(exc).splitlines()[0]})") from None
    return state


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
        raise UserError(f"{model_dir}: weights missing for {len(missing)} tensors, e.g. {missing[0]!r}")
    if unexpected:
        raise UserError(f"{model_dir}: unexpected tensors in checkpoint, e.g. {unexpected[0]!r}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise UserError(f"{model_dir}: tensor {name!r} has shape {tuple(state[name].shape)}, config.json implies {tuple(shape)}")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.model.rotary = Rotary(cfg)  # non-persistent buffers were built on meta
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


def copy_tokenizer_files(src_dir: str | os.PathLike) -> dict[str, bytes]:
    """The tokenizer files of an HF directory, to pass as `extra_files` when exporting."""
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "generation_config.json")
    return {n: (Path(src_dir) / n).read_bytes() for n in names if (Path(src_dir) / n).is_file()}
