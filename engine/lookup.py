"""Drafts from the context (prompt lookup): the tokens that followed the latest earlier occurrence of
the last few tokens.

Code repeats itself: names, argument lists, a line like the one above. When the last k tokens
(k = 3, else 2, else 1) occurred before in the prompt or in what has been generated, the tokens that
followed them there are a free draft: no forward is spent on it. The verify step treats it like a
diffusion draft, so greedy output still equals AR's, and a wrong guess costs one verify forward for
one token, where a diffusion draft costs two forwards for about 2.5 tokens: even a one-token match
is worth trying (200 held-out single-line tasks, block 4: with 1-grams 1.59 -> 1.86 tokens per
forward, decode p50 66 -> 56 ms).

How many of the found tokens to verify depends on the runner: the NLD runners take up to
LOOKUP_TOKENS. A runner that publishes its step costs (`step_costs`: the cost of a k-token verify
relative to one token, engine/llama_runner.py) gets a draft sized per step by `sized_draft_length`,
from that curve and from how long the context match is (`Lookup.match_length`): where a wide verify
costs nearly what it may save, a weak 1-token match earns no draft and a copied line a long one.
This module knows token ids only.
"""
from __future__ import annotations

NGRAMS = (3, 2, 1)
# Tokens drafted from the context per step: more than a diffusion block of the CPU (4), since a verify
# of 8 costs ~1.1x a verify of 4 there (held-out single-line: 1.61 -> 1.71 tokens per forward).
LOOKUP_TOKENS = 7
# A context match is measured back at most this far (lookup.Lookup.match_length)
MAX_MATCH = 16


class Lookup:
    """The context of one decode: its prompt, then its output as it grows."""

    def __init__(self, prompt: list[int], ngrams: tuple[int, ...] = NGRAMS):
        self.history = list(prompt)
        self.prompt_len = len(prompt)
        self.ngrams = ngrams
        self.latest: dict[tuple[int, ...], int] = {}   # k-gram -> end index of its latest occurrence
        self.indexed = 0                                 # k-grams ending before this index are in `latest`
        self.last_end: int | None = None                 # where the last draft's k-gram ended

    def draft(self, output: list[int], n: int) -> list[int]:
        """Up to n tokens to follow prompt + `output` (which only ever grows at its end), or [] when
        its tail was not seen before."""
        history = self.history
        history += output[len(history) - self.prompt_len:]
        # Index every k-gram that has a known next token: those ending before the last position.
        for end in range(self.indexed, len(history) - 1):
            for k in self.ngrams:
                if end + 1 >= k:
                    self.latest[tuple(history[end + 1 - k:end + 1])] = end
        self.indexed = max(self.indexed, len(history) - 1)
        for k in self.ngrams:
            if len(history) >= k:
                end = self.latest.get(tuple(history[-k:]))
                if end is not None:
                    self.last_end = end
                    return history[end + 1:end + 1 + n]
        self.last_end = None
        return []

    def match_length(self, cap: int = MAX_MATCH) -> int:
        """How many tokens (up to `cap`) before the last draft's source agree with the tail of the
        context: 0 when the last `draft` found nothing. A k-gram hit says at least k; a copied line or
        block says much more, and its continuation is more likely right."""
        end = self.last_end
        if end is None:
            return 0
        h, tail = self.history, len(self.history) - 1
        m = 0
        while m < cap and end - m >= 0 and h[end - m] == h[tail - m]:
            m += 1
        return m


# How likely the next drafted token is accepted, given the match length m of its context draft
# (index min(m, len - 1)): the chance that the continuation of an m-token copy is what the model says.
# Measured on held-out code with Qwen2.5-Coder 0.5B, greedy, 8 FIM prompts x 40 tokens
# (`python -m bench.llamacpp --accept-only`, docs/cpu_speed.md): m=1 0.62, 2 0.65, 3 0.76, 4 0.74,
# 5 0.88, 6 0.92, 7 0.90, >=8 0.98; made monotone, and >= 8 held at 0.95 since those runs include the
# model copying its prompt's suffix after the line, which inflates the long matches.
ACCEPT_BY_MATCH = (0.0, 0.62, 0.65, 0.75, 0.75, 0.88, 0.90, 0.90, 0.95)


def sized_draft_length(match: int, costs: dict[int, float], cap: int,
                       accept: tuple[float, ...] = ACCEPT_BY_MATCH) -> int:
    """The number of context-draft tokens n (0..cap) that maximises the expected tokens a verify
    emits per unit of cost: a verify of the seed plus n drafts costs costs[n + 1] (relative to a one-
    token step; widths between measured ones interpolated), and emits 1 + p + p^2 + .. + p^n tokens
    when each draft is accepted with probability p = accept[match] (a run stops at its first miss).
    A long match earns a long draft; a weak one none, where a wider verify costs more than it is
    expected to return."""
    p = accept[min(match, len(accept) - 1)]
    best, best_rate = 0, 1.0 / _cost(costs, 1)
    emitted = 1.0
    for n in range(1, cap + 1):
        emitted += p ** n
        rate = emitted / _cost(costs, n + 1)
        if rate > best_rate:
            best, best_rate = n, rate
    return best


def _cost(costs: dict[int, float], k: int) -> float:
    """costs at width k: linear between the measured widths, proportional to k past the widest."""
    if k in costs:
        return costs[k]
    ks = sorted(costs)
    if k >= ks[-1]:
        return costs[ks[-1]] * k / ks[-1]
    hi = next(x for x in ks if x > k)
    lo = max(x for x in ks if x < k)
    return costs[lo] + (costs[hi] - costs[lo]) * (k - lo) / (hi - lo)
