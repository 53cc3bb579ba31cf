"""`fastrlhf train` and `fastrlhf eval`.

    fastrlhf train [CONFIG.yaml] [key=value ...] [--resume RUN_DIR]
    fastrlhf eval MODEL_DIR [--task arithmetic|preference|worked_addition] [--reference DIR] [--digits 1 2 3]
                  [--eval-size 200]

With no arguments `train` runs the embedded default job (the built-in arithmetic task from the
shipped tiny SFT policy). A bad config or input fails before any file is written; a run that fails
before its first checkpoint removes the run directory it created.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from fastrlhf.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run RL training (no arguments: the built-in default job)",
                              epilog=config_keys_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]",
                   help="an optional YAML config followed by dotted overrides, e.g. train.steps=40")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="held-out evaluation of a model directory on a built-in task")
    e.add_argument("model_dir", help="an HF model directory (e.g. RUN_DIR/final or a checkpoint)")
    e.add_argument("--task", choices=("arithmetic", "preference", "worked_addition"), default="arithmetic",
                   help="arithmetic, worked_addition: greedy accuracy and response length; preference: gold reward "
                        "and KL to the reference")
    e.add_argument("--reference", metavar="DIR", help="preference: the policy KL is measured to "
                                                       "(default: the task's shipped SFT policy)")
    e.add_argument("--digits", type=int, nargs="+", default=None,
                   help="arithmetic, worked_addition: operand digit counts (default: the task's)")
    e.add_argument("--eval-size", type=int, default=200, help="number of held-out prompts")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the models run (auto: CUDA when available)")
    e.set_defaults(func=run_eval)


def config_keys_text() -> str:
    """Every config key with its default and help, for `fastrlhf train --help`."""
    from fastrlhf.config import describe

    lines = ["config keys (set as key=value or in CONFIG.yaml; defaults shown):"]
    for key, default, help_text in describe():
        lines.append(f"  {key} = {default!r}\n      {help_text}")
    return "\n".join(lines)


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    config_path, overrides = None, []
    for i, arg in enumerate(args):
        if "=" in arg:
            overrides.append(arg)
        elif i == 0:
            config_path = arg
        else:
            raise UserError(f"unexpected argument {arg!r}: overrides look like key=value, and the config file comes first")
    return config_path, overrides


def run_train(args: argparse.Namespace) -> int:
    from fastrlhf.config import load_config

    config_path, overrides = split_args(args.args)
    if args.resume:
        snapshot = Path(args.resume) / "config.yaml"
        if config_path:
            raise UserError("--resume takes its config from RUN_DIR/config.yaml; pass only key=value overrides")
        if not snapshot.is_file():
            raise UserError(f"{snapshot}: missing (is {args.resume} a fastrlhf run directory?)")
        config = load_config(snapshot, [*overrides, f"train.run_dir={args.resume}"])
    else:
        config = load_config(config_path, overrides)
    run_dir = Path(config.train.run_dir)
    existed = run_dir.exists()
    from fastrlhf.train.loop import train

    from fastrlhf.train.interrupt import TrainingInterrupted

    try:
        result = train(config, resume=bool(args.resume), show_progress=not args.quiet)
    except TrainingInterrupted as stop:
        print(f"fastrlhf: {stop}; continue with: fastrlhf train --resume {run_dir}", file=sys.stderr)
        return 130
    except UserError:
        _remove_if_nothing_saved(run_dir, existed)
        raise
    except KeyboardInterrupt as stop:  # a second Ctrl-C: stopped at once, the last checkpoint stands
        removed = _remove_if_nothing_saved(run_dir, existed)
        hint = "nothing was saved" if removed else getattr(stop, "resume_hint", f"continue with: fastrlhf train --resume {run_dir}")
        print(f"fastrlhf: interrupted; {hint}", file=sys.stderr)
        return 130
    print(f"run directory: {result.run_dir}")
    print(f"final policy (HF format): {result.final_dir}")
    start, final = result.start_eval, result.final_eval
    if "eval/gold_reward" in start and "eval/gold_reward" in final:
        print(f"held-out gold reward: {start['eval/gold_reward']:.3f} -> {final['eval/gold_reward']:.3f}, "
              f"KL to the SFT policy {final['eval/kl']:.2f} nats  ({result.seconds:.0f} s)")
    elif "eval/reward" in start and "eval/reward" in final:
        print(f"held-out reward: {start['eval/reward']:.3f} -> {final['eval/reward']:.3f}  ({result.seconds:.0f} s)")
    return 0


def _remove_if_nothing_saved(run_dir: Path, existed: bool) -> bool:
    """Remove a run directory this command created if no checkpoint landed in it; True if removed."""
    if existed or not run_dir.is_dir():
        return False
    if not any((run_dir / "checkpoints").glob("step_*")):
        shutil.rmtree(run_dir, ignore_errors=True)
        return True
    return False


def run_eval(args: argparse.Namespace) -> int:
    from fastrlhf.model.device import resolve_device
    from fastrlhf.model.hf_io import check_vocab, load_model, load_model_and_tokenizer
    from fastrlhf.train.evaluate import evaluate, evaluate_preference

    if args.eval_size < 1:
        raise UserError(f"--eval-size must be ≥ 1, got {args.eval_size}")
    device = resolve_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.model_dir, device=device)
    if args.task == "preference":
        from fastrlhf.tasks import preference
        from fastrlhf.train.reward_workers import reward_worker

        reference_dir = args.reference or preference.policy_dir()
        reference = load_model(reference_dir, device=device)
        check_vocab(reference.config, tokenizer, reference_dir)  # the reference scores the policy's token ids
        rows = preference.eval_rows(args.eval_size)
        rm = reward_worker(str(preference.reward_model_dir()), ("digits",), None, device)
        m = evaluate_preference(model, tokenizer, rows, reference, rm)
        print(f"{args.model_dir}: gold reward {m['eval/gold_reward']:.3f} (greedy {m['eval/gold_greedy']:.3f}), "
              f"KL to reference {m['eval/kl']:.3f} nats, learned-RM reward {m['eval/reward']:.3f} "
              f"on {len(rows)} held-out prompts")
        return 0
    from fastrlhf.tasks import arithmetic, task_max_new_tokens, worked_addition

    try:
        if args.task == "worked_addition":
            rows = worked_addition.eval_rows(args.eval_size, tuple(args.digits) if args.digits else None)
        else:
            rows = arithmetic.eval_rows(args.eval_size, tuple(args.digits or arithmetic.DEFAULT_DIGITS))
    except ValueError as exc:
        raise UserError(f"--digits / --eval-size: {exc}") from None
    task = worked_addition if args.task == "worked_addition" else arithmetic
    metrics = evaluate(model, tokenizer, rows, task.reward, ("answer",), max_new_tokens=task_max_new_tokens(args.task))
    print(f"{args.model_dir}: held-out accuracy {metrics['eval/reward']:.3f} on {len(rows)} problems "
          f"(mean response length {metrics['eval/response_length']:.1f} tokens)")
    return 0
