"""The one update helper (`updates.optimizer_step`) and the step transaction (`train/transaction.py`)."""

import pytest
import torch

from fastrlhf.errors import UserError
from fastrlhf.train.optim import build_optimizer, build_scheduler
from fastrlhf.train.sft import guarded_step, stop_on_skips
from fastrlhf.train.transaction import StepTransaction
from fastrlhf.updates import NonFiniteUpdate, optimizer_step


def model_and_optimizer(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optimizer = build_optimizer(model, 1e-2)
    return model, optimizer, build_scheduler(optimizer, 0, 10, "linear")


def backward(model, scale=1.0):
    loss = model(torch.ones(2, 4)).pow(2).sum() * scale
    loss.backward()
    return loss.detach()


def test_optimizer_step_matches_clip_then_step():
    a, opt_a, sched_a = model_and_optimizer()
    b, opt_b, sched_b = model_and_optimizer()
    backward(a), backward(b)
    norm = optimizer_step(a, opt_a, sched_a, grad_clip=0.5)
    expected = float(torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5))
    opt_b.step(), sched_b.step()
    assert norm == expected
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert sched_a.last_epoch == sched_b.last_epoch == 1


@pytest.mark.parametrize("bad", ["loss", "gradient"])
def test_a_non_finite_update_is_not_applied(bad):
    model, optimizer, scheduler = model_and_optimizer()
    before = [p.detach().clone() for p in model.parameters()]
    loss = backward(model)
    if bad == "gradient":
        next(model.parameters()).grad[0, 0] = float("inf")
    with pytest.raises(NonFiniteUpdate, match="loss" if bad == "loss" else "gradient norm"):
        optimizer_step(model, optimizer, scheduler, 1.0, loss * float("nan") if bad == "loss" else loss)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert optimizer.state == {} and scheduler.last_epoch == 0
    assert all(p.grad is None for p in model.parameters())


def test_rollback_restores_weights_moments_schedule_and_rng_bit_for_bit():
    model, optimizer, scheduler = model_and_optimizer()
    backward(model), optimizer_step(model, optimizer, scheduler)  # an earlier step: AdamW moments exist
    transaction = StepTransaction({"m": (model, optimizer, scheduler)})
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_moments = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    transaction.begin()
    torch.manual_seed(123)  # the step draws from the global RNG ...
    for _ in range(2):  # ... and applies two updates
        backward(model), optimizer_step(model, optimizer, scheduler)
    assert transaction.updated == ["m"]
    transaction.rollback()
    assert all(torch.equal(v, saved_weights[k]) for k, v in model.state_dict().items())
    for p, state in optimizer.state.items():
        assert all(torch.equal(v, saved_moments[id(p)][k]) for k, v in state.items())
    assert scheduler.last_epoch == 1 and optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0]
    transaction.begin()  # the global RNG goes back to where begin() found it
    first = torch.rand(3)
    transaction.rollback()
    assert torch.equal(torch.rand(3), first)


def test_rollback_of_a_first_update_leaves_a_fresh_optimizer():
    model, optimizer, scheduler = model_and_optimizer()
    transaction = StepTransaction({"m": (model, optimizer, scheduler)})
    transaction.begin()
    backward(model), optimizer_step(model, optimizer, scheduler)
    transaction.rollback()
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())
    reference, opt_ref, sched_ref = model_and_optimizer()
    for m, o, s in ((model, optimizer, scheduler), (reference, opt_ref, sched_ref)):
        backward(m), optimizer_step(m, o, s)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_a_model_not_updated_in_the_step_costs_no_snapshot():
    model, optimizer, scheduler = model_and_optimizer()
    transaction = StepTransaction({"m": (model, optimizer, scheduler)})
    transaction.begin()
    assert transaction.updated == []
    transaction.commit()


def test_sft_steps_skip_non_finite_updates_and_stop_after_three():
    model, optimizer, scheduler = model_and_optimizer()
    history = []
    for _ in range(3):
        backward(model)
        history.append(guarded_step(model, optimizer, scheduler, 1.0, {"loss": float("nan")}))
        if len(history) < 3:
            stop_on_skips(history, what="SFT")
    assert all(h["skipped"] == 1.0 for h in history) and optimizer.state == {}
    with pytest.raises(UserError, match="SFT: 3 steps in a row"):
        stop_on_skips(history, what="SFT")
