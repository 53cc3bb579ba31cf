"""Fuzz: damaged checkpoint directories on `--resume`.

A real checkpoint (a 1-step PPO run: policy, optimizer, RNG, critic) is damaged by hypothesis — a file
deleted, truncated, a byte flipped, replaced by random bytes, a JSON file replaced by random JSON —
and read through the resume path (`read_checkpoint_info`, `load_checkpoint`, `restore_rng`).
Property: it loads, or it fails with a one-line `UserError`; never another exception, and nothing
in the directory is written. Two modes: with checksums (format 2: every damaged data file must be
refused) and without (format 1, so the damage reaches the JSON / safetensors / RNG parsers).
"""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrlhf.config import config_from_dict, load_config
from fastrlhf.errors import UserError
from fastrlhf.train import loop
from fastrlhf.train.checkpoint import load_checkpoint, read_checkpoint_info, restore_rng
from fastrlhf.train.state import TrainingState

EXAMPLES = 150  # per mode

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                           | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
                           max_leaves=12)


@pytest.fixture(scope="module")
def checkpoint(tiny_policy, digit_reward, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz") / "r"
    config = load_config(None, [f"model.path={tiny_policy}", f"train.run_dir={run_dir}", "train.steps=1",
                                "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3",
                                "task.eval_size=2", "algorithm.name=ppo", f"task.reward={digit_reward}"])
    loop.train(config, show_progress=False)
    return run_dir / "checkpoints" / "step_000001", config


def damage(path: Path, data) -> str:
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    target = path / data.draw(st.sampled_from(files), label="file")
    kind = data.draw(st.sampled_from(["delete", "truncate", "flip", "random bytes", "json"]), label="damage")
    raw = target.read_bytes()
    if kind == "delete":
        target.unlink()
    elif kind == "truncate":
        target.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif kind == "flip" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        target.write_bytes(raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1:])
    elif kind == "random bytes":
        target.write_bytes(data.draw(st.binary(max_size=64)))
    else:
        target.write_text(json.dumps(data.draw(json_values)))
    return f"{kind} {target.name}"


def resume_path(path: Path, config):
    """What `--resume` does with a checkpoint before training: info, weights + optimizers, RNG."""
    saved, _ = read_checkpoint_info(path)
    config_from_dict(saved, str(path / "config.yaml"))
    state = object.__new__(TrainingState)  # the models, optimizers and companions of the run, as a run builds them
    state.__dict__.update(_models(config))
    step, rng, extra = load_checkpoint(path, state.model, state.optimizer, state.scheduler, companions=state.companions())
    restore_rng(rng, str(path / "rng.json"))


_BUILT = {}


def _models(config):
    if "run" not in _BUILT:
        fresh = config_from_dict({**config.to_dict(), "train": {**config.to_dict()["train"],
                                                                  "run_dir": str(Path(config.train.run_dir) / "x")}})
        built = loop.Run(fresh, resume=False, show_progress=False)
        _BUILT["run"] = {k: getattr(built.trainer, k) for k in ("model", "optimizer", "scheduler", "critic", "speculation")}
    return _BUILT["run"]


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("with_checksums", [True, False], ids=["format 2", "format 1"])
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_checkpoint_loads_or_is_one_clean_line(checkpoint, tmp_path, with_checksums, data):
    source, config = checkpoint
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "ck"
    try:
        shutil.copytree(source, path)
        check_one(path, config, with_checksums, data)
    finally:
        shutil.rmtree(path.parent)


def check_one(path: Path, config, with_checksums: bool, data) -> None:
    if not with_checksums:
        (path / "checksums.json").unlink()
        state = json.loads((path / "state.json").read_text())
        (path / "state.json").write_text(json.dumps({**state, "format": 1}))
    original = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    what = damage(path, data)
    changed = any(not p.is_file() or p.read_bytes() != raw for p, raw in original.items())
    before = listing(path)
    try:
        resume_path(path, config)
        loaded = True
    except UserError as exc:
        loaded = False
        assert "\n" not in str(exc) and str(exc), (what, str(exc))
    assert listing(path) == before, what  # nothing written
    if with_checksums and changed and not what.endswith(("checksums.json", "state.json")):
        assert not loaded, what  # every file listed in checksums.json is verified
