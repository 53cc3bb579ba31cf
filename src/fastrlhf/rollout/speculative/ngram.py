"""N-gram (suffix-match) drafter: propose the tokens that followed the current tail elsewhere.

For a sequence with context c (its prompt + output so far), find the longest n ∈ [n_min, n_max]
whose last n tokens c[-n:] occurred before — in the sequence's own text, in its *siblings* (the
other samples of the same prompt: GRPO / RLOO draw n per prompt) or in earlier responses to the same
prompt — and propose the up-to-γ tokens that followed that occurrence (the most recent one wins).
Costs no model call; the proposal is deterministic, so the verifier's acceptance rule is
"sample y ~ p, accept while y equals the draft" (PAPERS.md §1) and losslessness never depends on
the drafter's quality.

Index: per group (prompt), a dict from n-gram → (document, end position) of its latest occurrence,
updated incrementally as documents grow. Memory is O(total tokens × (n_max − n_min + 1)).

Left out: responses from earlier generate calls (the index is reset per call). The verifier is
speculative/verify.py; the stochastic alternative is draft_model.py.
"""

from __future__ import annotations

from collections import defaultdict


class NGramDrafter:
    name = "ngram"

    def __init__(self, n_max: int = 4, n_min: int = 1):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 ≤ n_min ≤ n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min = n_max, n_min
        self.docs: dict[tuple[int, int], list[int]] = {}  # (group, doc id) → tokens
        self.index: dict[int, dict[tuple[int, ...], tuple[int, int]]] = defaultdict(dict)  # group → n-gram → (doc, end)

    def extend(self, group: int, doc: int, tokens: list[int]) -> None:
        """Append tokens to document `doc` of `group` (a sibling, an earlier response, or the
        sequence itself) and index every n-gram that now has a continuation (an n-gram ending at
        the document's end is indexed once the next token arrives)."""
        text = self.docs.setdefault((group, doc), [])
        start = len(text)
        text.extend(tokens)
        index = self.index[group]
        for end in range(max(start, 1), len(text)):
            for n in range(self.n_min, min(self.n_max, end) + 1):
                index[tuple(text[end - n:end])] = (doc, end)

    def propose(self, group: int, context: list[int], gamma: int) -> list[int]:
        """Up to `gamma` draft tokens continuing `context`, from the longest matching n-gram (its
        most recent occurrence that has a continuation)."""
        index = self.index.get(group, {})
        for n in range(min(self.n_max, len(context)), self.n_min - 1, -1):
            hit = index.get(tuple(context[-n:]))
            if hit is not None:
                doc, end = hit
                return list(self.docs[(group, doc)][end:end + gamma])
        return []

    def reset(self) -> None:
        """Drop every document (a new generate call numbers its prompts from 0 again)."""
        self.docs.clear()
        self.index.clear()

    def forget(self, group: int) -> None:
        """Drop a group's documents and index (its prompt is done)."""
        self.index.pop(group, None)
        for key in [k for k in self.docs if k[0] == group]:
            del self.docs[key]
