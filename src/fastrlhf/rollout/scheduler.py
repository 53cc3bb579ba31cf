"""Slot scheduler: which waiting sequences get which free KV-cache slots.

Policy: first come, first served; the lowest free slot first, so the running set stays packed at the
front of the cache (the decode step then reads a view instead of gathering). Sequences are admitted
only while slots are free and the prefill token budget lasts; a finished sequence frees its slot at
once (continuous admission). The prefill budget counts the tokens admission feeds (`prefill_len`:
the prompt, plus a migrated sequence's tokens so far). `withdraw` takes sequences out again, waiting
or running (sample migration). Pure Python over `Sequence` objects: unit-tested on fake sequences.
"""

from __future__ import annotations

import heapq
from collections import deque

from fastrlhf.rollout.sequence import Sequence


class Scheduler:
    def __init__(self, num_slots: int, max_prefill_tokens: int | None = None):
        self.num_slots = num_slots
        self.max_prefill_tokens = max_prefill_tokens
        self.free: list[int] = list(range(num_slots))  # a heap
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}  # slot → sequence

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into free slots (sets `seq.slot`); returns the admitted ones."""
        admitted, budget = [], self.max_prefill_tokens
        while self.waiting and self.free:
            seq = self.waiting[0]
            if budget is not None and admitted and seq.prefill_len > budget:
                break
            self.waiting.popleft()
            seq.slot = heapq.heappop(self.free)
            self.running[seq.slot] = seq
            admitted.append(seq)
            if budget is not None:
                budget -= seq.prefill_len
        return admitted

    def release(self, slot: int) -> Sequence:
        seq = self.running.pop(slot)
        heapq.heappush(self.free, slot)
        seq.slot = None
        return seq

    def withdraw(self, seqs: list[Sequence]) -> None:
        """Remove `seqs` — each waiting or running here — from the scheduler; running ones free their
        slot (`seq.slot` becomes None). Waiting ones are matched by identity, not by value."""
        taken = {id(s) for s in seqs if s.slot is None}
        if taken:
            self.waiting = deque(s for s in self.waiting if id(s) not in taken)
        for seq in seqs:
            if seq.slot is not None:
                self.release(seq.slot)

    def active_slots(self) -> list[int]:
        return sorted(self.running)

    @property
    def done(self) -> bool:
        return not self.waiting and not self.running
