"""N-gram (suffix-match) drafter: propose the tokens that followed the current tail elsewhere.

For a sequence with context c (its prompt + output so far), find the longest n ∈ [n_min, n_max]
whose last n tokens c[-n:] occurred before — in the sequence's own text, in its *siblings* (the
other samples of the same prompt: GRPO / RLOO draw n per prompt) or in earlier responses to the same
prompt — and propose the up-to-γ tokens that followed that occurrence (the most recent one wins).
Costs no model call; the proposal is deterministic, so the verifier's acceptance rule is
"sample y ~ p, accept while y equals the draft" (PAPERS.md §1) and losslessness never depends on
the drafter's quality.

Index: per group (prompt), a dict from n-gram → (document, end position) of its latest occurrence,
updated incrementally as documents grow. Groups and documents are any hashable keys: the verifier
uses the prompt's token ids as the group and (generate call, sequence id) as the document, so the
responses to a prompt from *earlier* generate calls (earlier RL steps, earlier epochs) stay
available to its new samples. `reset()` (called at the start of each generate call) keeps the
`max_groups` most recently used prompts and evicts the rest, which bounds memory at
O(max_groups × tokens per prompt × (n_max − n_min + 1)).

Left out: weighting recent responses above old ones beyond "the most recent occurrence wins". The
verifier is speculative/verify.py; the stochastic alternative is draft_model.py.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Hashable


class NGramDrafter:
    name = "ngram"

    def __init__(self, n_max: int = 4, n_min: int = 1, max_groups: int = 4096):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 ≤ n_min ≤ n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min, self.max_groups = n_max, n_min, max_groups
        self.docs: dict[tuple[Hashable, Hashable], list[int]] = {}  # (group, doc) → tokens
        self.index: dict[Hashable, dict[tuple[int, ...], tuple[Hashable, int]]] = defaultdict(dict)  # group → n-gram → (doc, end)
        self.recent: OrderedDict[Hashable, None] = OrderedDict()  # groups, least recently used first

    def extend(self, group: Hashable, doc: Hashable, tokens: list[int]) -> None:
        """Append tokens to document `doc` of `group` (a sibling, an earlier response, or the
        sequence itself) and index every n-gram that now has a continuation (an n-gram ending at
        the document's end is indexed once the next token arrives)."""
        self._touch(group)
        text = self.docs.setdefault((group, doc), [])
        start = len(text)
        text.extend(tokens)
        index = self.index[group]
        for end in range(max(start, 1), len(text)):
            for n in range(self.n_min, min(self.n_max, end) + 1):
                index[tuple(text[end - n:end])] = (doc, end)

    def propose(self, group: Hashable, context: list[int], gamma: int) -> list[int]:
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
        """A new generate call: keep the `max_groups` most recently used prompts, forget the rest."""
        while len(self.recent) > self.max_groups:
            self.forget(next(iter(self.recent)))

    def forget(self, group: Hashable) -> None:
        """Drop a group's documents and index."""
        self.index.pop(group, None)
        self.recent.pop(group, None)
        for key in [k for k in self.docs if k[0] == group]:
            del self.docs[key]

    def _touch(self, group: Hashable) -> None:
        self.recent[group] = None
        self.recent.move_to_end(group)
