"""A character-level tokenizer for the built-in tasks, saved in Hugging Face format.

Every character is one token. The vocabulary is, in this id order:
`<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, then the digits 0-9, `+ - * =`, space and newline.
Any other character encodes as `<unk>`. Encoding prepends `<bos>` (as Llama tokenizers do);
`<eos>` is never added by the tokenizer: SFT targets and the rollout engine add / stop on it.
Decoding concatenates characters with nothing in between.

Built with the `tokenizers` library (WordLevel model over single characters) and written as
tokenizer.json + tokenizer_config.json + special_tokens_map.json, so both
`tokenizers.Tokenizer.from_file(dir/"tokenizer.json")` and
`transformers.AutoTokenizer.from_pretrained(dir)` load it with pad / bos / eos / unk set.

Left out: byte fallback, letters, chat templates: the built-in tasks do not need them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
TASK_CHARACTERS = tuple("0123456789") + tuple("+-*=") + (" ", "\n")
MODEL_MAX_LENGTH = 512


def build_char_tokenizer(characters: tuple[str, ...] = TASK_CHARACTERS) -> Tokenizer:
    """A `tokenizers.Tokenizer` with one token per character of `characters` plus the specials."""
    if len(set(characters)) != len(characters) or any(len(c) != 1 for c in characters):
        raise ValueError("characters must be distinct single characters")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(characters))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def _special_tokens_map() -> dict[str, str]:
    return {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS, "unk_token": UNK}


def save_hf_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write `tokenizer` as an HF tokenizer directory (created if missing); returns the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **_special_tokens_map(),
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
    }
    _write_json(directory / "tokenizer_config.json", tokenizer_config)
    _write_json(directory / "special_tokens_map.json", _special_tokens_map())
    return directory


def build_task_tokenizer(directory: str | Path) -> Path:
    """Build the built-in tasks' character tokenizer and save it to `directory`."""
    return save_hf_tokenizer(build_char_tokenizer(), directory)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
