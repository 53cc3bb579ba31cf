"""fastrlhf train vs TRL GRPOTrainer on the same GRPO job (same model directory, prompts, reward, sizes).

    pip install -e '.[bench]'                                    # trl, datasets, accelerate
    python benchmarks/vs_trl.py                                  # built-in 0.8 M policy, 4 sides, 3 repeats
    python benchmarks/vs_trl.py --shape 135m --steps 10 --repeats 3 --write docs/benchmarks.md
    python benchmarks/vs_trl.py --model DIR --sides ours-fp32 trl-fp32

Sides: ours at model.dtype=fp32 / bf16, TRL at fp32 / bf16=True; each run is a fresh process with the
same thread count. Prints a markdown table (s/step, samples/s, × TRL best, peak RSS, training reward,
held-out accuracy) with this command beside it; `--write FILE` replaces its section of FILE.
The protocol, and how the job maps onto TRL's settings: src/fastrlhf/bench/vs_trl.py and
src/fastrlhf/bench/trl_grpo.py.
"""

import sys

from fastrlhf.bench.vs_trl import main

if __name__ == "__main__":
    sys.exit(main())
