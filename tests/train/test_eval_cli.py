"""`fastrlhf eval --task preference`: gold reward and KL to the reference, on one line."""

import re

from fastrlhf.cli import main
from fastrlhf.tasks import preference


def test_eval_preference_reports_gold_reward_and_kl(capsys):
    code = main(["eval", str(preference.policy_dir()), "--task", "preference", "--eval-size", "16"])
    out = capsys.readouterr().out
    assert code == 0
    gold = float(re.search(r"gold reward (-?[0-9.]+)", out).group(1))
    kl = float(re.search(r"KL to reference (-?[0-9.]+)", out).group(1))
    assert 0.5 < gold < 2.0  # the SFT policy: far from the optimum 2.0, far above a random string
    assert kl == 0.0  # the policy measured against itself


def test_eval_rejects_a_bad_eval_size(capsys):
    assert main(["eval", str(preference.policy_dir()), "--task", "preference", "--eval-size", "0"]) == 2
    assert "--eval-size" in capsys.readouterr().err


def _eval_args(device, task="preference"):
    """`fastrlhf eval POLICY --task preference --eval-size 4` as parsed, with `device` (what `--device` sets)."""
    from fastrlhf.cli import build_parser

    args = build_parser().parse_args(["eval", str(preference.policy_dir()), "--task", task, "--eval-size", "4"])
    args.device = device
    return args


def test_eval_on_the_cpu(capsys):
    from fastrlhf.train.cli import run_eval

    assert run_eval(_eval_args("cpu")) == 0
    assert "gold reward" in capsys.readouterr().out


def test_eval_device_cuda_without_cuda_is_a_one_line_error(monkeypatch):
    """Before: `run_eval` loaded every model on the CPU whatever the machine had."""
    import pytest
    import torch

    from fastrlhf.errors import UserError
    from fastrlhf.train.cli import run_eval

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^--device cuda, but no CUDA device is available") as info:
        run_eval(_eval_args("cuda", task="arithmetic"))
    assert "\n" not in str(info.value)


def test_eval_device_auto_puts_every_model_on_cuda_when_available(monkeypatch, capsys):
    """The policy, the reference and the learned reward model are all moved to the chosen device."""
    import torch

    from fastrlhf.model.decoder import CausalLM
    from fastrlhf.train.cli import run_eval

    moves = []

    def record_move(self, *args, **kwargs):  # stays on the CPU: this machine may have no GPU
        moves.append(str(args[0] if args else kwargs.get("device")))
        return self
    monkeypatch.setattr(CausalLM, "to", record_move)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_eval(_eval_args("auto")) == 0
    assert moves == ["cuda", "cuda", "cuda"]  # policy, reference, reward model
