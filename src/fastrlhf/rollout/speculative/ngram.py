"""N-gram (suffix-match) drafter: propose the tokens that followed the current tail elsewhere.

For a sequence with context c (its prompt + output so far), find the longest n ∈ [n_min, n_max]
whose last n tokens c[-n:] occurred before — in the sequence's own text, in its *siblings* (the
other samples of the same prompt: GRPO / RLOO draw n per prompt) or in earlier responses to the same
prompt — and propose the up-to-γ tokens that followed that occurrence (the most recent one wins).
Costs no model call; the proposal is deterministic, so the verifier's acceptance rule is
"sample y ~ p, accept while y equals the draft" (PAPERS.md §1) and losslessness never depends on
the drafter's quality.

Index, per group (prompt), in two parts that together find the longest match up to n_max:
- short n-grams (n_min ≤ n ≤ K = min(n_max, SHORT)): a dict n-gram → (document, end position) of its
  latest occurrence; enough for short matches;
- longer matches: a dict K-gram → every (document, end) where it occurred; `propose` walks the
  `max_candidates` most recent occurrences of the context's last K tokens backwards against the
  context (up to n_max tokens) and takes the longest (the most recent among equals). A long match
  pins the *place* in an earlier response or sibling: on a worked-arithmetic trace "+1+1=" recurs in
  every column, but the whole output so far occurs only at the right column of a sibling that
  followed the same path.
Memory is O(tokens × K) per group, not O(tokens × n_max). Both are updated incrementally as
documents grow (an n-gram ending at the document's end is indexed once the next token arrives).
Groups and documents are any hashable keys: the verifier uses the prompt's token ids as the group and
(generate call, sequence id) as the document, so the responses to a prompt from *earlier* generate
calls (earlier RL steps, earlier epochs) stay available to its new samples. `reset()` (called at the
start of each generate call) keeps the most recently used prompts — at most `max_groups` of them and
at most `max_tokens` document tokens in all (each token costs about K + 1 dict / list entries, a few
hundred bytes: the default 1M tokens is a few hundred MB) — and evicts the rest.

Left out: weighting recent responses above old ones beyond "the most recent occurrence wins". The
verifier is speculative/verify.py; the stochastic alternative is draft_model.py.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Hashable


SHORT = 4  # longest n-gram kept in the latest-occurrence dict


class NGramDrafter:
    name = "ngram"

    def __init__(self, n_max: int = 12, n_min: int = 1, max_groups: int = 4096, max_candidates: int = 32,
                 max_tokens: int = 1_000_000):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"need 1 ≤ n_min ≤ n_max, got n_min={n_min}, n_max={n_max}")
        self.n_max, self.n_min, self.max_groups, self.max_candidates = n_max, n_min, max_groups, max_candidates
        self.max_tokens = max_tokens
        self.tokens = 0  # document tokens held, all groups
        self.k = max(n_min, min(n_max, SHORT))  # K: the short index's longest n, the long index's key
        self.docs: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(dict)  # group → doc → tokens
        self.index: dict[Hashable, dict[tuple[int, ...], tuple[Hashable, int]]] = defaultdict(dict)  # group → n-gram → (doc, end)
        self.places: dict[Hashable, dict[tuple[int, ...], list]] = defaultdict(dict)  # group → K-gram → [(doc, end), ...]
        self.recent: OrderedDict[Hashable, None] = OrderedDict()  # groups, least recently used first

    def extend(self, group: Hashable, doc: Hashable, tokens: list[int]) -> None:
        """Append tokens to document `doc` of `group` (a sibling, an earlier response, or the
        sequence itself) and index every n-gram that now has a continuation (an n-gram ending at
        the document's end is indexed once the next token arrives)."""
        self._touch(group)
        text = self.docs[group].setdefault(doc, [])
        start = len(text)
        text.extend(tokens)
        self.tokens += len(tokens)
        index, places, k = self.index[group], self.places[group], self.k
        for end in range(max(start, 1), len(text)):
            for n in range(self.n_min, min(k, end) + 1):
                index[tuple(text[end - n:end])] = (doc, end)
            if self.n_max > k and end >= k:
                places.setdefault(tuple(text[end - k:end]), []).append((doc, end))

    def propose(self, group: Hashable, context: list[int], gamma: int) -> list[int]:
        """Up to `gamma` draft tokens continuing `context`, from the longest matching n-gram (its
        most recent occurrence that has a continuation)."""
        if self.n_max > self.k and len(context) > self.k:
            hit = self._longest(group, context)
            if hit is not None:
                doc, end = hit
                return list(self.docs[group][doc][end:end + gamma])
        index = self.index.get(group, {})
        for n in range(min(self.k, len(context)), self.n_min - 1, -1):
            hit = index.get(tuple(context[-n:]))
            if hit is not None:
                doc, end = hit
                return list(self.docs[group][doc][end:end + gamma])
        return []

    def _longest(self, group: Hashable, context: list[int]) -> tuple[Hashable, int] | None:
        """Among the most recent occurrences of the context's last K tokens, the one whose match
        with the context extends furthest back (≤ n_max tokens); None if the K-gram never occurred."""
        k = self.k
        occurrences = self.places.get(group, {}).get(tuple(context[-k:]))
        if not occurrences:
            return None
        best, best_n = None, -1
        limit = min(self.n_max, len(context))
        for doc, end in reversed(occurrences[-self.max_candidates:]):
            text, n = self.docs[group][doc], k
            while n < limit and end - n - 1 >= 0 and text[end - n - 1] == context[-n - 1]:
                n += 1
            if n > best_n:
                best, best_n = (doc, end), n
                if n == limit:
                    break
        return best

    def reset(self) -> None:
        """A new generate call: keep the most recently used prompts within `max_groups` and
        `max_tokens`, forget the rest."""
        while len(self.recent) > self.max_groups or (self.tokens > self.max_tokens and len(self.recent) > 1):
            self.forget(next(iter(self.recent)))

    def forget(self, group: Hashable) -> None:
        """Drop a group's documents and index."""
        self.index.pop(group, None)
        self.places.pop(group, None)
        self.recent.pop(group, None)
        self.tokens -= sum(map(len, self.docs.pop(group, {}).values()))

    def _touch(self, group: Hashable) -> None:
        self.recent[group] = None
        self.recent.move_to_end(group)
