"""Measured vs predicted: our decoder on this CPU against the planner's cost and memory model.

For each `Case` (a decoder shape and a workload) this measures, at a fixed thread count,
- forward time: `model(input_ids)` under no_grad, batch x seq tokens;
- training-step time: forward, token cross-entropy, backward, `torch.optim.AdamW.step()`;
- decode time per token: `RolloutEngine.generate` of `decode_batch` greedy sequences, the time of
  `gen_long` new tokens minus that of `gen_short` new tokens over the difference (so prefill and
  set-up cancel), at mean context prompt + (gen_short + gen_long) / 2;
- peak memory of a training step (the second one, when the AdamW state exists): the largest
  `total_allocated` the CPU allocator reports to `torch.profiler` (profile_memory=True) during the
  step, plus the bytes of tensors alive before it (weights, AdamW state). This counts tensor
  storage only (no allocator caching or library workspaces outside torch's allocator).
Times are minima of `repeats` runs after a warm-up (as in the calibration: interference only adds
time on this shared VM, see calibrate.py). Predictions come from `cost.inference_time`,
`cost.train_time` (zero_stage 0, one device, unfused AdamW's 92 bytes/parameter) and `cost.decode_step_time`, and from
`memory.train_state_bytes + memory.train_act_bytes` (with the 3 logit-sized copies of plain
`F.cross_entropy`, see memory.py), for the `ModelSpec` read from the model's HF
config dict with fp32 (4-byte) elements, on the profile from `calibrate.calibrate_cpu`.

Left out: multi-threaded runs.
torch is imported inside functions so `plan/` stays importable without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastrlhf.plan import cost, memory
from fastrlhf.plan.calibrate import best_time, decode_token_time, num_threads
from fastrlhf.plan.hardware import Accelerator
from fastrlhf.plan.layout import Layout
from fastrlhf.plan.model_spec import ModelSpec, from_hf_config

ONE = Layout(1, 1, 1)


@dataclass(frozen=True)
class Case:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int = 8192
    batch: int = 4
    seq: int = 128
    decode_batch: int = 8
    prompt: int = 16
    gen_short: int = 8
    gen_long: int = 40


CASES = (
    Case("h128-L2", 128, 2, 2, 352),
    Case("h256-L4", 256, 4, 4, 688),
    Case("h512-L6", 512, 6, 8, 1376),
)


def build(case: Case):
    """A randomly initialised fp32 CausalLM of the case's shape and its planner spec."""
    import torch

    from fastrlhf.model.config import ModelConfig
    from fastrlhf.model.decoder import CausalLM

    cfg = ModelConfig(vocab_size=case.vocab, hidden_size=case.hidden, intermediate_size=case.intermediate,
                      num_layers=case.layers, num_heads=case.heads, num_kv_heads=case.heads,
                      head_dim=case.hidden // case.heads)
    torch.manual_seed(0)
    model = CausalLM(cfg)
    spec = dataclasses.replace(from_hf_config(cfg.to_hf_dict(), case.name), dtype_bytes=4)
    return model, spec


def predict(spec: ModelSpec, acc: Accelerator, case: Case) -> dict[str, float]:
    ctx = case.prompt + (case.gen_short + case.gen_long) / 2
    tokens = case.batch * case.seq
    return {
        "forward_s": cost.inference_time(spec, acc, ONE, case.batch, case.seq, 1, True),
        "train_step_s": cost.train_time(spec, acc, ONE, case.batch, case.seq, 1, True, True, 0,
                                        adam_bytes=cost.UNFUSED_ADAMW_BYTES),
        "decode_token_s": cost.decode_step_time(spec, acc, ONE, case.decode_batch, ctx, True),
        "train_peak_bytes": memory.train_state_bytes(spec, ONE, 0)
        + memory.train_act_bytes(spec, ONE, tokens, 1, logit_copies=3),
    }


def _train_step(model, optimizer, ids):
    import torch.nn.functional as F

    logits = model(ids[:, :-1])  # [B, T, V]
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    del logits  # a trainer does not hold the logits through backward (the loss saved log-probs)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_train_bytes(model, optimizer, ids) -> float:
    """Tensor bytes alive before a training step + the peak the step allocates on top."""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    before = sum(t.numel() * t.element_size() for t in model.parameters())
    before += sum(v.numel() * v.element_size() for st in optimizer.state.values()
                  for v in st.values() if torch.is_tensor(v))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _train_step(model, optimizer, ids)
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            peak = max(peak, node.typed[1].total_allocated)
        stack.extend(node.children)
    return before + peak


def measure(model, case: Case, repeats: int = 5) -> dict[str, float]:
    import torch

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case.vocab, (case.batch, case.seq + 1), generator=gen)
    with torch.no_grad():
        fwd = best_time(lambda: model(ids[:, :-1]), repeats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    train = best_time(lambda: _train_step(model, optimizer, ids), repeats)
    peak = peak_train_bytes(model, optimizer, ids)
    decode = decode_token_time(model, case.decode_batch, case.prompt, case.gen_short, case.gen_long,
                               repeats)
    return {"forward_s": fwd, "train_step_s": train, "decode_token_s": decode, "train_peak_bytes": peak}


def validate(acc: Accelerator, cases=CASES, threads: int | None = 1, repeats: int = 5) -> list[dict]:
    """One row per (case, quantity): measured, predicted and the relative error (pred/meas - 1)."""
    rows = []
    with num_threads(threads):
        for case in cases:
            model, spec = build(case)
            measured = measure(model, case, repeats)
            predicted = predict(spec, acc, case)
            for key, value in measured.items():
                rows.append({"case": case.name, "quantity": key, "measured": value,
                             "predicted": predicted[key], "error": predicted[key] / value - 1.0})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table: times in ms, memory in MB."""
    lines = ["| model | quantity | measured | predicted | error |", "|---|---|---|---|---|"]
    for r in rows:
        scale, unit = (1e-6, "MB") if r["quantity"].endswith("bytes") else (1e3, "ms")
        lines.append(f"| {r['case']} | {r['quantity']} | {r['measured'] * scale:.2f} {unit} | "
                     f"{r['predicted'] * scale:.2f} {unit} | {r['error'] * 100:+.0f}% |")
    return "\n".join(lines)


def describe_profile(acc: Accelerator) -> str:
    table = ", ".join(f"{b / 2**20:.0f} MB {t:.0f}" for b, t in acc.half_rows_by_bytes)
    return (f"cpu profile (1 thread): {acc.flops / 1e9:.1f} GFLOP/s fp32 GEMM, "
            f"{acc.mem_bw / 1e9:.1f} GB/s copy, GEMM half-rate rows by weight bytes [{table}], "
            f"decode step {acc.step_latency * 1e3:.2f} ms + {acc.layer_latency * 1e3:.2f} ms/layer"
            f" + {acc.logit_time * 1e9:.2f} ns/logit, KV read {acc.kv_read_bw / 1e9:.1f} GB/s, "
            f"loss {acc.loss_time * 1e9:.2f} ns/logit")


def main() -> None:
    from fastrlhf.plan.calibrate import calibrate_cpu

    acc = calibrate_cpu(threads=1)
    print(describe_profile(acc))
    print(format_table(validate(acc)))


if __name__ == "__main__":
    main()
