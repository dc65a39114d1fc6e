"""Text <-> token ids from a GGUF file's own vocabulary, giving the ids llama.cpp gives.

A GGUF file carries its tokenizer as metadata: `tokenizer.ggml.model` (here `gpt2`, byte-level BPE),
`tokenizer.ggml.pre` (the pre-tokenizer: which regex splits text into words before BPE), the tokens,
the merges, a type per token (normal, control, user-defined, byte, unused), the bos/eos/pad ids and
`tokenizer.chat_template`. This module reads that metadata (its own small reader of the GGUF header:
no tensors are touched, nothing is imported from llama.cpp) and builds an equivalent `tokenizers`
Tokenizer: regex split + byte-level + BPE over the file's merges.

Special tokens follow llama.cpp's rule for text tokenized with special=False: control tokens
(`<|endoftext|>`, `<|im_start|>`, ...) written in the text stay text, while user-defined tokens
(Qwen2.5's `<|fim_prefix|>`, `<|file_sep|>`, `<|repo_name|>`, ...) are matched wherever they appear.

Known pre-tokenizers: `qwen2` (checked against llama.cpp on real code, tests/test_gguf_tokenizer.py)
and `llama-bpe` (Llama 3; same construction, not checked here). SentencePiece vocabularies
(`tokenizer.ggml.model` = `llama`) and other pre-tokenizers get a clear error naming them.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

# GGUF metadata value types (the GGUF spec, v2/v3)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

# token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# the regex each pre-tokenizer splits words with (the same language as the HF tokenizer.json files)
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre-tokenizer name -> (split regex, ignore_merges: a whole word in the vocabulary is one token)
PRE_TOKENIZERS = {"qwen2": (_QWEN2, False), "llama-bpe": (_LLAMA3, True)}


class GGUFError(Exception):
    pass


def read_metadata(path: str | Path) -> dict:
    """The key/value metadata of a GGUF file (little-endian, version 2 or 3); arrays become lists."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise GGUFError(f"{path}: cannot be opened ({e})") from None
    with f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (it starts with {bytes(buf[:4])!r})")
        version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {version} (big-endian or unknown); versions 2 and 3 are read")
        pos = 24
        out = {}

        def string(pos):
            (n,) = struct.unpack_from("<Q", buf, pos)
            return buf[pos + 8:pos + 8 + n].decode("utf-8", errors="surrogateescape"), pos + 8 + n

        def value(t, pos):
            if t in _SCALARS:
                fmt = _SCALARS[t]
                return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
            if t == _STRING:
                return string(pos)
            if t == _ARRAY:
                et, n = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if et in _SCALARS:   # numbers in one go
                    fmt = _SCALARS[et]
                    size = struct.calcsize(fmt)
                    vals = list(struct.unpack_from(f"<{n}{fmt[1]}", buf, pos))
                    return vals, pos + n * size
                items = []
                for _ in range(n):
                    v, pos = value(et, pos)
                    items.append(v)
                return items, pos
            raise GGUFError(f"{path}: unknown GGUF value type {t} at byte {pos}")

        try:
            for _ in range(n_kv):
                key, pos = string(pos)
                (t,) = struct.unpack_from("<I", buf, pos)
                out[key], pos = value(t, pos + 4)
        except struct.error as e:
            raise GGUFError(f"{path}: the GGUF header is truncated or corrupt ({e})") from None
        return out


def build(path: str | Path):
    """(tokenizers.Tokenizer, info) for a GGUF file; info holds ids, special tokens, chat template."""
    from tokenizers import Tokenizer as _HFTokenizer

    path = Path(path)
    md = read_metadata(path)
    model = md.get("tokenizer.ggml.model")
    pre = md.get("tokenizer.ggml.pre", "default")
    if model != "gpt2":
        raise GGUFError(f"{path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2', "
                        "is read from GGUF files)")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    regex, ignore_merges = PRE_TOKENIZERS[pre]
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    merges: list[str] = md.get("tokenizer.ggml.merges", [])
    types: list[int] = md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)

    vocab: dict[str, int] = {}
    added = []
    for i, (text, t) in enumerate(zip(tokens, types)):
        if t in (CONTROL, USER_DEFINED):
            added.append({"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": t == CONTROL})
        vocab.setdefault(text, i)
    spec = {
        "version": "1.0",
        "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    }
    try:
        tok = _HFTokenizer.from_str(json.dumps(spec))
    except Exception as e:
        raise GGUFError(f"{path}: its vocabulary cannot be built into a tokenizer ({e})") from None
    # text that spells a control token ("<|endoftext|>" in a file) stays text, as in llama.cpp with
    # special=False; user-defined tokens (FIM, <|file_sep|>) are not "special" here, so they still match
    tok.encode_special_tokens = True
    special = {tokens[a["id"]]: a["id"] for a in added}

    def ident(key):
        v = md.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None else None

    eos = ident("eos_token_id")
    eot = {i for i in (eos, ident("eot_token_id"), ident("eom_token_id")) if i is not None}
    eot |= {special[n] for n in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>") if n in special}
    info = {
        "pre": pre,
        "eos_id": eos if eos is not None else next(iter(sorted(eot)), 0),
        "bos_id": ident("bos_token_id"),
        "pad_id": ident("padding_token_id"),
        "add_bos": bool(md.get("tokenizer.ggml.add_bos_token", False)),
        "eot_ids": frozenset(eot),
        "special_tokens": special,
        "chat_template": md.get("tokenizer.chat_template"),
        "name": md.get("general.name"),
    }
    return tok, info


def load_into(t, path: str | Path) -> None:
    """Fill textkit.tokenizer.Tokenizer `t` from a GGUF file (its hook for a .gguf path)."""
    from textkit.tokenizer import TokenizerError, _FIM_NAMES
    try:
        t._tok, info = build(path)
    except (GGUFError, KeyError) as e:
        raise TokenizerError(str(e) if isinstance(e, GGUFError) else f"{path}: GGUF metadata lacks {e}") from None
    t.eos_id = info["eos_id"]
    t.bos_id = info["bos_id"] if info["bos_id"] is not None else t.eos_id
    t.pad_id = info["pad_id"]
    t.mask_id = None                      # an AR checkpoint has no mask token
    t.eot_ids = info["eot_ids"]           # any of these ends a completion (eos, <|endoftext|>, <|im_end|>)
    t.special_tokens = info["special_tokens"]
    t.chat_template = info["chat_template"]
    t.pre_tokenizer = info["pre"]
    t.fim = {role: t._find(names) for role, names in _FIM_NAMES.items()}
