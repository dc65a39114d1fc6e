"""How much of an inline prompt a request gets, so that a cold place does not wait for a full prefill
(issue 22, part 4).

On a CPU llama.cpp prefills the 0.5B at ~60-110 tokens a second (docs/cpu_speed.md): the full prompt of
a completion at a new place (~1,000 tokens) costs 9-17 s, while a keystroke at a warm place costs a few
tokens. So an inline prompt comes in two forms:

  full     what PromptBuilder builds within `context_tokens` (other files, repository snippets, the
           file's far text), kept in the document's cache (the job's `cache_key`), as before
  window   the cursor's window alone: the last lines of the prefix (and the format's suffix part),
           no other files or snippets, about as many tokens as can be prefilled within the budget
           (at least MIN_WINDOW), kept in a cache of its own (`cache_key + ("window",)`) so that what
           the full form already holds survives while the window is used

The rule, per request (`choose`): the full form when the tokens its cache does not hold can be
prefilled within `prefill_budget_ms` at the measured rate; else the window form. Why this keeps prefix
reuse while typing: the full form's cost only shrinks as its cache fills (typing appends a few tokens),
so once it is chosen it stays chosen at that place; the window's first line moves in WINDOW_STEP-line
steps and is kept while the window stays within 1.5x its size, and its size (a multiple of
WINDOW_QUANTUM tokens) is kept per document, so keystrokes at a cold place reuse the window's cache.
The form flips only window -> full (once the full form is cached), never back while the user types
at one place.

What fills the full form: a prefetch with a cursor (the editor plugins' cursor rest, and the worker's
own follow-up after a window answer) runs in stages: the window first (what a completion at that
place would use right away), then the full form, both at the lowest priority, dropped by the next
completion (what they prefilled stays cached and the next prefetch continues from there).

The prefill rate is not configured: `PrefillRate` keeps a running estimate from the daemon's own
prefills (the warm-up and every completion's), so it follows the machine's load. It also sizes the
prefetch's chunks (a real request waits for at most one chunk).

What this module does not know: jobs, queues, sockets (the worker passes keys, caches and prompts);
how a prompt is laid out (daemon/prompt builds both forms).
"""
from __future__ import annotations

from daemon.prompt import CURSOR_LINE_ALLOWANCE, WINDOW_STEP, PromptBuilder, _split_lines

MIN_WINDOW = 256          # tokens: the window form is never shorter, whatever the rate (its quality: docs/cpu_speed.md)
WINDOW_QUANTUM = 64       # tokens: the window's size moves in these steps
WINDOW_SLACK = 0.5        # a window's start is kept while it holds up to (1 + this) x its size
MIN_SAMPLE = 16           # prefills shorter than this say little about the rate (fixed costs dominate)
RATE_WEIGHT = 0.3         # weight of a new sample in the running estimate
MIN_CHUNK, MAX_CHUNK = 16, 64   # a prefetch chunk: the tokens prefilled within the budget (a request waits one)


class PrefillRate:
    """A running estimate of the loaded runner's prefill cost: a forward's fixed cost (ms) and its cost
    per token (ms), as `calibrate` fits them from two warm prefills of different lengths at load; every
    later prefill of MIN_SAMPLE tokens or more moves the per-token cost (RATE_WEIGHT), so that the
    estimate follows the machine's load (a prefill that shared its rounds with other decodes is not
    counted: its time holds theirs). None until measured."""

    def __init__(self):
        self.fixed_ms = 0.0
        self.ms_per_token: float | None = None
        self.samples = 0

    def calibrate(self, short, long) -> None:
        """Fit both costs anew (a model was loaded) from a short and a long prefill's results
        (`prefill_tokens`, `prefill_ms`)."""
        (n1, t1), (n2, t2) = ((r.prefill_tokens, r.prefill_ms) for r in (short, long))
        if n2 > n1 and t2 > 0:
            per = max((t2 - t1) / (n2 - n1), t2 / n2 / 4)      # noise may make the difference tiny
            self.fixed_ms, self.ms_per_token = max(t2 - per * n2, 0.0), per
            self.samples += 1

    def observe(self, tokens: int, ms: float) -> None:
        if tokens < MIN_SAMPLE or ms <= 0:
            return
        v = max(ms - self.fixed_ms, ms / 4) / tokens
        if self.ms_per_token is not None:      # one odd sample (a stall, a busy machine) moves it by 30 % at most
            v = min(max(v, self.ms_per_token / 2), self.ms_per_token * 2)
        self.ms_per_token = v if self.ms_per_token is None else (1 - RATE_WEIGHT) * self.ms_per_token + RATE_WEIGHT * v
        self.samples += 1

    def tokens_within(self, ms: float) -> int | None:
        """How many tokens one prefill runs in `ms` milliseconds; None before the first measurement."""
        return None if self.ms_per_token is None else max(int((ms - self.fixed_ms) / self.ms_per_token), 0)

    def describe(self) -> dict:
        return {"tokens_per_s": round(1e3 / self.ms_per_token, 1) if self.ms_per_token else None,
                "fixed_ms": round(self.fixed_ms, 1), "samples": self.samples}


def window_key(key: tuple) -> tuple:
    """The pool key of a document's window-form cache."""
    return key + ("window",)


def pool_key(key: tuple, prompt) -> tuple:
    """The cache a prompt of this form runs on."""
    return window_key(key) if getattr(prompt, "form", "full") == "window" else key


class PromptSizer:
    """Chooses the form of an inline prompt (see the module docstring); one per worker."""

    def __init__(self):
        self.rate = PrefillRate()
        self.windows: dict[tuple, tuple[int, int]] = {}     # document key -> (window size, first line)
        self.counts = {"full": 0, "window": 0}

    def fresh_tokens(self, budget_ms: int) -> int | None:
        """Tokens a request may prefill; None = no limit (sizing off, or no rate measured yet)."""
        return None if budget_ms <= 0 else self.rate.tokens_within(budget_ms)

    def chunk(self, budget_ms: int, default: int = MAX_CHUNK) -> int:
        """A prefetch chunk: what the runner prefills within the budget (MIN_CHUNK..MAX_CHUNK), since a
        request that arrives meanwhile waits for the chunk in flight. (Smaller chunks cost more per token
        on a CPU, where each forward reads every weight once: 72 vs 85 tokens/s for 32 vs 64 here.)"""
        n = self.fresh_tokens(budget_ms)
        return default if n is None else max(MIN_CHUNK, min(MAX_CHUNK, n))

    def window(self, builder: PromptBuilder, key: tuple, prefix: str, suffix: str, fresh: int, label: str,
               budget: int):
        """The window form at this place: the document's last window size and start when they still
        fit, else a size from `fresh` and a start from the prefix (see window_start)."""
        size, prev = self.windows.get(key, (0, None))
        if not size:
            size = max(MIN_WINDOW, fresh // WINDOW_QUANTUM * WINDOW_QUANTUM)
        size = min(size, budget // 2)
        lines = _split_lines(prefix)
        c = window_start(builder, lines, prefix.endswith("\n"), size, prev)
        if len(self.windows) > 512:               # bounded: documents long closed are forgotten
            self.windows.clear()
        self.windows[key] = (size, c)
        text = "".join(lines[c:])
        if builder.fim_format is not None:        # a pretrained format: room for the window (not clipped
            prompt = builder.build(text, suffix, 2 * size + 96, (), label=label)   # again), a quarter suffix
        else:                                     # tricode's layout: FIM, the suffix's share of the window
            prompt = builder.build(text, suffix, size + size // 2 + 16, (), layout="contiguous", label=label)
        prompt.form = "window"
        prompt.prefix_clipped_lines += c
        return prompt

    def choose(self, builder: PromptBuilder, key: tuple, full, pool, msg, budget_ms: int, budget: int,
               label: str = "", request: bool = True):
        """The prompt a completion at `msg`'s place gets: `full`, or its window form (`form = "window"`).
        `pool`: the worker's CachePool (looked into, not taken from). For a `request` (not a prefetch's
        look ahead) the choice is counted, and once the full form is chosen the window cache is dropped."""
        fresh = self.fresh_tokens(budget_ms)
        if fresh is None or len(full.ids) - _reuse(pool.peek(key), full.ids) <= fresh:
            if request:
                self.counts["full"] += 1
                if self.windows.pop(key, None) is not None:
                    pool.drop(window_key(key))
            return full
        win = self.window(builder, key, msg.prefix, msg.suffix, fresh, label, budget)
        form = "full" if len(win.ids) >= len(full.ids) else "window"     # a short file: the window is all
        self.counts[form] += request
        return full if form == "full" else win

    def describe(self) -> dict:
        return {"prefill_rate": self.rate.describe(), "forms": dict(self.counts)}


def _reuse(cache, ids) -> int:
    return 0 if cache is None else cache.common_prefix(ids)


def window_start(builder: PromptBuilder, lines: list[str], ends_line: bool, size: int, prev: int | None) -> int:
    """The window's first line: `prev` while the window from it holds between half and (1 + WINDOW_SLACK)
    times `size` tokens (counted over whole lines, the cursor's line a fixed allowance, so typing within
    a line never moves it); else the fewest whole lines that hold `size` tokens, their start rounded
    down to a multiple of WINDOW_STEP when that stays within the slack."""
    whole = len(lines) - (0 if ends_line else 1)
    counts = builder._line_counts(lines[:whole])
    cap = size + int(size * WINDOW_SLACK)

    def tokens(c: int) -> int:
        return sum(counts[c:]) + CURSOR_LINE_ALLOWANCE

    if prev is not None and 0 <= prev <= whole and size // 2 <= tokens(prev) <= cap:
        return prev
    total, i = CURSOR_LINE_ALLOWANCE, whole - 1
    while i >= 0 and total + counts[i] <= size:
        total += counts[i]
        i -= 1
    c = i + 1
    stepped = c // WINDOW_STEP * WINDOW_STEP
    return stepped if tokens(stepped) <= cap else c
