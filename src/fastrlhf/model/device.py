"""Which torch device a command runs on: `auto` (CUDA when available, else CPU), `cpu` or `cuda`.

`resolve_device(name, option)` is shared by every command that takes a device (`fastrlhf sft`,
`train-rm`, `eval` with `--device`; `train.device` for `fastrlhf train`): asking for CUDA on a
machine without it is a one-line `UserError` naming the option, raised before any work is done.
"""

from __future__ import annotations

import torch

from fastrlhf.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """`name` (auto | cpu | cuda) as a `torch.device`; `option` names the setting in error messages."""
    if name not in DEVICE_CHOICES:
        raise UserError(f"{option} must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = "this torch is a CPU-only build" if torch.version.cuda is None else f"torch {torch.__version__} finds no GPU"
        raise UserError(f"{option} cuda, but no CUDA device is available ({build}); use {option} cpu or auto")
    return torch.device(name)
