"""Prompt sizing (daemon/prompt_sizing.py) on the real model's vocabulary: which form a request gets
from what the caches hold and the measured prefill rate, and that each form keeps its start while the
user types. The caches are the daemon's CachePool over engine TokenLedgers (the token bookkeeping every
runner's cache has; no K/V is needed to decide a form). The daemon end to end: tests/test_real_daemon.py."""
from __future__ import annotations

import pytest

import protocol
from daemon.model_load import CachePool
from daemon.prompt import PromptBuilder, pretrained_format, protect_special_tokens
from daemon.prompt_sizing import MIN_WINDOW, PrefillRate, PromptSizer, window_key
from engine.generate import DecodeResult
from engine.kv_cache import TokenLedger

KEY = ("complete", "file:///m.py")


class Ledgers:
    """What CachePool asks of a model: new caches (here the token ledger alone)."""

    def new_cache(self, size: int) -> TokenLedger:
        return TokenLedger(size)


@pytest.fixture(scope="module")
def builder(real_gguf):
    from textkit.tokenizer import Tokenizer
    tok = Tokenizer(real_gguf)
    protect_special_tokens(tok)
    return PromptBuilder(tok, pretrained_format(tok, "auto"))


def module(n: int = 60) -> str:
    return "".join(f"def handler_{i}(request, value={i}):\n    result = request.process(value) + {i}\n"
                   f"    return result\n\n" for i in range(n))


def place(extra: str = ""):
    text = module()
    cut = text.index("def handler_40")
    return text[:cut] + "def main(argv):\n    args = " + extra, "\n" + text[cut:]


def slow_sizer() -> PromptSizer:
    """A sizer that measured a CPU's rate: ~80 tokens a second, 100 ms a forward."""
    s = PromptSizer()
    s.rate.calibrate(DecodeResult(tokens=[], stop_reason="", mode="ar", prefill_tokens=16, prefill_ms=300.0),
                     DecodeResult(tokens=[], stop_reason="", mode="ar", prefill_tokens=96, prefill_ms=1300.0))
    return s


def choose(sizer, builder, pool, extra="", budget_ms=300):
    prefix, suffix = place(extra)
    full = builder.build(prefix, suffix, 1024)
    return sizer.choose(builder, KEY, full, pool, protocol.Complete(prefix=prefix, suffix=suffix), budget_ms, 1024), full


def common(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_the_rate_is_fitted_and_follows_the_machine_within_bounds():
    r = PrefillRate()
    assert r.tokens_within(300) is None                     # nothing measured: no limit
    r.calibrate(DecodeResult(tokens=[], stop_reason="", mode="ar", prefill_tokens=16, prefill_ms=300.0),
                DecodeResult(tokens=[], stop_reason="", mode="ar", prefill_tokens=96, prefill_ms=1300.0))
    assert r.ms_per_token == pytest.approx(12.5) and r.fixed_ms == pytest.approx(100.0)
    assert r.tokens_within(300) == 16
    r.observe(100, 100 + 100 * 25.0)                        # a prefill twice as slow: a step towards it
    assert 12.5 < r.ms_per_token < 25.0
    before = r.ms_per_token
    r.observe(100, 100 + 100 * 1000.0)                      # a stall: moves the estimate by 30 % at most
    assert r.ms_per_token <= before * 1.3 + 1e-9
    r.observe(4, 5000.0)                                    # too short to say anything
    assert r.samples == 3


def test_a_cold_place_gets_the_window_and_typing_keeps_its_start(builder):
    sizer, pool = slow_sizer(), CachePool(Ledgers(), 4)
    first, full = choose(sizer, builder, pool)
    assert first.form == "window" and full.form == "full"
    assert len(first.ids) <= MIN_WINDOW * 1.5 < 700 < len(full.ids)
    assert first.prefix_clipped_lines > 0 and first.ids[-2:] == full.ids[-2:]     # the same FIM tail
    prev = first
    for typed in ("p", "pa", "pars", "parse(argv)", "parse(argv)\n    ", "parse(argv)\n    run("):
        nxt, _ = choose(sizer, builder, pool, typed)
        assert nxt.form == "window"
        # only the end changes: the window's first line stays where it was
        assert common(prev.ids, nxt.ids) >= len(prev.ids) - 4, (typed, common(prev.ids, nxt.ids), len(prev.ids))
        prev = nxt
    assert sizer.counts == {"full": 0, "window": 7}


def test_the_full_form_once_cached_stays_and_the_window_cache_goes(builder):
    sizer, pool = slow_sizer(), CachePool(Ledgers(), 4)
    win, full = choose(sizer, builder, pool)
    pool.get(window_key(KEY), 512).commit(win.ids)
    pool.get(KEY, 2048).commit(full.ids[:len(full.ids) // 2])     # a prefetch got half way: still the window
    again, _ = choose(sizer, builder, pool, "p")
    assert again.form == "window"
    pool.get(KEY, 2048).commit(full.ids[len(full.ids) // 2:])      # ... and finished
    for typed in ("p", "pa", "par"):
        got, full_now = choose(sizer, builder, pool, typed)
        assert got is full_now and got.form == "full"
        assert common(full.ids, got.ids) >= len(full.ids) - 4       # the full form keeps its start too
        assert pool.peek(window_key(KEY)) is None


def test_a_short_file_and_sizing_off_get_the_full_prompt(builder):
    sizer, pool = slow_sizer(), CachePool(Ledgers(), 4)
    prefix, suffix = "import os\n\ndef main():\n    x = ", "\n"
    full = builder.build(prefix, suffix, 1024)
    got = sizer.choose(builder, KEY, full, pool, protocol.Complete(prefix=prefix, suffix=suffix), 300, 1024)
    assert got is full                                   # shorter than any window
    off, full2 = choose(sizer, builder, pool, budget_ms=0)
    assert off is full2 and PromptSizer().fresh_tokens(300) is None


def test_the_pretrained_prefix_clip_moves_in_steps_while_typing(builder):
    """The full prompt of a long file keeps its first line while the cursor's line grows (before, the
    clip counted back from the cursor and moved a line whenever the typed tokens crossed the budget)."""
    text = module(90)
    cut = text.index("def handler_80")
    base = text[:cut] + "def main(argv):\n    args = "
    prev = builder.build(base, "\n", 1024)
    assert prev.prefix_clipped_lines > 0
    for typed in ("parse", "parse(argv, strict=True, verbose=False, limit=10)",
                  "parse(argv, strict=True, verbose=False, limit=10)\n    x = 1\n    y = "):
        nxt = builder.build(base + typed, "\n", 1024)
        assert nxt.prefix_clipped_lines == prev.prefix_clipped_lines, typed
        assert common(prev.ids, nxt.ids) >= len(prev.ids) - 4
        prev = nxt


def test_tricode_models_window_form_is_their_own_fim_layout():
    """With tricode's own tokenizer (the embedded model's) the full prompt keeps its window layout
    (other files and the file's head first); the window form is its FIM layout of the cursor's window
    alone, and keeps its start while the user types."""
    from pathlib import Path
    from textkit.tokenizer import Tokenizer
    tok = Tokenizer(Path(__file__).resolve().parent.parent / "engine" / "embedded")
    protect_special_tokens(tok)
    b = PromptBuilder(tok)
    assert b.fim_format is None and tok.has_fim
    sizer, pool = slow_sizer(), CachePool(Ledgers(), 4)
    prefix, suffix = place()
    full = b.build(prefix, suffix, 1024, [("other.py", "OTHER = 1\n" * 20)], layout="window")
    win = sizer.choose(b, KEY, full, pool, protocol.Complete(prefix=prefix, suffix=suffix), 300, 1024)
    assert full.context_files == ["other.py"] and full.stable_tokens > 1
    assert win.form == "window" and win.context_files == [] and len(win.ids) < len(full.ids) // 2
    assert win.ids[0] == tok.bos_id and win.ids[1] == tok.fim["suffix"] and win.ids[-1] == tok.fim["middle"]
    again = sizer.choose(b, KEY, b.build(prefix + "pa", suffix, 1024, layout="window"), pool,
                         protocol.Complete(prefix=prefix + "pa", suffix=suffix), 300, 1024)
    assert again.form == "window" and common(win.ids, again.ids) >= len(win.ids) - 2
