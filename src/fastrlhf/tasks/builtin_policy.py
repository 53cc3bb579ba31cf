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

Left out: training on first use (the shipped file is small and avoids minutes of start-up).
"""

from __future__ import annotations

from pathlib import Path

from fastrlhf.errors import UserError

POLICY_DIR = Path(__file__).parent / "builtin_policy_model"  # a dir named like this module would confuse readers
EXPECTED_GREEDY_ACCURACY = (0.25, 0.50)  # on eval_rows(100) of BUILTIN_DIGITS, greedy decoding
BUILTIN_DIGITS = (1, 2, 3)  # operand sizes the policy was trained on (= the task default)


def builtin_policy_dir() -> Path:
    """The shipped model directory; a `UserError` naming it if the package data is missing."""
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (POLICY_DIR / name).is_file():
            raise UserError(f"{POLICY_DIR / name}: missing (the built-in policy is package data; "
                            "reinstall fastrlhf or run scripts/make_builtin_policy.py)")
    return POLICY_DIR
