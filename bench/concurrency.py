"""Section 5: several completions at once, batched (engine.generate.step) against one after another.

n held-out single-line completions start together, as when n editors ask at the same moment; the
daemon runs them as one batch (`batch_size`). Two starting points:
  cold  a fresh KV cache per completion: each prefills its whole prompt (prompts differ in length,
        so the prefills run one by one and only the decode steps batch)
  warm  each cache already holds its prompt but the last token (the daemon after a keystroke, prefix
        reuse): every forward of the completion is a candidate for the batch
For each mode and n: wall time for the n completions one after another and batched, the speed-up,
the batched throughput (tokens/s over all n) and the count of completions whose batched text differs
from the one-at-a-time text (greedy: expected 0).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

from bench.decoding import DecodeConfig
from training import evaluate as ev


def _warm_cache(model, ids: list[int]):
    """A cache holding ids[:-1], as the daemon's pool holds a document's previous prompt."""
    from engine.generate import DecodeParams, generate
    cache = model.new_cache(len(ids) + 128)
    generate(model, ids[:-1], DecodeParams(mode="ar", max_new_tokens=1), cache=cache)
    return cache


def _decodes(model, tok, prompts, params, warm: bool):
    from engine.generate import Decode
    caches = [_warm_cache(model, p) if warm else None for p in prompts]
    return [Decode(model, p, params, cache=c, stop=ev.newline_stop(tok.decode)) for p, c in zip(prompts, caches)]


def _serial(model, decodes) -> float:
    from engine.generate import run_forwards
    t0 = time.perf_counter()
    for d in decodes:
        while not d.done:
            d.feed(run_forwards(model, [d.pending])[0])
    return time.perf_counter() - t0


def _batched(model, decodes) -> float:
    from engine.generate import step
    t0 = time.perf_counter()
    while not all(d.done for d in decodes):
        step(model, decodes)
    return time.perf_counter() - t0


def run_concurrency(model, tok, prompts: Sequence[list[int]], cfgs: Sequence[DecodeConfig], *,
                    sizes: Sequence[int] = (1, 2, 4), max_new_tokens: int = ev.DEFAULT_MAX_NEW_TOKENS,
                    log: Callable[[str], None] = print) -> dict:
    from engine.generate import DecodeParams, generate
    rows = []
    for cfg in cfgs:
        params = DecodeParams(mode=cfg.mode, max_new_tokens=max_new_tokens, block_size=cfg.block,
                              spec_variant=cfg.variant)
        generate(model, prompts[0], params)          # warm-up: first shapes allocate
        for warm in (False, True):
            for n in sizes:
                groups = [list(prompts[i:i + n]) for i in range(0, len(prompts) - n + 1, n)]
                serial_s = batched_s = 0.0
                tokens = mismatches = 0
                for g in groups:
                    # Decodes are built (and warm caches prefilled) outside the timed part; the serial
                    # run starts each decode only when the previous one has finished.
                    one = _decodes(model, tok, g, params, warm)
                    serial_s += _serial(model, one)
                    many = _decodes(model, tok, g, params, warm)
                    batched_s += _batched(model, many)
                    tokens += sum(len(d.result.tokens) for d in many)
                    mismatches += sum(a.result.tokens != b.result.tokens for a, b in zip(one, many))
                row = {"config": cfg.name, "start": "warm" if warm else "cold", "n": n, "groups": len(groups),
                       "serial_ms": serial_s * 1e3 / len(groups), "batched_ms": batched_s * 1e3 / len(groups),
                       "speedup": serial_s / batched_s if batched_s else None,
                       "tokens_per_s": tokens / batched_s if batched_s else None,
                       "serial_tokens_per_s": tokens / serial_s if serial_s else None,
                       "mismatches": mismatches, "tokens": tokens}
                rows.append(row)
                log(f"  {cfg.name:>10} {row['start']} n={n}: serial {row['serial_ms']:.0f} ms, batched "
                    f"{row['batched_ms']:.0f} ms per group ({row['speedup']:.2f}x), mismatches {mismatches}")
    best = {}
    for r in rows:
        if r["n"] == max(sizes):
            best.setdefault(r["start"], []).append(r["speedup"])
    return {"rows": rows, "sizes": list(sizes), "prompts": len(prompts),
            "prompt_tokens_median": statistics.median(len(p) for p in prompts) if prompts else 0,
            "median_speedup_at_max": {k: statistics.median(v) for k, v in best.items()}}
