"""The typed config tree of a training run, loaded from YAML plus `a.b=c` overrides.

`Config` has six sections — `model`, `task`, `rollout`, `algorithm`, `train`, `runtime` — each a dataclass
whose fields carry a help text and an optional range check in their metadata. `Config()` is the
embedded default job: a tiny model on the built-in arithmetic task, sized for a 2-core CPU.

Loading (`load_config(path, overrides)`): defaults, then the YAML file, then each override
string `section.key=value` (the value is parsed as a YAML scalar). Every value is checked against
its field's type (bool / int / float / str / Literal choices / optional / list[int]) and range
as it is set, so the first problem is reported as one line naming where it came from and the
key, e.g. `config.yaml: unknown key 'rollout.temprature' (did you mean 'rollout.temperature'?)`.
All problems are `fastrlhf.errors.UserError` (the CLI prints them and exits with code 2).

Task-dependent defaults: `rollout.max_new_tokens` left unset (None) takes `task.name`'s default
(`tasks.task_max_new_tokens`: 96 for worked_addition, else 8; also when `task.prompts` is set) once the file and overrides are applied
(and when a `Config` is constructed), so a loaded config and its snapshot hold the value in effect;
`--help` shows it as None. `task.digits` stays None, read by the task as "its default sizes".

Deliberately accepted: an int where a float is expected; a string such as "1e-4" for a float field
(PyYAML reads `1e-4` without a dot as a string). For str fields an override keeps the raw text, so
`train.run_dir=2024` is the directory "2024". Relative paths are relative to the working directory.
Left out: environment-variable interpolation, config includes / inheritance, per-model sections
(ref / reward / critic) — add them when PPO and the runtime need them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from fastrlhf.config_values import (at_least, convert, greater_than, in_unit_interval, non_empty, option,
                                    digit_counts, type_name)
from fastrlhf.errors import UserError
from fastrlhf.files import atomic_path
from fastrlhf.tasks import BUILTIN_TASKS, task_max_new_tokens


def builtin_task(value: str) -> str | None:
    names = ", ".join(repr(name) for name in BUILTIN_TASKS)
    return None if value in BUILTIN_TASKS else f"must be a built-in task ({names})"


# ---------------------------------------------------------------------------- the sections
@dataclass
class ModelSection:
    path: str = option("builtin", "HF model directory, or 'builtin' for the task's tiny SFT model",
                       non_empty)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto", "compute precision of every model (actor, reference, critic, reward model, draft): bf16 / fp16 "
                "compute with fp32 master weights and optimizer state for the trained ones; auto = bf16 on a CUDA "
                "GPU with bf16, or on a CPU whose bf16 matmul is measured faster than fp32; else fp32 (exact "
                "rollout = trainer log-probs)")


@dataclass
class TaskSection:
    name: str = option("arithmetic", "built-in task: arithmetic | preference | worked_addition (used when `prompts` "
                                     "is not set)",
                       builtin_task)
    prompts: str | None = option(None, "JSONL prompts file: {\"prompt\": ..., other reward fields}",
                                 non_empty)
    reward: str | None = option(None, "reward: 'module:function', 'file.py:function', a reward-model "
                                      "directory, or an http(s):// reward server; default: the task's",
                                non_empty)
    preferences: str | None = option(None, "JSONL preference pairs {\"prompt\", \"chosen\", \"rejected\"} "
                                           "(offline DPO); default: the preference task's pairs", non_empty)
    digits: list[int] | None = option(None, "operand sizes (digits) of the built-in arithmetic / worked_addition "
                                            "task, drawn uniformly; unset: the task's default ([1, 2, 3] for "
                                            "arithmetic, long-tailed 1..8 for worked_addition)", digit_counts)
    train_size: int | None = option(None, "built-in tasks: train on only the first N training prompts, in seeded "
                                          "epochs (a finite dataset: prompts come back every N / "
                                          "train.prompts_per_step steps); unset: an endless stream of fresh prompts",
                                    at_least(1))
    eval_size: int = option(200, "held-out prompts used for evaluation", at_least(1))
    reward_batch_size: int = option(64, "completions per request to an HTTP reward server", at_least(1))
    reward_timeout: float = option(30.0, "seconds before an HTTP reward request is retried", greater_than(0.0))
    reward_retries: int = option(3, "retries of a failed HTTP reward request before the run stops", at_least(0))


@dataclass
class RolloutSection:
    samples_per_prompt: int = option(8, "completions sampled per prompt (the GRPO group size)",
                                     at_least(1))
    temperature: float = option(1.0, "sampling temperature (0 = greedy)", at_least(0.0))
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)", in_unit_interval)
    top_k: int = option(0, "sample among the k most likely tokens (0 = off)", at_least(0))
    max_new_tokens: int | None = option(None, "longest completion, in tokens; unset: task.name's default, fixed when "
                                              "the config is loaded: 96 for worked_addition, 8 for arithmetic and "
                                              "preference (task.name counts also with task.prompts)", at_least(1))
    num_slots: int = option(128, "sequences decoded concurrently by the engine", at_least(1))
    compile: bool = option(False, "torch.compile the decode step (slow cold start)")
    speculative: Literal["off", "ngram", "draft", "adaptive"] = option(
        "off", "speculative decoding (lossless): 'ngram' drafts from the sequence and its sibling samples, "
               "'draft' from a small draft model cut from the actor, 'adaptive' picks between both each step")
    gamma: int = option(0, "draft tokens per verification pass (0 = chosen each step from measured cost and acceptance)",
                        at_least(0))
    draft_layers: int = option(0, "draft model: the actor's first N layers (0 = half the actor's, rounded up; "
                                  "must be fewer than the actor's)", at_least(0))
    draft_refresh_every: int = option(10, "distil the draft towards the current actor on the latest rollouts "
                                          "every N steps (0 = never: keep the initial truncated copy)", at_least(0))
    draft_epochs: int = option(1, "passes over the latest rollouts per draft refresh", at_least(1))
    draft_lr: float = option(1e-3, "draft distillation learning rate (AdamW, kept across refreshes)",
                             greater_than(0.0))


ALGORITHMS = ("grpo", "rloo", "reinforce_pp", "ppo", "online_dpo", "dpo")


@dataclass
class AlgorithmSection:
    name: Literal[ALGORITHMS] = option(
        "grpo", "grpo | rloo | reinforce_pp | ppo (with a critic) | online_dpo | dpo (offline, on task.preferences)")
    clip_low: float = option(0.2, "ratio clipped below at 1 - clip_low", at_least(0.0))
    clip_high: float = option(0.28, "ratio clipped above at 1 + clip_high (DAPO clip-higher)",
                              at_least(0.0))
    kl_coef: float = option(0.02, "weight of the KL penalty to the reference (0 = no ref; DPO: unused)",
                            at_least(0.0))
    kl_in: Literal["loss", "reward"] = option(
        "loss", "KL penalty as a k3 term in the loss, or as -kl_coef*(logp - ref) in the token rewards")
    normalize_std: bool = option(True, "divide group advantages by their std (false = Dr. GRPO)")
    loss_aggregation: Literal["token_mean", "sequence_mean"] = option(
        "token_mean", "average the loss over all tokens (DAPO), or per sequence then over sequences (GRPO)")
    gae_gamma: float = option(1.0, "PPO: discount of the GAE returns", in_unit_interval)
    gae_lambda: float = option(0.95, "PPO: GAE lambda", at_least(0.0))
    whiten_advantages: bool = option(True, "PPO: whiten advantages over the batch's response tokens")
    value_clip: float = option(0.2, "PPO: clip new values to old +- value_clip in the value loss (0 = off)",
                               at_least(0.0))
    critic_init: Literal["auto", "reward_model", "policy"] = option(
        "auto", "PPO critic starts from the reward model (when task.reward is one) or the policy + new head")
    critic_lr: float = option(1e-4, "PPO critic learning rate (AdamW)", greater_than(0.0))
    freeze_actor_steps: int = option(0, "first steps that train only the critic (PPO warm-up; the actor waits)",
                                     at_least(0))
    beta: float = option(0.1, "DPO: inverse temperature of the implicit reward", greater_than(0.0))
    dpo_loss: Literal["sigmoid", "ipo"] = option("sigmoid", "DPO loss: sigmoid (Rafailov 2023) or IPO (Azar 2023)")
    recompute_logprobs: Literal["auto", "always", "never"] = option(
        "auto", "pi_old of the clipped ratio from the trainer's own forward before the update (always), or the "
                "rollout engine's log-probs (never); auto = always unless model.dtype is fp32, where both are equal; with "
                "rollouts made ahead, always = the decoupled objective (proximal policy = the latest; docs/async.md)")
    tis_cap: float = option(2.0, "truncated importance sampling: weight each token's policy loss by "
                                 "min(pi_old / pi_rollout, tis_cap) when pi_old is recomputed (0 = off)", at_least(0.0))


@dataclass
class TrainSection:
    steps: int = option(300, "RL steps (one rollout batch + one update each)", at_least(1))
    prompts_per_step: int = option(16, "prompts per step (x samples_per_prompt sequences)",
                                   at_least(1))
    lr: float = option(3e-4, "peak learning rate (AdamW)", greater_than(0.0))
    warmup_steps: int = option(5, "linear LR warm-up steps", at_least(0))
    lr_decay: Literal["none", "linear", "cosine"] = option("cosine", "LR decay after warm-up")
    weight_decay: float = option(0.0, "AdamW weight decay", at_least(0.0))
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)", at_least(0.0))
    micro_batch_size: int = option(64, "sequences per forward/backward pass (scoring, the critic, and training "
                                       "when train.micro_batch_tokens is 0)", at_least(1))
    micro_batch_tokens: int = option(16384, "training token budget per forward/backward: sequences packed "
                                            "without padding, response-only chunked log-probs (0 = padded rows of "
                                            "train.micro_batch_size)", at_least(0))
    mini_batches: int = option(1, "optimizer steps per rollout batch (each on 1/mini_batches of it)",
                               at_least(1))
    off_policy_steps: int = option(1, "Async RLHF's 'N off-policy steps': generate N steps' rollouts with one "
                                      "policy, then take the N steps (1 = on-policy; docs/async.md)", at_least(1))
    seed: int = option(0, "one seed for data order, sampling and init", at_least(0))
    eval_every: int = option(50, "held-out evaluation every N steps (0 = only at start and end)",
                             at_least(0))
    checkpoint_every: int = option(100, "checkpoint every N steps (0 = only at the end)",
                                   at_least(0))
    run_dir: str = option("runs/default", "directory for checkpoints, metrics and the config",
                          non_empty)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto = CUDA when present, else CPU")
    atomic_steps: bool = option(True, "snapshot every trained model before its first update in a step, so a "
                                      "failed or non-finite step is undone exactly (costs ~3x the trained models' "
                                      "parameter bytes); false: a step that fails after an update stops the run, "
                                      "resumable from the last checkpoint")
    max_nonfinite_skips: int = option(3, "a step whose loss or gradient norm is NaN / inf is skipped (the models "
                                         "keep their pre-step state); this many skips in a row stop the run",
                                      at_least(1))
    hang_timeout: float = option(1800.0, "seconds without progress (a model call, a micro-batch) before every "
                                         "thread's stack is dumped to RUN_DIR/hang-*.txt and the run stops (0 = off)",
                                 at_least(0.0))


@dataclass
class RuntimeSection:
    backend: Literal["local", "ray"] = option("local", "local = every model call in this process; ray = rollout "
                                              "workers and trainer ranks as Ray actors (docs/runtime.md)")
    address: str | None = option(None, "ray: join this cluster ('auto' or host:port from `ray start --head`); "
                                       "unset = start a private local cluster for the run")
    rollout_workers: int = option(1, "ray: rollout engines (Ray actors) generating in parallel", at_least(1))
    trainer_workers: int = option(1, "ray: data-parallel trainer ranks (reference, reward and critic live on "
                                     "rank 0's actor)", at_least(1))
    rollout_cpus: int = option(1, "ray: CPUs (torch threads) per rollout worker", at_least(1))
    trainer_cpus: int = option(1, "ray: CPUs (torch threads) per trainer rank", at_least(1))
    rollout_gpus: float = option(0.0, "ray: GPUs per rollout worker (0 = CPU)", at_least(0.0))
    trainer_gpus: float = option(0.0, "ray: GPUs per trainer rank (0 = CPU)", at_least(0.0))
    balance: Literal["static", "tokens"] = option("tokens", "ray: prompts to rollout workers by equal count "
                                                  "(static) or by predicted response tokens (tokens)")
    migrate_threshold: float = option(0.0, "ray: migrate in-flight samples when the most loaded worker's "
                                           "predicted finish time exceeds (1 + this) x the mean (0 = never; "
                                           "docs/runtime.md: it halves idle time but did not cut step time on a CPU)",
                                      at_least(0.0))
    migrate_with: Literal["auto", "kv", "tokens"] = option(
        "auto", "ray: what a migrated sample carries — its KV cache, or its tokens for a re-prefill; auto = the "
                "cheaper by the cost model (KV bytes / measured bandwidth vs profiled prefill time)")
    round_seconds: float = option(0.05, "ray: engine time per rollout round (how often the pool rebalances "
                                        "and collects finished samples)", greater_than(0.0))
    scoring: Literal["trainer", "separate"] = option(
        "trainer", "ray: where the reference and reward run — on trainer rank 0 (colocated) or on their own "
                   "actor (runtime.scoring_cpus / scoring_gpus); the PPO critic stays with the trainer")
    scoring_cpus: int = option(1, "ray: CPUs of the separate scoring actor", at_least(1))
    scoring_gpus: float = option(0.0, "ray: GPUs of the separate scoring actor", at_least(0.0))
    stream_scoring: bool = option(True, "ray: score (reward, reference) each finished prompt group while the "
                                        "long tail still generates")
    sync_bucket_mb: int = option(64, "ray: weight-sync bucket size (MB)", at_least(1))
    max_restarts: int = option(3, "ray: restarts of a crashed rollout worker before the run stops", at_least(0))
    max_staleness: int = option(0, "asynchronous rollouts (Async RLHF): step j trains on samples generated with the "
                                   "weights of step j - K, generated while the trainer works (0 = synchronous; "
                                   "with backend=local the generator runs as one Ray actor; docs/async.md)",
                                at_least(0))


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    train: TrainSection = field(default_factory=TrainSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def __post_init__(self) -> None:
        resolve_task_defaults(self)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-ready) of every value, defaults included."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# ---------------------------------------------------------------------------- public API
def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file at `path` (if any), then `overrides`; validated; the task's
    defaults fill the keys left unset (`resolve_task_defaults`)."""
    config = _unresolved_config()
    if path is not None:
        update_from_dict(config, read_yaml(path), source=str(path))
    apply_overrides(config, overrides)
    resolve_task_defaults(config)
    check_consistency(config)
    return config


def config_from_dict(data: Mapping, source: str = "config") -> Config:
    """A validated `Config` from a nested mapping (e.g. `Config.to_dict()` output)."""
    config = _unresolved_config()
    update_from_dict(config, data, source)
    resolve_task_defaults(config)
    check_consistency(config)
    return config


def resolve_task_defaults(config: Config) -> None:
    """Fill the keys whose default depends on the task (`rollout.max_new_tokens`) when unset (None).

    Runs when a `Config` is built and after a config is loaded, so a loaded config (and its saved
    snapshot) always holds the value in effect."""
    if config.rollout.max_new_tokens is None:
        config.rollout.max_new_tokens = task_max_new_tokens(config.task.name)  # also with task.prompts: the
        # name still picks model.path=builtin, and a prompt file of worked_addition rows needs its length


def _unresolved_config() -> Config:
    """Defaults with the task-dependent keys still unset, for a file / overrides to fill first."""
    config = Config()
    config.rollout.max_new_tokens = None
    return config


def save_config(config: Config, path: str | Path) -> None:
    """Write `config` as YAML, atomically and with normal permissions (`files.atomic_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        temp.write_text(config.to_yaml(), encoding="utf-8")


def read_yaml(path: str | Path) -> dict:
    """The top-level mapping of a YAML file (an empty file is `{}`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read config file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: invalid YAML{_yaml_location(exc)}") from None
    except (ValueError, RecursionError) as exc:  # an int of > 4300 digits; nesting deeper than Python's stack
        raise UserError(f"{path}: cannot read config file ({_short(' '.join(str(exc).split()))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections, "
                        f"got {type_name(data)}")
    return data


def apply_overrides(config: Config, overrides: Sequence[str], source: str = "command line") -> None:
    """Apply `section.key=value` strings to `config` in place, in order."""
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"{source}: override '{_printable(text)}' must look like section.key=value")
        section, spec = _find_field(config, key, source)
        set_value(section, spec, key, _parse_scalar(raw, key, source), source)


def update_from_dict(config: Config, data: Mapping, source: str) -> None:
    """Set every `section: {key: value}` of `data` on `config`, checking each value."""
    for section_name, values in data.items():
        section_name = str(section_name)
        if section_name not in _section_names():
            raise UserError(f"{source}: unknown section '{_printable(section_name)}'"
                            f"{_suggestion(section_name, _section_names())}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{_printable(section_name)}' must be a mapping of keys, "
                            f"got {type_name(values)}")
        for field_name, value in values.items():
            key = f"{section_name}.{field_name}"
            section, spec = _find_field(config, key, source)
            set_value(section, spec, key, value, source)


def check_consistency(config: Config) -> None:
    """Checks that involve more than one key."""
    name, n = config.algorithm.name, config.rollout.samples_per_prompt
    if name in ("grpo", "rloo", "online_dpo") and n < 2:
        why = {"grpo": "group-normalised advantages", "rloo": "a leave-one-out baseline",
               "online_dpo": "a chosen and a rejected sample per prompt"}[name]
        raise UserError(f"config: 'rollout.samples_per_prompt' must be >= 2 for {name} ({why}), got {n}")
    if name == "dpo" and config.task.prompts and not config.task.preferences:
        raise UserError("config: algorithm.name=dpo trains on preference pairs: set task.preferences=PAIRS.jsonl")
    if config.algorithm.critic_init == "reward_model" and name != "ppo":
        raise UserError(f"config: 'algorithm.critic_init' only applies to ppo, not {name}")
    if config.runtime.backend == "ray" and config.rollout.speculative in ("draft", "adaptive"):
        raise UserError(f"config: rollout.speculative={config.rollout.speculative} needs the draft model's refresh "
                        f"beside the trainer; with runtime.backend=ray use speculative=ngram or off")
    if config.runtime.backend == "local" and (config.runtime.rollout_workers > 1 or config.runtime.trainer_workers > 1):
        raise UserError("config: runtime.rollout_workers / trainer_workers > 1 need runtime.backend=ray")
    _check_async(config)
    if config.algorithm.freeze_actor_steps and name != "ppo":
        raise UserError(f"config: 'algorithm.freeze_actor_steps' warms up PPO's critic; {name} has none")


def _check_async(config: Config) -> None:
    """Rollouts generated ahead of their step (runtime.max_staleness, train.off_policy_steps)."""
    staleness, n = config.runtime.max_staleness, config.train.off_policy_steps
    if not staleness and n == 1:
        return
    what = f"runtime.max_staleness={staleness}" if staleness else f"train.off_policy_steps={n}"
    if staleness and n > 1:
        raise UserError("config: runtime.max_staleness and train.off_policy_steps > 1 are two ways to run rollouts "
                        "ahead; set one of them")
    if config.algorithm.name == "dpo":
        raise UserError(f"config: {what} runs rollouts ahead of training; offline dpo generates none")
    if config.rollout.speculative in ("draft", "adaptive"):
        raise UserError(f"config: {what} with rollout.speculative={config.rollout.speculative}: the draft model's "
                        f"refresh distils on the step's own rollouts; use speculative=ngram or off")


def all_keys() -> list[str]:
    """Every settable key, e.g. 'rollout.temperature'."""
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(Config)
            for f in dataclasses.fields(_section_type(s.name))]


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key, for docs and `--help` text."""
    defaults = {s.name: dataclasses.asdict(_section_type(s.name)()) for s in dataclasses.fields(Config)}  # unresolved
    return [(key, defaults[key.split(".")[0]][key.split(".")[1]], _field_spec(key).metadata["help"])
            for key in all_keys()]


# ---------------------------------------------------------------------------- setting values
def set_value(section: Any, spec: dataclasses.Field, key: str, value: Any, source: str) -> None:
    """Type- and range-check `value` for field `spec`, then set it on `section`."""
    converted = convert(value, _field_type(key), key, source)
    check = spec.metadata.get("check")
    problem = check(converted) if check is not None and converted is not None else None
    if problem:
        raise UserError(f"{source}: '{key}' {problem}, got {converted!r}")
    setattr(section, spec.name, converted)


def _parse_scalar(raw: str, key: str, source: str) -> Any:
    """An override's value: a YAML scalar, except that str fields keep the raw text."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an int of > 4300 digits
        raise UserError(f"{source}: '{key}': cannot parse value {_short(raw)}") from None
    wants_str = _base_type(_field_type(key)) is str
    if wants_str and value is not None and not isinstance(value, str):
        return raw.strip()
    return value


# ---------------------------------------------------------------------------- lookup helpers
def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _section_type(name: str) -> type:
    return typing.get_type_hints(Config)[name]


def _field_spec(key: str) -> dataclasses.Field:
    section_name, field_name = key.split(".", 1)
    return {f.name: f for f in dataclasses.fields(_section_type(section_name))}[field_name]


def _field_type(key: str) -> Any:
    """The resolved annotation of a key, e.g. `float` for 'rollout.temperature'."""
    section_name, field_name = key.split(".", 1)
    return typing.get_type_hints(_section_type(section_name))[field_name]


def _base_type(annotation: Any) -> Any:
    """`str | None` -> str; other annotations unchanged."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _find_field(config: Config, key: str, source: str) -> tuple[Any, dataclasses.Field]:
    section_name, dot, field_name = key.partition(".")
    if section_name in _section_names() and not dot:
        example = all_keys_in(section_name)[0]
        raise UserError(f"{source}: '{key}' is a section; set one of its keys, e.g. '{example}'")
    if key not in all_keys():
        raise UserError(f"{source}: unknown key '{_printable(key)}'{_suggestion(key, all_keys())}")
    return getattr(config, section_name), _field_spec(key)


def all_keys_in(section_name: str) -> list[str]:
    return [key for key in all_keys() if key.startswith(section_name + ".")]


def _suggestion(name: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    leaf = name.rpartition(".")[2]
    same_leaf = [c for c in candidates if "." in name and c.rpartition(".")[2] == leaf]
    close = same_leaf or difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _yaml_location(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "syntax error"
    if mark is None:
        return f": {problem}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _short(text: str, limit: int = 80) -> str:
    """`text` quoted for a one-line message (newlines escaped), cut to `limit` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _printable(text: str) -> str:
    """`text` for a one-line message: unchanged when printable, else with newlines etc. escaped."""
    return text if text.isprintable() else repr(text)[1:-1]
