"""Bradley–Terry reward-model loss as a pure function (InstructGPT eq. 1, Ouyang et al. 2022).

For P preference pairs with scalar rewards s_c (chosen) and s_r (rejected):

    P(chosen ≻ rejected) = σ(s_c − s_r)
    loss = (1 / P) Σ_p −log σ(s_c,p − s_r,p)        (computed with logsigmoid: no overflow)

Statistics (floats): loss, accuracy (share of pairs with s_c > s_r; a tie counts as wrong),
margin (mean s_c − s_r), chosen_score and rejected_score (means).

Left out: margin terms (Llama 2's −log σ(s_c − s_r − m)), reward centering (an s² penalty),
InstructGPT's K-choose-2 grouping of all rankings of one prompt in one batch, label smoothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean −log σ(s_c − s_r) over pairs; chosen_scores, rejected_scores [P]. Returns (loss, stats)."""
    if chosen_scores.shape != rejected_scores.shape or chosen_scores.ndim != 1:
        raise ValueError(f"expected two [P] tensors, got {tuple(chosen_scores.shape)} and {tuple(rejected_scores.shape)}")
    margins = chosen_scores - rejected_scores  # [P]
    loss = -F.logsigmoid(margins).mean()
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "accuracy": float((margins > 0).float().mean()),
            "margin": float(margins.mean()),
            "chosen_score": float(chosen_scores.mean()),
            "rejected_score": float(rejected_scores.mean()),
        }
    return loss, stats
