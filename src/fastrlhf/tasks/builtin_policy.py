"""The built-in starting policy of the arithmetic task: a tiny SFT-trained model shipped in the package.

`builtin_policy_dir()` is an HF model directory (config.json, model.safetensors, tokenizer files)
that both `fastrlhf.model.hf_io.load_model` and `transformers.AutoModelForCausalLM` load. It is
made by `python scripts/make_builtin_policy.py` (fixed seed; the recipe and its measured numbers
are in that script's docstring and docs/LOG.md) with our own `train/sft.py`, and is deliberately
*flawed but learnable*: its demonstrations came from a careless annotator who drops every carry in
75% of carry problems (`arithmetic.sft_demonstrations(carry_drop=0.75)`), so the policy imitates
that — greedy held-out accuracy in `EXPECTED_GREEDY_ACCURACY`, nearly every greedy error a dropped
carry — while sampling at temperature 1 often does carry, so the exact-match reward has signal and
RL has a systematic flaw to unlearn.

`worked_policy_dir()` is the same for the worked_addition task: the same tokenizer and model size
(max_position_embeddings 128), made by `python scripts/make_worked_policy.py` from
`worked_addition.sft_demonstrations(carry_drop=0.75)`, whose careless annotator does the column
working without carrying. Greedy held-out accuracy in `WORKED_EXPECTED_GREEDY_ACCURACY` (nearly all
carry problems answered carry-free), traces almost always well-formed, and samples at temperature 1
carry often enough (pass@8 ≈ 0.8) for RL to fix it.

Left out: training on first use (the shipped file is small and avoids minutes of start-up).
"""

from __future__ import annotations

from pathlib import Path

from fastrlhf.errors import UserError

POLICY_DIR = Path(__file__).parent / "builtin_policy_model"  # a dir named like this module would confuse readers
EXPECTED_GREEDY_ACCURACY = (0.25, 0.50)  # on eval_rows(100) of BUILTIN_DIGITS, greedy decoding
BUILTIN_DIGITS = (1, 2, 3)  # operand sizes the policy was trained on (= the task default)

WORKED_POLICY_DIR = Path(__file__).parent / "worked_policy_model"
WORKED_EXPECTED_GREEDY_ACCURACY = (0.20, 0.45)  # on worked_addition.eval_rows(200), greedy; measured 0.31


def builtin_policy_dir() -> Path:
    """The arithmetic task's shipped model directory; a `UserError` naming it if the package data is missing."""
    return _checked(POLICY_DIR, "scripts/make_builtin_policy.py")


def worked_policy_dir() -> Path:
    """The worked_addition task's shipped model directory (`UserError` if the package data is missing)."""
    return _checked(WORKED_POLICY_DIR, "scripts/make_worked_policy.py")


def _checked(directory: Path, script: str) -> Path:
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / name).is_file():
            raise UserError(f"{directory / name}: missing (the built-in policy is package data; "
                            f"reinstall fastrlhf or run {script})")
    return directory
