import math

import pytest
import torch

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.train.optim import build_optimizer, build_scheduler
from fastrlhf.train.sft import SFTConfig, accumulate_gradients, batch_indices, collate, response_nll, train_sft

PAD = 0
pytestmark = pytest.mark.usefixtures("single_thread")


def test_response_nll_hand_worked():
    # V = 2. logits at t=0: [0, 0] -> p = (1/2, 1/2); at t=1: [ln 3, 0] -> p = (3/4, 1/4); t=2 unused.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
    ids = torch.tensor([[0, 1, 0]])
    loss, n = response_nll(logits, ids, torch.tensor([[0, 1, 1]]))
    assert n == 2
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)
    loss, n = response_nll(logits, ids, torch.tensor([[0, 0, 1]]))  # token 1 is prompt: not predicted
    assert (n, loss.item()) == (1, pytest.approx(math.log(4 / 3), abs=1e-6))
    loss, n = response_nll(logits, ids, torch.tensor([[0, 0, 0]]))
    assert (n, loss.item()) == (0, 0.0)


def test_response_nll_is_token_mean_across_rows():
    # row 0 has 1 response token with NLL ln 2, row 1 has 3 with NLL ln 2 ... and ln(4/3): the mean is
    # over 4 tokens, not the mean of the two row means.
    a, b = [0.0, 0.0], [math.log(3.0), 0.0]
    logits = torch.tensor([[a, a, a, a], [a, b, b, b]])
    ids = torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0]])
    mask = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1]])
    loss, n = response_nll(logits, ids, mask)
    assert n == 4
    assert loss.item() == pytest.approx((2 * math.log(2) + 2 * math.log(4 / 3)) / 4, abs=1e-6)


def test_collate_masks_prompt_and_padding():
    batch = collate([([1, 5, 6], [7, 2]), ([1, 5], [2])], pad_id=PAD)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 5, 2, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]


def test_batch_indices_cover_each_epoch_once_and_depend_on_seed():
    steps = [batch_indices(10, 4, s, seed=3) for s in range(5)]  # 20 indices = 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert steps == [batch_indices(10, 4, s, seed=3) for s in range(5)]
    assert flat != [i for s in range(5) for i in batch_indices(10, 4, s, seed=4)]


def tiny_model(seed=0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(ModelConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                num_kv_heads=2, head_dim=16, tie_word_embeddings=True))


def random_examples(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p, r = torch.randint(1, 6, (2,), generator=g).tolist()
        out.append((torch.randint(3, 12, (p,), generator=g).tolist(), torch.randint(3, 12, (r,), generator=g).tolist()))
    return out


def test_micro_batch_accumulation_equals_full_batch():
    examples = random_examples(12)  # unequal response lengths: per-micro-batch means would differ
    grads = {}
    for micro in (12, 5, 1):
        model = tiny_model().double()
        stats = accumulate_gradients(model, examples, micro, PAD)
        grads[micro] = ([p.grad.clone() for p in model.parameters()], stats["loss"])
    full, full_loss = grads[12]
    for micro in (5, 1):
        got, loss = grads[micro]
        assert loss == pytest.approx(full_loss, abs=1e-9)
        for g_full, g in zip(full, got):
            assert torch.allclose(g, g_full, atol=1e-6, rtol=0)


def test_padding_does_not_change_the_loss():
    model = tiny_model()
    short = ([1, 4, 5], [6, 2])
    alone = accumulate_gradients(model, [short], 1, PAD)["loss"]
    padded = collate([short, ([1, 4, 5, 6, 7, 8, 9], [6, 2])], PAD)
    with torch.no_grad():
        logits = model(padded["input_ids"], padded["attention_mask"])
    loss, _ = response_nll(logits[:1], padded["input_ids"][:1], padded["response_mask"][:1])
    assert loss.item() == pytest.approx(alone, abs=1e-5)


def test_sft_learns_a_tiny_copy_task():
    # response = the prompt's digit repeated twice; 9 distinct examples
    examples = [([1, d], [d, d, 2]) for d in range(3, 12)]
    model = tiny_model()
    cfg = SFTConfig(steps=40, batch_size=9, micro_batch_size=4, lr=1e-2, warmup_steps=5, seed=0)
    history = train_sft(model, examples, cfg, PAD)
    assert history[0]["loss"] > 1.5
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    assert history[-1]["lr"] < cfg.lr * 0.01


def test_sft_is_seeded():
    examples = random_examples(20)
    runs = []
    for _ in range(2):
        model = tiny_model()
        train_sft(model, examples, SFTConfig(steps=3, batch_size=8, micro_batch_size=3, seed=1), PAD)
        runs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
