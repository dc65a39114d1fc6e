"""Text <-> token ids for a checkpoint: its `tokenizer.json` and the special ids from `config.json`,
or a GGUF file's own vocabulary (textkit/gguf_tokenizer.py).

Fill-in-the-middle tokens are looked up by the names the common code tokenizers use; a checkpoint
without them can still complete from the prefix alone (`has_fim` is False).
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

_FIM_NAMES = {
    "prefix": ("<|fim_prefix|>", "<fim_prefix>", "[PREFIX]", "<PRE>"),
    "suffix": ("<|fim_suffix|>", "<fim_suffix>", "[SUFFIX]", "<SUF>"),
    "middle": ("<|fim_middle|>", "<fim_middle>", "[MIDDLE]", "<MID>"),
    "file_sep": ("<|file_sep|>", "<file_sep>"),
    "repo_name": ("<|repo_name|>", "<repo_name>"),
}


class TokenizerError(Exception):
    pass


class Tokenizer:
    chat_template: str | None = None      # set from a GGUF file (textkit/gguf_tokenizer.py)
    special_tokens: dict[str, int] = {}   # control and user-defined tokens by text (GGUF)

    def __init__(self, checkpoint_dir: str | Path):
        d = Path(checkpoint_dir)
        if d.is_file():                   # a GGUF file carries its own vocabulary
            from textkit.gguf_tokenizer import load_into
            return load_into(self, d)
        path = d / "tokenizer.json"
        try:
            self._tok = _HFTokenizer.from_file(str(path))
            # text that happens to spell a special token ("<|endoftext|>" in a file) stays text
            self._tok.encode_special_tokens = True
        except Exception as e:
            raise TokenizerError(f"{path}: cannot be loaded by the tokenizers library ({e})") from None
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{d / 'config.json'}: cannot be read ({e})") from None
        eos = cfg.get("eos_token_id", 0)
        self.eos_id: int = eos[0] if isinstance(eos, list) else eos
        self.bos_id: int = cfg.get("bos_token_id", self.eos_id)
        # an AR checkpoint (engine/config.py AR_MODEL_TYPES) has no mask token, whatever its dict says;
        # 100 is the NLD layout's default
        ar = cfg.get("model_type") in ("qwen2", "llama", "mistral")
        self.mask_id: int | None = None if ar else cfg.get("mask_token_id", 100)
        self.fim = {role: self._find(names) for role, names in _FIM_NAMES.items()}

    def _find(self, names) -> int | None:
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        return None

    @property
    def has_fim(self) -> bool:
        return all(self.fim[r] is not None for r in ("prefix", "suffix", "middle"))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, run in parallel by the tokenizers library."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text` (a special token's name), None if the vocabulary lacks it."""
        if text in self.special_tokens:
            return self.special_tokens[text]
        return self._tok.token_to_id(text)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)
