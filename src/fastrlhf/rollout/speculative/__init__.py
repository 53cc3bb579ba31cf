"""Speculative rollouts (RLHFSpec, issue 5). So far: the zero-cost n-gram drafter."""
