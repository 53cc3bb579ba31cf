"""The slot scheduler on fake sequences (no model)."""

from fastrlhf.rollout.scheduler import Scheduler
from fastrlhf.rollout.sequence import Sequence


def fake(i, length=3):
    return Sequence(seq_id=i, prompt_ids=[1] * length)


def test_admits_up_to_free_slots_lowest_first():
    sched = Scheduler(num_slots=3)
    for i in range(5):
        sched.add(fake(i))
    admitted = sched.admit()
    assert [s.seq_id for s in admitted] == [0, 1, 2]
    assert [s.slot for s in admitted] == [0, 1, 2]
    assert sched.admit() == []  # no free slot
    assert len(sched.waiting) == 2


def test_release_frees_slot_for_next_waiting_fifo():
    sched = Scheduler(num_slots=3)
    for i in range(5):
        sched.add(fake(i))
    sched.admit()
    finished = sched.release(1)
    assert finished.seq_id == 1 and finished.slot is None
    assert [s.seq_id for s in sched.admit()] == [3]
    assert sched.running[1].seq_id == 3  # reused slot 1
    sched.release(0)
    sched.release(2)
    nxt = sched.admit()
    assert [(s.seq_id, s.slot) for s in nxt] == [(4, 0)]  # lowest free slot first
    assert sched.active_slots() == [0, 1]


def test_prefill_budget_limits_admission_but_never_starves():
    sched = Scheduler(num_slots=8, max_prefill_tokens=10)
    for i, n in enumerate([4, 4, 4, 30]):
        sched.add(fake(i, n))
    assert [s.seq_id for s in sched.admit()] == [0, 1]  # 4+4 fit, the third would exceed 10
    assert [s.seq_id for s in sched.admit()] == [2]  # 4, then 30 does not fit
    assert [s.seq_id for s in sched.admit()] == [3]  # alone it is admitted even though > budget


def test_done_when_all_released():
    sched = Scheduler(num_slots=2)
    sched.add(fake(0))
    assert not sched.done
    sched.admit()
    assert not sched.done
    sched.release(0)
    assert sched.done
