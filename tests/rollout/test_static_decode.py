"""The static-shape decode of compile mode (`rollout.compile=true`) against plain decoding, with
continuous admission: stop tokens make sequences end at different steps, so sequences are admitted
and prefilled while others are still decoding. The static step is run eagerly (no cold compile)."""

import pytest
from helpers import tiny_model_dir

from fastrlhf.model.hf_io import load_model
from fastrlhf.rollout.engine import RolloutEngine
from fastrlhf.rollout.sampler import SamplingParams

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 1, 2, 3], [3] * 9, [9], [5, 6, 7, 8]]
STOP = 10


@pytest.fixture(scope="module")
def model(tmp_path_factory, single_thread):
    return load_model(tiny_model_dir(tmp_path_factory.mktemp("m"), "llama", vocab_size=11))


def static_engine(model, num_slots, calls):
    """Compile mode's static-shape decode over all slots, run eagerly; appends to `calls` per step."""
    def eager(step):
        return lambda *args: calls.append(1) or step(*args)

    return RolloutEngine(model, num_slots=num_slots, compile=True, compiler=eager)


class AdmissionWatch(RolloutEngine):
    """Counts the steps that admit sequences while other sequences are running."""

    def step(self):
        running = set(self.scheduler.running)
        before = len(self.scheduler.waiting)
        super().step()
        admitted = before - len(self.scheduler.waiting)
        self.admitted_while_decoding = getattr(self, "admitted_while_decoding", 0) + int(bool(admitted and running))


@pytest.mark.parametrize("setting", [dict(temperature=0), dict(temperature=1.0)], ids=str)
def test_static_decode_with_admission_during_decoding_equals_plain(model, setting):
    params = SamplingParams(max_new_tokens=12, n=2, seed=7, stop_token_ids=(STOP,), **setting)
    watch = AdmissionWatch(model, num_slots=3)
    plain = watch.generate(PROMPTS, params)
    assert len(plain) > 3 and watch.admitted_while_decoding > 0  # more sequences than slots, staggered
    assert len({len(s.token_ids) for s in plain}) > 1 and any(s.finish_reason == "stop" for s in plain)
    calls = []
    static = static_engine(model, num_slots=3, calls=calls).generate(PROMPTS, params)
    assert calls  # the static step did the decoding
    for a, b in zip(plain, static):
        assert (a.prompt_index, a.sample_index) == (b.prompt_index, b.sample_index)
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert (a.logprobs - b.logprobs).abs().max() <= 1e-5  # same tokens; float rounding of longer key reductions
