"""Config tree: defaults, YAML + overrides, one-line errors naming the key and source."""

import textwrap

import pytest

from fastrlhf.config import (
    Config,
    all_keys,
    config_from_dict,
    describe,
    load_config,
    save_config,
)
from fastrlhf.errors import UserError


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path=None, overrides=()):
    with pytest.raises(UserError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_the_embedded_job():
    config = load_config()
    assert config == Config()
    assert config.model.path == "builtin"
    assert config.task.name == "arithmetic" and config.task.prompts is None
    assert config.algorithm.name == "grpo" and config.rollout.samples_per_prompt >= 2
    assert config.train.device == "auto"


def test_yaml_then_overrides_in_order(tmp_path):
    path = write(tmp_path, """
        rollout:
          temperature: 0.5
          top_k: 4
        train:
          lr: 1e-4          # PyYAML reads this as a string; accepted for a float field
          run_dir: out/run
    """)
    config = load_config(path, ["rollout.temperature=2", "task.digits=[2, 3]", "train.seed=7"])
    assert config.rollout.temperature == 2.0 and isinstance(config.rollout.temperature, float)
    assert config.rollout.top_k == 4
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.run_dir == "out/run"
    assert config.task.digits == [2, 3]
    assert config.train.seed == 7
    assert config.rollout.max_new_tokens == Config().rollout.max_new_tokens  # untouched default


def test_override_values_are_yaml_scalars_but_str_fields_keep_text():
    config = load_config(None, ["rollout.compile=true", "train.run_dir=2024",
                                "task.prompts=data/p.jsonl", "task.prompts=null"])
    assert config.rollout.compile is True
    assert config.train.run_dir == "2024"
    assert config.task.prompts is None


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "rollout:\n  temprature: 0.7\n")
    assert error_of(path) == (f"{path}: unknown key 'rollout.temprature' "
                              "(did you mean 'rollout.temperature'?)")


def test_unknown_key_suggests_the_section_that_has_it():
    message = error_of(overrides=["train.temperature=0.7"])
    assert message == ("command line: unknown key 'train.temperature' "
                       "(did you mean 'rollout.temperature'?)")


@pytest.mark.parametrize("key, suggested", [
    ("model.seed", "train.seed"),            # spelled right, wrong section: not 'model.path'
    ("rollout.kl_coef", "algorithm.kl_coef"),
    ("train.stepz", "train.steps"),          # otherwise the closest spelling
])
def test_suggestion_prefers_the_same_key_in_another_section(key, suggested):
    assert error_of(overrides=[f"{key}=1"]).endswith(f"(did you mean '{suggested}'?)")


def test_unknown_key_without_close_match_has_no_suggestion():
    assert error_of(overrides=["train.zzzzqqq=1"]) == "command line: unknown key 'train.zzzzqqq'"


def test_unknown_section_with_suggestion(tmp_path):
    path = write(tmp_path, "rolout:\n  top_k: 3\n")
    assert error_of(path) == f"{path}: unknown section 'rolout' (did you mean 'rollout'?)"


@pytest.mark.parametrize("override, expected", [
    ("rollout.top_k=1.5", "'rollout.top_k' must be an integer, got 1.5"),
    ("rollout.top_k=true", "'rollout.top_k' must be an integer, got True"),
    ("rollout.compile=maybe", "'rollout.compile' must be true or false, got 'maybe'"),
    ("train.lr=fast", "'train.lr' must be a number, got 'fast'"),
    ("train.lr=.nan", "'train.lr' must be a finite number"),
    ("train.lr=true", "'train.lr' must be a number, got True"),
    ("rollout.top_p=0", "'rollout.top_p' must be in (0, 1], got 0.0"),
    ("train.lr=0", "'train.lr' must be > 0.0, got 0.0"),
    ("rollout.top_p=1.5", "'rollout.top_p' must be in (0, 1], got 1.5"),
    ("rollout.temperature=-1", "'rollout.temperature' must be >= 0.0, got -1.0"),
    ("train.device=tpu", "'train.device' must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
    ("algorithm.loss_aggregation=tokens", "'algorithm.loss_aggregation' must be one of"),
    ("task.name=gsm8k", "'task.name' must be a built-in task ('arithmetic', 'preference', 'worked_addition'), got 'gsm8k'"),
    ("task.digits=3", "'task.digits' must be a list, got 3"),
    ("task.digits=[1, x]", "'task.digits[1]' must be an integer, got 'x'"),
    ("task.digits=[]", "'task.digits' must be a non-empty list"),
    ("model.path=", "'model.path' must not be empty"),
    ("rollout=3", "'rollout' is a section; set one of its keys"),
    ("rollout.top_k", "override 'rollout.top_k' must look like section.key=value"),
])
def test_bad_override_values(override, expected):
    message = error_of(overrides=[override])
    assert message.startswith("command line: ")
    assert expected in message


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path, "train:\n  steps: ten\n")
    assert error_of(path) == f"{path}: 'train.steps' must be an integer, got 'ten' (string)"


def test_group_size_one_is_rejected_for_grpo():
    assert "'rollout.samples_per_prompt' must be >= 2 for grpo" in error_of(
        overrides=["rollout.samples_per_prompt=1"])


@pytest.mark.parametrize("text, expected", [
    ("train:\n  steps: [1\n", "invalid YAML at line"),
    ("- a\n- b\n", "the top level must be a mapping of sections, got list"),
    ("train: 5\n", "section 'train' must be a mapping of keys, got int"),
])
def test_yaml_file_errors(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_empty_file_and_empty_section_give_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "rollout:\n", "b.yaml")) == Config()


def test_snapshot_round_trip(tmp_path):
    config = load_config(None, ["rollout.temperature=0.7", "task.digits=[2]",
                                "task.prompts=p.jsonl", "algorithm.normalize_std=false"])
    path = tmp_path / "run" / "config.yaml"
    save_config(config, path)
    assert load_config(path) == config
    assert config_from_dict(config.to_dict()) == config
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temp left
    assert set(config.to_dict()) == {"model", "task", "rollout", "algorithm", "train", "runtime"}


def test_every_key_is_described_with_help():
    keys = all_keys()
    assert "rollout.temperature" in keys and len(keys) == len(set(keys))
    assert [key for key, _, _ in describe()] == keys
    assert all(help_text for _, _, help_text in describe())


def test_off_is_a_choice_not_a_boolean(tmp_path):
    """YAML reads `off` as False; for a field whose choices include 'off' it means the choice."""
    assert load_config(None, ["rollout.speculative=off"]).rollout.speculative == "off"
    assert load_config(write(tmp_path, "rollout:\n  speculative: off\n")).rollout.speculative == "off"
    with pytest.raises(UserError, match="'train.device' must be one of"):
        load_config(None, ["train.device=off"])


def test_train_help_lists_every_key(capsys):
    from fastrlhf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {key} = " in out for key in all_keys())


def test_actor_freeze_is_for_ppo_only():
    assert load_config(None, ["algorithm.name=ppo", "algorithm.freeze_actor_steps=5"]).algorithm.freeze_actor_steps == 5
    with pytest.raises(UserError, match="freeze_actor_steps"):
        load_config(None, ["algorithm.freeze_actor_steps=5"])


def test_zero_steps_is_rejected():
    """Used to be accepted (`train.steps` was checked >= 0): a run of 0 steps trains nothing."""
    assert "'train.steps' must be >= 1, got 0" in error_of(overrides=["train.steps=0"])
    assert load_config(None, ["train.steps=1"]).train.steps == 1


@pytest.mark.parametrize("override, expected", [
    ("train.lr=" + "9" * 400, "'train.lr' must be a finite number"),  # was OverflowError: int too large for a float
    ("train.seed=" + "1" * 5000, "'train.seed': cannot parse value"),  # was ValueError: > 4300 digits
    ("task.digits=[19]", "'task.digits' must be a non-empty list of ints in 1..18"),  # was accepted, failed at run time
    ("tr\nain.steps=1", r"unknown key 'tr\nain.steps'"),  # the message used to hold the newline
])
def test_fuzz_found_override_defects(override, expected):
    assert expected in error_of(overrides=[override])


def test_fuzz_found_yaml_file_defects(tmp_path):
    deep = write(tmp_path, "[" * 3000, name="deep.yaml")  # was RecursionError
    assert error_of(deep).startswith(f"{deep}: ")
    huge = write(tmp_path, "train:\n  seed: " + "7" * 5000 + "\n", name="huge.yaml")  # was ValueError
    assert error_of(huge).startswith(f"{huge}: cannot read config file")
    odd = write(tmp_path, '"tr\\nain":\n  steps: 3\n', name="odd.yaml")
    assert r"unknown section 'tr\nain'" in error_of(odd)


@pytest.mark.parametrize("overrides, expected", [
    (["runtime.max_staleness=1", "train.off_policy_steps=2"], "set one of them"),
    (["runtime.max_staleness=1", "algorithm.name=dpo", "task.name=preference"], "offline dpo generates none"),
    (["train.off_policy_steps=2", "rollout.speculative=draft"], "speculative=ngram or off"),
    (["runtime.max_staleness=-1"], "'runtime.max_staleness'"),
    (["train.off_policy_steps=0"], "'train.off_policy_steps'"),
])
def test_rollouts_ahead_refuse_what_they_cannot_run(overrides, expected):
    with pytest.raises(UserError, match=expected):
        load_config(None, overrides)


def test_staleness_cannot_change_on_resume():
    from fastrlhf.train.resume import check_resume_changes

    with pytest.raises(UserError, match="runtime.max_staleness"):
        check_resume_changes(load_config(None, []), load_config(None, ["runtime.max_staleness=1"]), 300)
