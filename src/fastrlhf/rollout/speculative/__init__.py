"""Speculative rollouts (RLHFSpec, issue 5): drafters (ngram.py, draft_model.py + distill.py), the
acceptance rules (acceptance.py), batched verification (verify.py), and the per-step choice of
drafter and draft length (strategy.py)."""
