"""HF tokenizer directories: plain prompts, chat templates, stop ids, bad directories."""

import json

import pytest

from fastrlhf.errors import UserError
from fastrlhf.model.tokenizer import load_tokenizer
from fastrlhf.tasks.tokenizer_builder import build_task_tokenizer


def test_plain_prompt_gets_bos_and_roundtrips(tmp_path):
    tok = load_tokenizer(build_task_tokenizer(tmp_path / "tok"))
    ids = tok.encode_prompt("12+7=")
    assert not tok.has_chat_template
    assert ids[0] == tok.hf.bos_token_id and len(ids) == 6
    assert tok.decode(ids) == "12+7="
    assert tok.eos_token_id in tok.stop_token_ids()


def test_chat_template_is_applied_when_present(tmp_path):
    path = build_task_tokenizer(tmp_path / "tok")
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    # a template in the task's tiny alphabet: "= <prompt> =" followed by the generation prompt "+"
    cfg["chat_template"] = "{% for m in messages %}={{ m['content'] }}={% endfor %}{% if add_generation_prompt %}+{% endif %}"
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(path)
    assert tok.has_chat_template
    assert tok.decode(tok.encode_prompt("1+1")) == "=1+1=+"
    assert tok.decode(tok.encode_prompt("1+1", use_chat_template=False)) == "1+1"


def test_bad_tokenizer_directories(tmp_path):
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(UserError, match="cannot load tokenizer") as err:
        load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)
