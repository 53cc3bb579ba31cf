"""The TRL side of `benchmarks/vs_trl.py`: one `trl.GRPOTrainer` run, in its own process.

    python -m fastrlhf.bench.trl_grpo SPEC.json

SPEC.json (written by `fastrlhf.bench.vs_trl`) names the model directory, the prompt rows, the job's
sizes and where to write the result; the result JSON holds, per optimizer step, the wall-clock
time at which it ended (`on_step_end` of a `TrainerCallback`, `time.perf_counter()`) and the mean
training reward TRL logged for it, plus the time training began. The final policy is saved with
`trainer.save_model` to SPEC's `final_dir` (an HF directory our `load_model` reads) for the
held-out evaluation.

How the job maps onto TRL's settings (TRL counts completions, not prompts):
- `per_device_train_batch_size` = prompts × group size and `gradient_accumulation_steps` = 1, so
  one generation batch of prompts × group completions is one optimizer step — one GRPO step, as
  ours; `num_generations` = group size, `max_steps` = steps, `num_iterations` = 1;
- the dataset is exactly the rows our trainer draws, in our order (`shuffle_dataset=False`; TRL's
  sampler repeats each prompt `num_generations` times);
- prompts: plain text when the tokenizer has no chat template (TRL then tokenizes with
  `add_special_tokens=True`, as our `encode_prompt` — checked here, `prompt_ids_match` in the
  result); with a chat template, one user message (TRL applies the template with the generation
  prompt, as our `encode_prompt`), and the reward gets the assistant message's text;
- sampling: temperature 1, top-p 1, top-k 0 (off), `max_completion_length` = max new tokens, stop at
  EOS — our rollout settings;
- the loss: `loss_type="dapo"` (token mean over the batch, ours' `token_mean`), ratio clipped to
  [1 − 0.2, 1 + 0.28] (`epsilon`, `epsilon_high`: our clip_low / clip_high), group-std-scaled
  advantages (`scale_rewards="group"`), k3 KL to a frozen reference weighted by `beta` (our
  `kl_in=loss`, `kl_coef`), AdamW at a constant learning rate (no warm-up, weight decay 0), gradient
  norm clipped to 1;
- TRL's own best settings on a CPU: `gradient_checkpointing=False` (TRL turns it on by default — it
  trades compute for memory), no vLLM, no logging integrations, no checkpoints (`save_strategy="no"`);
- precision: weights loaded in fp32 (`model_init_kwargs={"dtype": "float32"}`); `bf16=True` is
  TRL/accelerate's mixed precision — an autocast to bfloat16 around the forward passes, weights and
  optimizer state in fp32 (on a CPU, `torch.autocast("cpu", torch.bfloat16)`); `bf16=False` is plain fp32.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _text_of(completion) -> str:
    """A completion's text: TRL passes plain strings, or for conversational prompts a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if isinstance(m, dict))


def run(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    from fastrlhf.model.tokenizer import Tokenizer
    from fastrlhf.tasks.rewards import load_reward

    hf_logging.set_verbosity_error()
    model_dir = spec["model_dir"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    ours = Tokenizer(tokenizer, source=model_dir)
    chat = ours.has_chat_template
    rows = spec["rows"]
    reward_fn = load_reward(spec["reward"])  # the same function our trainer calls

    if chat:
        prompts = [[{"role": "user", "content": r["prompt"]}] for r in rows]
        trl_ids = tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]

        def reward(completions, **fields):
            return reward_fn([_text_of(c) for c in completions], **fields)
        reward.__name__ = getattr(reward_fn, "__name__", "reward")
    else:
        prompts = [r["prompt"] for r in rows]
        trl_ids = tokenizer(text=prompts[:1])["input_ids"][0]  # what GRPOTrainer._tokenize_prompts does
        reward = reward_fn
    prompt_ids_match = list(trl_ids) == ours.encode_prompt(rows[0]["prompt"])
    columns = {"prompt": prompts, **{k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}}
    dataset = Dataset.from_dict(columns)

    batch = spec["prompts_per_step"] * spec["group_size"]
    args = GRPOConfig(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=spec["group_size"],
        max_completion_length=spec["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=spec["beta"], num_iterations=1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
        max_steps=spec["steps"], shuffle_dataset=False, seed=spec["seed"],
        bf16=spec["bf16"], fp16=False, gradient_checkpointing=False,
        model_init_kwargs={"dtype": "float32"},
        use_vllm=False, report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True,
        use_cpu=spec["device"] == "cpu", dataloader_num_workers=0, log_completions=False,
    )
    result: dict = {"step_end": [], "step_end_unix": [], "reward": {}, "prompt_ids_match": prompt_ids_match, "chat_template": chat}

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            result["train_begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            result["step_end"].append(time.perf_counter())
            result["step_end_unix"].append(time.time())  # to place the steps on the RSS timeline

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                result["reward"][str(state.global_step)] = float(logs["reward"])

    trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[Timer()])
    result["optim"] = str(getattr(args.optim, "value", args.optim))
    trainer.train()
    if spec.get("final_dir"):
        trainer.save_model(spec["final_dir"])
    result["param_dtype"] = str(next(trainer.model.parameters()).dtype).removeprefix("torch.")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fastrlhf.bench.trl_grpo SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(spec)
    Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
