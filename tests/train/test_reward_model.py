"""Reward-model training and scoring: learns an easy rule, micro-batching is exact, padding-invariant
scores, and transformers' AutoModelForSequenceClassification reads the saved RM the same way."""

import random

import pytest
import torch

from fastrlhf.model.config import ModelConfig
from fastrlhf.model.decoder import CausalLM
from fastrlhf.model.hf_io import copy_tokenizer_files, load_model, save_model
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer
from fastrlhf.train import reward_model as rm

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return build_task_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def tiny_rm(tok, seed=0) -> CausalLM:
    torch.manual_seed(seed)
    policy = CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2,
                                  num_heads=2, num_kv_heads=2, head_dim=16, tie_word_embeddings=True,
                                  bos_token_id=1, eos_token_id=tok.eos_token_id))
    return rm.reward_model_from_policy(policy, tok.pad_token_id, seed=seed)


def last_digit_pairs(n, seed):
    """Easy rule: the completion with the larger last digit is chosen (completions 1-4 digits long)."""
    rng, pairs = random.Random(seed), []
    while len(pairs) < n:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 5)))
        a, b = ("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4))) for _ in range(2))
        if a[-1] != b[-1]:
            chosen, rejected = (a, b) if a[-1] > b[-1] else (b, a)
            pairs.append({"prompt": digits + "=", "chosen": chosen, "rejected": rejected})
    return pairs


def test_learns_an_easy_rule(tok):
    model = tiny_rm(tok)
    train = rm.encode_pairs(tok, last_digit_pairs(400, seed=0))
    held_out = rm.encode_pairs(tok, last_digit_pairs(200, seed=1))
    before = rm.evaluate_pairs(model, held_out, tok.pad_token_id)["accuracy"]
    cfg = rm.RewardModelConfig(steps=80, batch_size=32, micro_batch_size=32, lr=3e-3, warmup_steps=5, seed=0, eval_every=40)
    history = rm.train_reward_model(model, train, cfg, tok.pad_token_id, held_out, log=None)
    assert "eval_accuracy" in history[39] and "eval_accuracy" in history[-1] and "eval_accuracy" not in history[0]
    assert before < 0.7 and history[-1]["eval_accuracy"] > 0.8, (before, history[-1]["eval_accuracy"])


def test_micro_batches_give_the_full_batch_gradient(tok):
    pairs = rm.encode_pairs(tok, last_digit_pairs(7, seed=2))

    def grads(micro):
        model = tiny_rm(tok, seed=3)
        stats = rm.accumulate_gradients(model, pairs, micro, tok.pad_token_id)
        return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full_stats, full = grads(7)
    micro_stats, micro = grads(3)  # chunks of 3, 3, 1 pairs with different padded lengths
    assert full.keys() == micro.keys() and "score.weight" in full
    for name in full:
        torch.testing.assert_close(micro[name], full[name], atol=1e-6, rtol=1e-5)
    assert micro_stats["loss"] == pytest.approx(full_stats["loss"], abs=1e-6)
    _, halved = grads(1)
    assert not torch.allclose(halved["score.weight"] * 2, full["score.weight"])  # the check can fail


def test_scores_read_the_last_real_token_and_ignore_padding(tok):
    model = tiny_rm(tok, seed=4)
    prompts, completions = ["12=", "98765=", "3="], ["21", "", "33333"]
    together = rm.reward_model_scores(model, tok, prompts, completions)
    alone = torch.cat([rm.reward_model_scores(model, tok, [p], [c]) for p, c in zip(prompts, completions)])
    assert together.shape == (3,)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    ids = rm.encode_row(tok, "12=", "21")
    assert ids[-1] == tok.eos_token_id and ids[0] == tok.hf.bos_token_id
    hidden = model.forward_hidden(torch.tensor([ids]))
    assert together[0].item() == pytest.approx(model.values(hidden)[0, -1].item(), abs=1e-5)
    assert together[0].item() != pytest.approx(model.values(hidden)[0, -2].item(), abs=1e-5)


def test_saved_rm_scores_the_same_in_transformers(tok, tok_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_rm(tok, seed=5)
    with torch.no_grad():
        model.score.weight.mul_(10)  # spread the scores so a wrong position shows
    out = save_model(model, tmp_path / "rm", extra_files=copy_tokenizer_files(tok_dir))
    prompts, completions = ["7352=", "12=", "90210="], ["2357", "2", ""]
    ours = rm.reward_model_scores(model, tok, prompts, completions)
    reloaded = rm.reward_model_scores(load_model(out), tok, prompts, completions)
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    rows = [rm.encode_row(tok, p, c) for p, c in zip(prompts, completions)]
    input_ids, attention_mask, _ = rm.pad_rows(rows, tok.pad_token_id, "cpu")
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
    assert hf.config.pad_token_id == tok.pad_token_id
    torch.testing.assert_close(reloaded, ours, atol=1e-6, rtol=0)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    assert ours.std() > 0.1
