"""N-gram drafter on hand-made token streams."""

import pytest

from fastrlhf.rollout.speculative.ngram import NGramDrafter


def test_proposes_what_followed_the_longest_match_in_a_sibling():
    d = NGramDrafter(n_max=3)
    d.extend(group=0, doc=1, tokens=[5, 6, 7, 8, 9, 10])  # a finished sibling
    # our tail [6, 7] matched as a 2-gram → the sibling continued with 8, 9, 10
    assert d.propose(0, [1, 6, 7], gamma=2) == [8, 9]
    assert d.propose(0, [1, 6, 7], gamma=9) == [8, 9, 10]
    # the longest match wins: [5, 6] occurs only at the start → 7, 8
    assert d.propose(0, [5, 6], gamma=2) == [7, 8]
    assert d.propose(0, [42], gamma=3) == []  # nothing matches
    assert d.propose(1, [6, 7], gamma=3) == []  # other prompts' documents are not used


def test_most_recent_occurrence_and_growing_documents():
    d = NGramDrafter(n_max=2)
    d.extend(0, 0, [1, 2, 3])
    d.extend(0, 1, [1, 2, 4])  # later occurrence of [1, 2] → 4
    assert d.propose(0, [9, 1, 2], gamma=1) == [4]
    d.extend(0, 2, [7, 1])  # a growing sequence: [7, 1] ends its document, no continuation yet
    assert d.propose(0, [7, 1], gamma=2) == [2, 4]  # falls back to the 1-gram [1] (latest: doc 1)
    d.extend(0, 2, [5])
    assert d.propose(0, [7, 1], gamma=2) == [5]


def test_forget_and_bad_sizes():
    d = NGramDrafter()
    d.extend(3, 0, [1, 2, 3])
    d.forget(3)
    assert d.propose(3, [1, 2], gamma=2) == []
    with pytest.raises(ValueError):
        NGramDrafter(n_max=1, n_min=2)


def test_earlier_responses_to_the_same_prompt_survive_a_new_call_up_to_max_groups():
    d = NGramDrafter(n_max=2, max_groups=2)
    d.extend(("p", 1), ("call1", 0), [5, 6, 7])  # an earlier step's response to prompt (p, 1)
    d.reset()  # a new generate call
    assert d.propose(("p", 1), [9, 5], gamma=2) == [6, 7]
    d.extend(("p", 2), ("call2", 0), [1, 2])
    d.extend(("p", 3), ("call2", 1), [3, 4])
    d.reset()  # three prompts known, room for two: the least recently used one goes
    assert d.propose(("p", 1), [9, 5], gamma=2) == []
    assert d.propose(("p", 3), [3], gamma=1) == [4]


def test_a_longer_match_beats_a_more_recent_short_one():
    """The tail [9, 9, 9, 9] occurs in both documents; only the first one also matches the three
    tokens before it, so with n_max = 8 the drafter continues from there (a sibling at the same
    place of the same path), while with n_max = 4 the most recent occurrence wins."""
    a, b = [1, 2, 3, 9, 9, 9, 9, 5], [4, 4, 4, 9, 9, 9, 9, 6]
    context = [1, 2, 3, 9, 9, 9, 9]
    long, short = NGramDrafter(n_max=8), NGramDrafter(n_max=4)
    for d in (long, short):
        d.extend(0, "a", a)
        d.extend(0, "b", b)
    assert long.propose(0, context, gamma=2) == [5]
    assert short.propose(0, context, gamma=2) == [6]
    # equal match lengths: the most recent occurrence wins; only the newest max_candidates are read
    capped = NGramDrafter(n_max=8, max_candidates=1)
    capped.extend(0, "a", a)
    capped.extend(0, "b", b)
    assert capped.propose(0, context, gamma=1) == [6]
    assert long.propose(0, [7, 9, 9, 9, 9], gamma=1) == [6]


def test_remembered_responses_draft_for_the_same_prompt_only():
    from fastrlhf.rollout.speculative.verify import Speculator

    spec = Speculator(NGramDrafter(n_max=6), gamma=3)
    spec.remember([([1, 2], [7, 8, 9, 3]), ([4, 2], [5, 5, 5])])
    spec.remember([([1, 2], [7, 8, 6])])  # a second batch gets its own documents
    spec.begin()  # a new generate call keeps them
    drafter = spec.drafter
    assert drafter.propose((1, 2), [1, 2, 7, 8], gamma=2) == [6]  # the most recent of equal matches
    assert drafter.propose((1, 2), [1, 2], gamma=3) == [7, 8, 6]
    assert drafter.propose((4, 2), [4, 2, 5], gamma=1) == [5]
    assert drafter.propose((9,), [1, 2], gamma=2) == []


def test_memory_is_bounded_by_tokens_as_well_as_prompts():
    d = NGramDrafter(n_max=6, max_tokens=10)
    d.extend("p1", 0, [1, 2, 3, 4, 5, 6])
    d.extend("p2", 0, [7, 8, 9, 10, 11, 12])
    assert d.tokens == 12
    d.reset()  # over 10 tokens: the least recently used prompt goes
    assert d.tokens == 6 and d.propose("p1", [1, 2], gamma=2) == [] and d.propose("p2", [7], gamma=2) == [8, 9]
    d.extend("p2", 1, list(range(20, 40)))  # one prompt alone over the bound is kept (its call is running)
    d.reset()
    assert d.propose("p2", [7], gamma=1) == [8]
