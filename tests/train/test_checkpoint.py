import json

import numpy as np
import pytest
import random
import torch

from fastrlhf.errors import UserError
from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.train import checkpoint as ckpt
from fastrlhf.train.checkpoint import capture_rng, latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
from fastrlhf.train.optim import build_optimizer, build_scheduler

CFG = ModelConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2, num_kv_heads=1,
                  head_dim=8, max_position_embeddings=32)


pytestmark = pytest.mark.usefixtures("single_thread")


def fresh(seed: int = 0):
    torch.manual_seed(seed)
    model = CausalLM(CFG)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=8, decay="cosine")
    return model, opt, sched


def train_steps(model, opt, sched, n: int) -> None:
    """n AdamW steps; the data comes from the global torch RNG, so resume must restore it too."""
    for _ in range(n):
        ids = torch.randint(0, CFG.vocab_size, (3, 7))
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, CFG.vocab_size), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()


def test_resume_is_bit_identical(tmp_path):
    torch.manual_seed(123)
    model, opt, sched = fresh()
    train_steps(model, opt, sched, 3)
    save_checkpoint(tmp_path, 3, model, opt, sched, capture_rng(), {"data_position": 48}, "seed: 0\n")
    train_steps(model, opt, sched, 4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(999)  # scramble everything the checkpoint must restore
    model2, opt2, sched2 = fresh(seed=7)
    step, rng, extra = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2, sched2)
    restore_rng(rng)
    assert (step, extra) == (3, {"data_position": 48})
    assert sched2.last_epoch == 3
    train_steps(model2, opt2, sched2, 4)
    for name, value in model2.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_rng_round_trip(tmp_path):
    model, opt, sched = fresh()
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {}, "")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    _, rng, _ = load_checkpoint(tmp_path / "checkpoints" / "step_000001", model)
    restore_rng(rng)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_files_and_keep_last_k(tmp_path):
    model, opt, sched = fresh()
    train_steps(model, opt, sched, 1)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, sched, capture_rng(), {"s": step}, "a: 1\n", keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_000002", "step_000003"]
    path = latest_checkpoint(tmp_path)
    assert path.name == "step_000003"
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
            "rng.json", "state.json", "config.yaml"} <= files
    assert not list(path.glob("*.pt")) and not list(path.glob("*.bin"))
    assert json.loads((path / "state.json").read_text())["extra"] == {"s": 3}
    assert latest_checkpoint(tmp_path / "nowhere") is None


def test_checkpoint_is_an_hf_directory(tmp_path):
    from transformers import AutoModelForCausalLM

    model, opt, sched = fresh()
    path = save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {}, "")
    hf = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, CFG.vocab_size, (2, 5))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-5)


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = fresh()
    train_steps(model, opt, sched, 1)
    save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {"s": 1}, "")
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_000001").iterdir()}
    train_steps(model, opt, sched, 1)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed midway")

    monkeypatch.setattr(ckpt, "_split_rng", boom)  # after weights + optimizer are written
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, opt, sched, capture_rng(), {"s": 2}, "")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000001"]
    assert latest_checkpoint(tmp_path).name == "step_000001"
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_000001").iterdir()} == before


def test_incomplete_dir_is_ignored_and_cleaned(tmp_path):
    model, opt, sched = fresh()
    save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {}, "")
    (tmp_path / "checkpoints" / "step_000005").mkdir()  # no state.json: not a checkpoint
    (tmp_path / "checkpoints" / ".step_000004.tmpxyz").mkdir()  # a crashed save's leftovers
    assert latest_checkpoint(tmp_path).name == "step_000001"
    save_checkpoint(tmp_path, 2, model, opt, sched, capture_rng(), {}, "")
    assert not (tmp_path / "checkpoints" / ".step_000004.tmpxyz").exists()


@pytest.mark.parametrize("damage, named", [
    (lambda p: (p / "state.json").unlink(), "state.json"),
    (lambda p: (p / "optimizer.json").write_text("{not json"), "optimizer.json"),
    (lambda p: (p / "optimizer.safetensors").write_bytes(b"garbage"), "optimizer.safetensors"),
    (lambda p: (p / "rng.safetensors").unlink(), "rng.safetensors"),
    (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 10), "model.safetensors"),
])
def test_damaged_checkpoint_is_a_one_line_user_error(tmp_path, damage, named):
    model, opt, sched = fresh()
    train_steps(model, opt, sched, 1)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {}, "")
    damage(path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path, *fresh())
    message = str(info.value)
    assert named in message and "\n" not in message


def test_checkpoint_of_other_model_is_a_user_error(tmp_path):
    model, opt, sched = fresh()
    path = save_checkpoint(tmp_path, 1, model, opt, sched, capture_rng(), {}, "")
    other = CausalLM(CFG.replace(hidden_size=32, head_dim=16))
    with pytest.raises(UserError, match="model.safetensors"):
        load_checkpoint(path, other)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing", model)
