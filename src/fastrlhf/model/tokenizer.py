"""Tokenizers: any HF tokenizer directory (tokenizer.json), chat templates applied when present.

`Tokenizer` wraps `transformers.AutoTokenizer` (fast tokenizers only) with the three things the rest
of fastrlhf needs: prompt text → ids (through the chat template when the directory has one and the
caller asks for it), ids → text, and the stop / pad token ids. Bad directories are `UserError`s.
`vocab_size` is the number of ids the tokenizer can produce (highest id + 1, added tokens included);
`decode` drops ids outside it, so ids of a padded model vocabulary (model vocab_size larger than the
tokenizer's, e.g. Qwen2's 151936 for 151665 tokens) decode to nothing. `model.hf_io.check_vocab`
compares the two sizes when a model and its tokenizer are loaded together.

Left out: slow (sentencepiece-only) tokenizers and multimodal processors.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastrlhf.errors import UserError


class Tokenizer:
    def __init__(self, hf_tokenizer, source: str = ""):
        self.hf = hf_tokenizer
        self.source = source
        ids = hf_tokenizer.get_vocab().values()
        self._id_bound = max(len(hf_tokenizer), max(ids, default=-1) + 1)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    @property
    def eos_token_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def pad_token_id(self) -> int:
        pad = self.hf.pad_token_id
        return pad if pad is not None else (self.hf.eos_token_id or 0)

    @property
    def vocab_size(self) -> int:
        """Ids this tokenizer can produce: 0 .. vocab_size - 1 (added tokens included)."""
        return self._id_bound

    def stop_token_ids(self) -> list[int]:
        ids = {self.hf.eos_token_id} if self.hf.eos_token_id is not None else set()
        for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            tid = self.hf.convert_tokens_to_ids(token) if token in self.hf.get_vocab() else None
            if tid is not None:
                ids.add(tid)
        return sorted(ids)

    def encode_prompt(self, prompt: str, use_chat_template: bool | None = None) -> list[int]:
        """Prompt text → ids. With a chat template (default: when the tokenizer has one) the prompt is
        one user turn followed by the generation prompt."""
        if use_chat_template is None:
            use_chat_template = self.has_chat_template
        if use_chat_template:
            ids = self.hf.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return list(self.hf(prompt, add_special_tokens=True)["input_ids"])

    def encode(self, text: str) -> list[int]:
        return list(self.hf(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """ids → text; ids the tokenizer does not know (a padded model vocabulary's extra rows) decode to nothing."""
        bound = self._id_bound
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.hf.decode([i for i in ids if 0 <= i < bound], skip_special_tokens=skip_special_tokens)

    def save(self, out_dir: str | os.PathLike) -> None:
        self.hf.save_pretrained(str(out_dir))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model directory does not exist")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory (expected a Hugging Face model directory with tokenizer.json)")
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"{path}: no tokenizer.json (fastrlhf needs a fast Hugging Face tokenizer directory)")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # transformers raises many types for a broken directory
        raise UserError(f"{path}: cannot load tokenizer ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Tokenizer(hf, source=str(path))
