"""Section 4: HumanEval single-line infilling pass@1 per mode (training/evaluate.py's construction).

Each task goes through :func:`training.evaluate.humaneval_fim_task` (the layout of the held-out
tasks), is completed greedily by :func:`bench.decoding.complete` in each configuration, and the
generated line is tested by :func:`training.evaluate.check_humaneval`: each program in its own
sandboxed process (no network, a temporary directory, a timeout), never in this process. A program
already tested (greedy spec writes exactly ar's line) is not run twice: its verdict is reused.
"""
from __future__ import annotations

import random
import time
from typing import Sequence

from bench.decoding import DecodeConfig, complete, summarize
from training import evaluate as ev


def pick_tasks(limit: int | None, seed: int = 0):
    """The seeded subset of :func:`training.evaluate.run_eval` (same seed, same tasks)."""
    from training.humaneval import load_tasks
    he_all = load_tasks()
    he = he_all
    if limit is not None and limit < len(he_all):
        pick = sorted(random.Random(f"tricode-eval-humaneval/{seed}").sample(range(len(he_all)), limit))
        he = [he_all[i] for i in pick]
    return he, len(he_all)


def run_humaneval(model, tok, cfgs: Sequence[DecodeConfig], *, limit: int | None, prompt_tokens: int,
                  timeout: float = 5.0, workers: int = 2, seed: int = 0, log=print) -> dict:
    try:
        he, total = pick_tasks(limit, seed)
        from training.sandbox import network_isolation
    except (FileNotFoundError, ImportError) as e:
        return {"skipped": str(e)}
    ftasks = [ev.humaneval_fim_task(t) for t in he]
    prompts = [ev.fim_prompt(tok, t.prefix, t.suffix, prompt_tokens) for t in ftasks]
    verdicts: dict[tuple[str, str], bool] = {}
    modes, gens = {}, {}
    for cfg in cfgs:
        t0 = time.perf_counter()
        g = complete(model, tok, ftasks, prompts, cfg, max_new_tokens=ev.DEFAULT_MAX_NEW_TOKENS)
        t1 = time.perf_counter()
        todo = [i for i, (t, x) in enumerate(zip(he, g)) if (t.task_id, x["line"]) not in verdicts]
        res = ev.check_humaneval([he[i] for i in todo], [g[i]["line"] for i in todo], timeout=timeout,
                                 workers=workers)
        for i, ok in zip(todo, res):
            verdicts[(he[i].task_id, g[i]["line"])] = ok
        passed = [verdicts[(t.task_id, x["line"])] for t, x in zip(he, g)]
        s = summarize(g, ftasks, cfg)
        s.update(pass_at_1=sum(passed) / len(passed) if passed else 0.0, passed=sum(passed),
                 generate_s=round(t1 - t0, 1), tests_s=round(time.perf_counter() - t1, 1), tests_run=len(todo))
        modes[cfg.name], gens[cfg.name] = s, g
        log(f"  humaneval {cfg.name:<12} pass@1 {s['pass_at_1']:.3f} ({s['passed']}/{len(passed)}) "
            f"TPF {s['tokens_per_forward']:.2f}; generate {s['generate_s']:.0f} s, tests {s['tests_s']:.0f} s")
    mism = {n: sum(a["tokens"] != b["tokens"] for a, b in zip(gens["ar"], g))
            for n, g in gens.items() if n.startswith("spec") and "ar" in gens}
    return {"tasks": len(he), "of": total, "sandbox": network_isolation(), "configs": modes,
            "spec_vs_ar_mismatches": mism}
