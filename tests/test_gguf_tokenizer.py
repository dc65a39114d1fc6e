"""The tokenizer built from a GGUF file's own vocabulary gives llama.cpp's token ids on real code.

Compared with llama.cpp's own tokenizer (llama-cpp-python, vocab_only) on the real Qwen2.5-Coder
0.5B GGUF: a fixed sample of 300 Python standard-library files (the first 4,000 characters of each),
plus hand-written edge cases and text that spells special tokens."""
import sysconfig
from pathlib import Path

import llama_cpp                 # the reference; installed by `make test` (the test extra)
import pytest

from textkit.gguf_tokenizer import read_metadata
from textkit.tokenizer import Tokenizer, TokenizerError

N_FILES, CHARS = 300, 4000


@pytest.fixture(scope="module")
def both(real_gguf):
    ref = llama_cpp.Llama(model_path=str(real_gguf), vocab_only=True, verbose=False)
    return Tokenizer(real_gguf), ref


def _llama_ids(ref, text: str, special: bool = False) -> list[int]:
    return ref.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def _stdlib_sample() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts:
            continue
        try:
            texts.append((str(p.relative_to(root)), p.read_text(encoding="utf-8")[:CHARS]))
        except (UnicodeDecodeError, OSError):
            continue                     # a few test files are deliberately not UTF-8
    step = max(1, len(texts) // N_FILES)
    return [t for t in texts[::step] if t[1]][:N_FILES]


def test_same_ids_as_llama_cpp_on_stdlib_code(both):
    tok, ref = both
    sample = _stdlib_sample()
    assert len(sample) == N_FILES
    differ, not_round_trip, n_tokens = [], [], 0
    for name, text in sample:
        ours = tok.encode(text)
        n_tokens += len(ours)
        if ours != _llama_ids(ref, text):
            differ.append(name)
        if tok.decode(ours) != text:
            not_round_trip.append(name)
    print(f"{len(sample)} files, {n_tokens} tokens: {len(differ)} differ from llama.cpp, "
          f"{len(not_round_trip)} do not round-trip")
    assert differ == [] and not_round_trip == []
    assert n_tokens > 200_000           # the comparison covered real volume


EDGE_CASES = [
    "x = 1\r\n\r\ny = 2\n",                        # CRLF
    "\tif a:\n\t\treturn   b  \n\n\n\n",            # tabs, trailing and repeated blanks
    "        \n    pass",                           # whitespace-only lines
    "n = 1234567890 + 3.14159e-10",                 # digits split one by one (qwen2)
    "s = 'don't' \"I'LL\" we've it's",              # contractions, case-insensitive
    "# 中文注释: 你好，世界 🙂 emoji ünïcödé",        # CJK, emoji, accents
    "ÀÉÎõü ß ﬁ Å",                                  # no NFC/NFKC normalisation in llama.cpp
    "a\u00a0b\u2003c\u200bd",                       # non-ASCII spaces
    "",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_match_llama_cpp(both, text):
    tok, ref = both
    assert tok.encode(text) == _llama_ids(ref, text)
    assert tok.decode(tok.encode(text)) == text


def test_text_spelling_special_tokens_stays_text(both):
    """`<|endoftext|>` in a file is text, as llama.cpp tokenizes it with special=False; with
    special=True llama.cpp makes it the one control token, which tricode never does for file text."""
    tok, ref = both
    text = 'eos = "<|endoftext|>"  # <|im_start|>user <|fim_prefix|>x<|fim_suffix|><|file_sep|>\n'
    ours = tok.encode(text)
    assert ours == _llama_ids(ref, text, special=False)
    specials = set(tok.special_tokens.values())
    assert not specials & set(ours)
    assert tok.decode(ours) == text
    assert tok.special_tokens["<|endoftext|>"] in _llama_ids(ref, text, special=True)


def test_special_ids_and_chat_template_from_the_file(both, real_gguf):
    tok, ref = both
    # the ids llama.cpp gives each special token's text when asked to parse specials
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
                 "<|fim_suffix|>", "<|repo_name|>", "<|file_sep|>"):
        assert _llama_ids(ref, name, special=True) == [tok.special_tokens[name]], name
    assert tok.has_fim
    assert [tok.fim[r] for r in ("prefix", "middle", "suffix", "file_sep", "repo_name")] == [
        tok.special_tokens[n] for n in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>",
                                        "<|repo_name|>")]
    assert tok.eos_id == ref.token_eos() == tok.special_tokens["<|im_end|>"]
    assert tok.bos_id == ref.token_bos()
    assert tok.special_tokens["<|endoftext|>"] in tok.eot_ids
    assert tok.vocab_size == ref.n_vocab() == 151_936
    assert tok.chat_template == ref.metadata["tokenizer.chat_template"]
    assert "<|im_start|>" in tok.chat_template
    # control tokens decode to nothing (skipped), as a completion's end marker should
    assert tok.decode(tok.encode("a") + [tok.eos_id]) == "a"
    md = read_metadata(real_gguf)
    assert md["tokenizer.ggml.pre"] == "qwen2" and md["general.architecture"] == "qwen2"


def test_not_a_gguf_file_is_a_clear_error(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(TokenizerError, match="not a GGUF file"):
        Tokenizer(p)
    p.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (5).to_bytes(8, "little"))
    with pytest.raises(TokenizerError, match="truncated or corrupt"):
        Tokenizer(p)
