"""Atomic, pickle-free training checkpoints with exact resume.

Layout of `run_dir/checkpoints/step_{step:06d}/` (an HF model directory plus training state):

    config.json, model.safetensors (+ extra_files, e.g. tokenizer)  via model.hf_io.save_model
    optimizer.safetensors   "{param name}/{state key}" → tensor (AdamW: step, exp_avg, exp_avg_sq)
    optimizer.json          param-group hyperparameters (lr, betas, eps, weight_decay, ...) and
                            each group's parameter names; the LR scheduler's state
    rng.safetensors         tensor RNG states (torch CPU generator, CUDA generators, any tensor)
    rng.json                the rest: python `random` and numpy MT19937 states
    config.yaml             the run's config snapshot
    checksums.json          SHA-256 of every file above, by relative path
    state.json              {"format", "step", "extra"} — extra holds the data position etc.

Atomicity: everything is written into a hidden temporary sibling (`.step_*.tmp*`) which is renamed
to `step_*` only when complete; a crash leaves the previous checkpoints intact and at most a hidden
temp dir, removed by the next save. `state.json` is written last, and `latest_checkpoint` ignores
directories without it. After a save only the newest `keep` checkpoints remain.

Integrity: `checksums.json` is verified file by file on load, so a flipped byte in the weights, the
optimizer moments or the RNG state is a one-line error naming the file — never a silent resume from
corrupt state. Finiteness: a model or optimizer state holding NaN / inf is never written (the step
guard in train/optim.py should make that impossible; this is the last line of defence).

Exactness: safetensors stores fp32 bit-for-bit, JSON stores Python floats by `repr` (round-trips
exactly), so weights + AdamW moments + step counts + scheduler + RNG restore to the same bits.

Left out: sharded / distributed optimizer state (one process owns the whole optimizer), async save.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fastrlhf.errors import UserError
from fastrlhf.files import atomic_dir
from fastrlhf.model.hf_io import read_state_dict, save_model, stack_projections

FORMAT = 2  # 2: checksums.json (format-1 checkpoints load without verification)
STEP_DIR = re.compile(r"^step_(\d{6,})$")


# ------------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """Every global RNG state: torch CPU, CUDA (one per device), python `random`, numpy."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], source: str = "RNG state") -> None:
    """Inverse of `capture_rng` (accepts states after a save / load round trip); a malformed state is
    a one-line `UserError` naming `source`, applied only once every part has been checked."""
    try:
        torch_state = state["torch"]
        version, internal, gauss = state["python"]
        python_state = (version, tuple(internal), gauss)
        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy_state = (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        random.Random().setstate(python_state)  # validate before touching the global generators
        np.random.RandomState().set_state(numpy_state)
        torch.Generator().set_state(torch_state)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise UserError(f"{source}: malformed RNG state ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _split_rng(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (and lists of tensors, as `key.i`) → safetensors; everything else → JSON."""
    tensors, plain = {}, {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            tensors.update({f"{key}.{i}": v for i, v in enumerate(value)})
            plain[key] = {"tensor_list": len(value)}
        else:
            plain[key] = _jsonable(value)
    return tensors, plain


def _join_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {k: v for k, v in tensors.items() if "." not in k}
    for key, value in plain.items():
        if isinstance(value, dict) and "tensor_list" in value:
            state[key] = [tensors[f"{key}.{i}"] for i in range(value["tensor_list"])]
        else:
            state[key] = value
    return state


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------- optimizer
def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Names of each group's parameters, in order (from `param_names` or looked up in `model`)."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [list(g.get("param_names") or [by_id[id(p)] for p in g["params"]]) for g in optimizer.param_groups]


def optimizer_files(model, optimizer, scheduler) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for optimizer.safetensors, dict for optimizer.json)."""
    names = _param_names(model, optimizer)
    tensors = {}
    for group, group_names in zip(optimizer.param_groups, names):
        for p, name in zip(group["params"], group_names):
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"{name}/{key}"] = value.detach().to("cpu").contiguous()
    groups = [{k: v for k, v in g.items() if k not in ("params", "param_names")} | {"param_names": n}
              for g, n in zip(optimizer.param_groups, names)]
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} if scheduler is not None else None
    return tensors, {"param_groups": groups, "scheduler": sched}


def load_optimizer(path: Path, model, optimizer, scheduler) -> None:
    tensors = _read_safetensors(path / "optimizer.safetensors")
    meta = _read_json(path / "optimizer.json")
    names = _param_names(model, optimizer)
    try:
        saved_groups = meta["param_groups"]
        if [g["param_names"] for g in saved_groups] != names:
            raise UserError(f"{path / 'optimizer.json'}: parameter groups do not match the model / optimizer")
        state, index = {}, 0
        for group_names in names:
            for name in group_names:
                prefix = f"{name}/"
                entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                if entry:
                    state[index] = entry
                index += 1
        groups, index = [], 0
        for saved, group_names in zip(saved_groups, names):
            hyper = {k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "param_names"}
            groups.append(hyper | {"params": list(range(index, index + len(group_names))), "param_names": group_names})
            index += len(group_names)
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        if scheduler is not None:
            scheduler.load_state_dict(dict(meta["scheduler"]) | {"lr_lambdas": [None] * len(optimizer.param_groups)})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path / 'optimizer.json'}: malformed optimizer state ({exc.__class__.__name__}: {exc})") from None


# ------------------------------------------------------------------------------- save / load
def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, scheduler, rng_state: dict, extra: dict,
                    config_yaml: str, keep: int = 2, extra_files: dict[str, str | bytes] | None = None,
                    companions: dict[str, tuple] | None = None, write_more=None) -> Path:
    """Write `run_dir/checkpoints/step_{step:06d}/` atomically; keep the newest `keep`; return its path.

    `companions` {name: (model, optimizer, scheduler)}: further trained models (the PPO critic),
    each saved the same way in the sub-directory `name/` of the same atomic checkpoint.
    `write_more(directory)`: writes further files into the checkpoint (covered by its checksums),
    e.g. the queued rollouts of an off-policy run (train/rollout_queue.save_rollouts)."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".*step_*.tmp*"):  # ours and save_model's own temp dirs
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        _save_trained(tmp, model, optimizer, scheduler, extra_files)
        for name, (other, other_optimizer, other_scheduler) in (companions or {}).items():
            _save_trained(tmp / name, other, other_optimizer, other_scheduler, None)
        if write_more is not None:
            write_more(tmp)
        rng_tensors, rng_plain = _split_rng(rng_state)
        save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
        _write_json(tmp / "rng.json", rng_plain)
        (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
        _write_json(tmp / "checksums.json", file_checksums(tmp))
        _write_json(tmp / "state.json", {"format": FORMAT, "step": step, "extra": extra})
    prune_checkpoints(root, keep)
    return final


def _save_trained(directory: Path, model, optimizer, scheduler, extra_files) -> None:
    check_finite(model, optimizer)
    save_model(model, directory, extra_files=extra_files)
    opt_tensors, opt_meta = optimizer_files(model, optimizer, scheduler)
    save_file(opt_tensors, str(directory / "optimizer.safetensors"))
    _write_json(directory / "optimizer.json", opt_meta)


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints under `root` (keep ≥ 1)."""
    complete = [p for _, p in _checkpoints(root) if (p / "state.json").is_file()]
    for path in complete[: max(len(complete) - max(keep, 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of `run_dir` (one with a state.json), or None."""
    complete = [p for _, p in _checkpoints(Path(run_dir) / "checkpoints") if (p / "state.json").is_file()]
    return complete[-1] if complete else None


def load_checkpoint(path: str | Path, model, optimizer=None, scheduler=None,
                    companions: dict[str, tuple] | None = None) -> tuple[int, dict, dict]:
    """Load weights (+ optimizer and scheduler when given, + `companions` as saved) in place →
    (step, rng_state, extra).

    The RNG state is returned, not applied: call `restore_rng` when the caller is ready.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint directory not found")
    state = _read_json(path / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise UserError(f"{path / 'state.json'}: malformed (expected an object with an integer 'step')")
    if not isinstance(state.get("extra", {}), dict):
        raise UserError(f"{path / 'state.json'}: malformed ('extra' must be an object)")
    if state.get("format", 1) >= 2:
        verify_checksums(path)
    _load_weights(path, model)
    if optimizer is not None:
        load_optimizer(path, model, optimizer, scheduler)
    for name, (other, other_optimizer, other_scheduler) in (companions or {}).items():
        if not (path / name).is_dir():
            raise UserError(f"{path / name}: missing (the run trains a {name}; was this checkpoint made by another algorithm?)")
        _load_weights(path / name, other)
        load_optimizer(path / name, other, other_optimizer, other_scheduler)
    rng_plain = _read_json(path / "rng.json")
    try:
        rng = _join_rng(_read_safetensors(path / "rng.safetensors"), rng_plain)
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path / 'rng.json'}: malformed RNG state ({exc.__class__.__name__}: {exc})") from None
    return state["step"], rng, dict(state.get("extra") or {})


# ------------------------------------------------------------------------------- integrity
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(directory: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `directory` (checksums.json and state.json excluded)."""
    files = [p for p in sorted(directory.rglob("*")) if p.is_file()]
    return {str(p.relative_to(directory)): _sha256(p) for p in files
            if str(p.relative_to(directory)) not in ("checksums.json", "state.json")}


def verify_checksums(path: Path) -> None:
    """Every file listed in `path/checksums.json` exists and has its recorded SHA-256."""
    expected = _read_json(path / "checksums.json")
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        raise UserError(f"{path / 'checksums.json'}: malformed (expected an object of file: sha256)")
    for name, digest in expected.items():
        file = path / name
        if not file.is_file():
            raise UserError(f"{file}: missing (listed in checksums.json)")
        if _sha256(file) != digest:
            raise UserError(f"{file}: corrupt (SHA-256 differs from checksums.json); an older checkpoint, "
                            f"if any, is in {path.parent}: remove this one to resume from it")


def check_finite(model, optimizer=None) -> None:
    """Raise if a parameter or an optimizer state tensor holds NaN / inf: such state is never saved."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteState(f"refusing to save: weight '{name}' is not finite")
    for state in (optimizer.state.values() if optimizer is not None else ()):
        for key, tensor in state.items():
            if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise NonFiniteState(f"refusing to save: optimizer state '{key}' is not finite")


class NonFiniteState(RuntimeError):
    """A model about to be saved or exported holds NaN / inf (our bug: the step guard should prevent it)."""


def _load_weights(path: Path, model) -> None:
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: missing")
    try:
        weights_state = stack_projections(read_state_dict(path), model.config)
        if model.config.tie_word_embeddings:
            weights_state.pop("lm_head.weight", None)
        model.load_state_dict(weights_state, strict=True)
    except (RuntimeError, UserError) as exc:
        raise UserError(f"{weights}: does not fit the model ({str(exc).splitlines()[0]})") from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read safetensors file ({str(exc).splitlines()[0]})") from None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_checkpoint_info(path: Path) -> tuple[dict, dict]:
    """(the config mapping it was made with, its `extra`) — read before any model is built."""
    state = _read_json(path / "state.json")
    if not isinstance(state, dict) or not isinstance(state.get("extra", {}), dict):
        raise UserError(f"{path / 'state.json'}: malformed (expected an object with an 'extra' object)")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path / 'config.yaml'}: cannot read the checkpoint's config ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or not isinstance(config.get("train"), dict) or "steps" not in config["train"]:
        raise UserError(f"{path / 'config.yaml'}: malformed (expected the run's config sections)")
    return config, dict(state.get("extra") or {})
