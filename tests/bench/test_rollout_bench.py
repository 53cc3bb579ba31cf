"""`fastrlhf bench rollout --model DIR --dtype ...`: bad directories are one line (exit 2); a tiny run on
the built-in policy prints the table (timings are not checked)."""

import pytest

from fastrlhf import cli
from fastrlhf.tasks.builtin_policy import builtin_policy_dir


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastrlhf: error: ")
    return err


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "config.json: missing"),
    (lambda p: (p / "config.json").write_text("{}") and p, "model_type"),
])
def test_bad_model_dir_is_one_line_exit_2(tmp_path, capsys, make, message):
    model = make(tmp_path)
    assert cli.main(["bench", "rollout", "--model", str(model), "--batch-sizes", "1", "--repeats", "1"]) == 2
    assert message in _one_line_error(capsys)


def test_too_many_new_tokens_for_the_model_context_is_one_line(capsys):
    assert cli.main(["bench", "rollout", "--model", str(builtin_policy_dir())]) == 2  # 47 + 128 > 64 positions
    assert "max_position_embeddings 64; pass --new-tokens 17 or fewer" in _one_line_error(capsys)


def test_model_and_speculative_do_not_mix(capsys):
    assert cli.main(["bench", "rollout", "--speculative", "--dtype", "bf16"]) == 2
    assert "--speculative" in _one_line_error(capsys)


def test_tiny_run_on_the_builtin_policy_prints_a_table(capsys, single_thread):
    argv = ["bench", "rollout", "--model", str(builtin_policy_dir()), "--batch-sizes", "2", "--new-tokens", "4",
            "--repeats", "1", "--threads", "1"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| batch | torch.compile (ours) | ours tok/s | transformers tok/s | ratio | compile time |" in out
    assert "\n| 2 | off |" in out
    assert "`builtin_policy_model` (llama, hidden 128" in out and "fp32 on both sides" in out


def test_model_runs_write_their_own_section():
    from fastrlhf.bench.cli import SECTION
    from fastrlhf.bench.rollout import BenchSpec, section_heading

    assert section_heading(BenchSpec(), {}) == SECTION
    heading = section_heading(BenchSpec(model_dir=str(builtin_policy_dir()), dtype="bf16"), {})
    assert heading == "## Rollout on `builtin_policy_model` (bf16): our engine vs transformers generate"
    assert SECTION not in heading  # write_section finds headings by substring: the default table stays apart
