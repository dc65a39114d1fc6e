"""engine/llama_runner.py: a GGUF model decoded by the unchanged decoders through llama.cpp's kernels.

The model tests load the real Qwen2.5-Coder 0.5B GGUF (the `real_gguf` fixture: pulled by `make test`;
missing is a failure, not a skip)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.generate import Decode, DecodeParams, Forward, generate, run_forwards, step
from engine.lookup import Lookup, sized_draft_length


CODE = '''import os


def read_lines(path):
    with open(path) as f:
        return [line.rstrip("\\n") for line in f]


def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line + "\\n")


class Config:
    def __init__(self, name, size, path):
        self.name = name
        self.size = size
        self.path = path

    def to_dict(self):
        return {"name": self.name, "size": self.size, "path": self.path}

    def from_dict'''

PROMPTS = (CODE, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    for (int i = 0; i < argc; i++) {\n")


@pytest.fixture(scope="module")
def lm(real_gguf):
    from engine.llama_runner import LlamaModel
    m = LlamaModel.load(real_gguf, threads=1, n_ctx=2048, n_seq=4)
    yield m
    m.close()


@pytest.fixture(scope="module")
def vocab(real_gguf):
    from llama_cpp import Llama
    v = Llama(model_path=str(real_gguf), vocab_only=True, verbose=False)
    return lambda text: v.tokenize(text.encode(), add_bos=False, special=False)


def llama_greedy(gguf: Path, ids: list[int], n: int, eos: int) -> list[int]:
    """llama.cpp's own greedy decoding (the high-level Llama object, one token per eval)."""
    from bench.llamacpp import plain_llama
    llm = plain_llama(gguf, n_ctx=1024, n_threads=1, n_threads_batch=1, logits_all=True)
    llm.eval(ids)
    out = []
    while len(out) < n:
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if t == eos:
            break
        out.append(t)
        llm.eval([t])
    return out


# ------------------------------------------------------------------ no model needed


def test_bad_gguf_paths_say_what_is_wrong(tmp_path):
    from engine.llama_runner import LlamaModel, LlamaModelError
    with pytest.raises(LlamaModelError, match="no such file"):
        LlamaModel.load(tmp_path / "missing.gguf")
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(LlamaModelError, match="not a GGUF file"):
        LlamaModel.load(bad)


def test_draft_length_follows_the_cost_curve_and_the_match():
    steep = {1: 1.0, 2: 1.8, 4: 3.2, 8: 6.0}        # a verify costs nearly what it saves
    flat = {1: 1.0, 2: 1.01, 4: 1.03, 8: 1.06}      # verifying is almost free
    assert sized_draft_length(1, steep, 7) == 0     # a weak match earns no draft
    assert sized_draft_length(16, flat, 7) == 7     # a long copy, a cheap verify: the whole draft
    assert sized_draft_length(16, steep, 7) > sized_draft_length(2, steep, 7)
    assert sized_draft_length(0, flat, 7) == 0      # nothing found
    for m in range(20):                             # never more than what was found
        assert 0 <= sized_draft_length(m, flat, 3) <= 3


def test_match_length_counts_the_copied_run():
    #            0  1  2  3  4  5  6  7  8
    lk = Lookup([9, 1, 2, 3, 4, 5, 7, 2, 3])
    assert lk.draft([], 4) == [4, 5, 7, 2]          # the tail "2 3" occurred before at 2..3
    assert lk.match_length() == 2                   # 9 != 7: two tokens agree
    lk2 = Lookup([1, 2, 3, 4, 5, 6, 1, 2, 3, 4])
    assert lk2.draft([], 2) == [5, 6]
    assert lk2.match_length() == 4
    lk3 = Lookup([1, 2, 3])
    assert lk3.draft([], 2) == [] and lk3.match_length() == 0


# ------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_greedy_ar_equals_llama_cpps_own_greedy(lm, vocab):
    for text in PROMPTS[:2]:
        ids = vocab(text)
        r = generate(lm, ids, DecodeParams(mode="ar", max_new_tokens=16))
        assert r.tokens == llama_greedy(lm.path, ids, 16, lm.cfg.eos_token_id), text[:40]
        assert r.prefill_tokens == len(ids) and r.nfe == len(r.tokens)


@pytest.mark.slow
def test_spec_equals_ar_and_drafts_from_the_context(lm, vocab):
    accepted = []
    for text in PROMPTS:
        ids = vocab(text)
        ar = generate(lm, ids, DecodeParams(mode="ar", max_new_tokens=40))
        sp = generate(lm, ids, DecodeParams(mode="spec", max_new_tokens=40))
        assert sp.tokens == ar.tokens, text[:40]
        accepted += sp.accept_lengths
    assert max(accepted) > 1                       # some context draft was accepted
    assert sum(accepted) > len(accepted)           # fewer forwards than tokens overall


@pytest.mark.slow
def test_crop_then_continue_equals_a_fresh_prefill(lm, vocab):
    ids = vocab(CODE)
    a, b, c = ids[:60], ids[60:75], ids[75:85]

    def continue_with_c(cache):
        return run_forwards(lm, [Forward(c, cache, pattern="causal", write=True)])[0]

    def filled(*parts):
        cache = lm.new_cache(256)
        for p in parts:
            run_forwards(lm, [Forward(p, cache, pattern="causal", write=True, last_only=True)])
        return cache

    fresh = continue_with_c(filled(a))
    cache = filled(a, b)
    cache.crop(60)                                  # as a rejected draft or a shorter new prompt does
    cropped = continue_with_c(cache)
    assert cropped.shape == (len(c), lm.n_vocab)
    # a's K/V were computed by the same forward in both caches, so anything b left behind would show;
    # llama.cpp's arithmetic depends on a forward's width, hence the same split on both sides
    assert torch.equal(cropped, fresh)
    assert cache.token_ids == a + c and cache.synced == cache.length == 70
    uncropped = continue_with_c(filled(a, b))       # what the same step sees when b stays
    assert (uncropped[:, :-1] - fresh[:, :-1]).abs().max() > 1.0
    # one prompt forward over a + b, cropped: equal to rounding of a forward of another width
    wide = filled(a + b)
    wide.crop(60)
    assert torch.equal(continue_with_c(wide).argmax(-1), fresh.argmax(-1))


@pytest.mark.slow
def test_prefix_reuse_across_prompts(lm, vocab):
    ids = vocab(CODE)
    cache = lm.new_cache(512)
    first = generate(lm, ids[:100], DecodeParams(mode="spec", max_new_tokens=8), cache=cache)
    second = generate(lm, ids[:80] + vocab("\n\ndef main():\n"), DecodeParams(mode="spec", max_new_tokens=12),
                      cache=cache)
    assert first.tokens and second.reused_tokens == 80
    cold = generate(lm, ids[:80] + vocab("\n\ndef main():\n"), DecodeParams(mode="spec", max_new_tokens=12))
    assert second.tokens == cold.tokens and cold.reused_tokens == 0


@pytest.mark.slow
def test_batched_steps_equal_single_decodes(lm, vocab):
    prompts = [vocab(t) for t in PROMPTS[1:]]
    params = DecodeParams(mode="ar", max_new_tokens=10)
    singles = [generate(lm, p, params).tokens for p in prompts]
    decodes = [Decode(lm, p, params) for p in prompts]
    while not all(d.done for d in decodes):
        step(lm, decodes)
    assert [d.result.tokens for d in decodes] == singles


@pytest.mark.slow
def test_patterns_it_cannot_run_are_refused(lm, vocab):
    from engine.llama_runner import LlamaPatternError
    cache = lm.new_cache(64)
    with pytest.raises(LlamaPatternError, match="causal forwards only"):
        run_forwards(lm, [Forward(vocab("x = 1"), cache, pattern="block", write=False)])
    from engine.generate import ModeError
    with pytest.raises(ModeError, match="no drafter.*supports modes ar, spec"):
        generate(lm, vocab("x = 1"), DecodeParams(mode="diffusion", max_new_tokens=4))


@pytest.mark.slow
def test_spec_equals_ar_with_two_threads_on_a_near_tie(real_gguf):
    """The 4th of bench.llamacpp's held-out tasks (seed 0, 400-token prompts) has two candidates 0.04
    logits apart at its 10th new token; with llama.cpp's flash attention on 2 threads a k-token verify
    and a 1-token AR step summed them in another order and picked differently (spec != ar). The
    runner turns flash attention off; this fails with it on."""
    from bench.llamacpp import Vocab, fim_prompt
    from engine.llama_runner import LlamaModel
    from training import evaluate as ev
    files, _ = ev.read_heldout_files(Path(__file__).resolve().parent.parent / "engine" / "embedded", None)
    vocab = Vocab(real_gguf)
    tasks = ev.make_fim_tasks(files, 6, 0, count_tokens=lambda s: len(vocab.encode(s)), max_line_tokens=22)
    lm = LlamaModel.load(real_gguf, threads=2, n_ctx=1024, n_seq=2)
    try:
        for t in tasks:
            ids = fim_prompt(vocab, t.prefix, t.suffix, 400)
            ar = generate(lm, ids, DecodeParams(mode="ar", max_new_tokens=24))
            sp = generate(lm, ids, DecodeParams(mode="spec", max_new_tokens=24))
            assert sp.tokens == ar.tokens, t.prefix[-80:]
    finally:
        lm.close()


@pytest.mark.slow
def test_thread_count_changes_between_steps_and_keeps_the_output(lm, vocab):
    """The daemon sets llama.cpp's threads before each step (daemon/cpu_share.py); the greedy output
    is that of one thread throughout, and the rule follows the config."""
    from daemon.config import Config
    from daemon.cpu_share import ThreadRule
    ids = vocab(PROMPTS[1])
    one = generate(lm, ids, DecodeParams(mode="ar", max_new_tokens=12)).tokens
    d, n = Decode(lm, ids, DecodeParams(mode="ar", max_new_tokens=12)), 0
    while not d.done:
        lm.set_threads(1 + n % 2)            # 1, 2, 1, 2 ... threads
        step(lm, [d])
        n += 1
    assert d.result.tokens == one
    rule = ThreadRule()
    assert rule.apply(Config(cpu_threads=1), lm) == 1 and lm.threads == 1
    assert rule.status(Config(cpu_threads=1), lm) == {"rule": "fixed 1", "llama_threads": 1}
    import os
    n = rule.apply(Config(), lm)
    assert lm.threads == n and 1 <= n <= (os.cpu_count() or 1)
    assert rule.status(Config(), lm)["rule"] == "idle cores"
    with pytest.raises(ValueError, match="threads must be >= 1"):
        lm.set_threads(0)
    lm.set_threads(1)


@pytest.mark.slow
def test_bench_section_side_by_side_with_memory(real_gguf, tmp_path):
    """`python -m bench.llamacpp` (make bench's section 7) on the real GGUF, tiny: both engines on
    single- and multi-line tasks, tricode's spec equal to its ar, and the daemon's memory."""
    import json
    import subprocess
    import sys
    out = tmp_path / "ll.json"
    proc = subprocess.run([sys.executable, "-m", "bench.llamacpp", "--gguf", str(real_gguf), "--tasks", "2",
                           "--multi-tasks", "1", "--prompt-tokens", "200", "--max-new-tokens", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run, mem = json.loads(out.read_text())
    for part in (run, run["multi"]):
        assert set(part["engines"]) == {"llama.cpp", "tricode ar", "tricode spec"}
        assert part["mismatches_vs_ar"]["tricode spec"] == 0
        assert all(e["prefill_tokens_per_s"] > 0 and e["decode_tokens_per_s"] > 0 for e in part["engines"].values())
    assert run["multi"]["tasks"] == 1 and run["step_costs"]["relative"]["1"] == 1.0
    m = mem["daemon_memory"]
    assert m["completion"] == "result" and 200 < m["rss_mib"] <= m["peak_rss_mib"] < 1536, m
    assert "Multi-line" in proc.stdout and "daemon memory" in proc.stdout
