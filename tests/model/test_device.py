"""`--device auto|cpu|cuda`: auto picks CUDA when available; asking for a missing CUDA is one line."""

import pytest
import torch

from fastrlhf.errors import UserError
from fastrlhf.model.device import resolve_device


def test_auto_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_and_unknown_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^train\.device cuda, but no CUDA device is available .*use train\.device cpu"):
        resolve_device("cuda", option="train.device")
    with pytest.raises(UserError, match="--device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")
