"""A one-token llama.cpp step (after a 400-token context) on 1 thread, 2 threads and the daemon's
thread rule (daemon/cpu_share.py), with the machine idle and with other work beside it: busy
processes at normal priority, at nice 19, and a nice-19 llama.cpp loop. What the rule is built on
(docs/cpu_speed.md section 7).

    python scripts/cpu_share_bench.py [--model qwen2.5-coder-0.5b] [--steps 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPIN = "import time\nt = time.monotonic() + 300\nwhile time.monotonic() < t: pass\n"
LLAMA_LOOP = """import sys, time
sys.path.insert(0, {repo!r})
from engine.llama_runner import LlamaModel
lm = LlamaModel.load({gguf!r}, threads=2, n_ctx=1024, n_seq=2)
ctx = [1000 + i % 5000 for i in range(300)]
while True:
    c = lm.new_cache(400)
    lm.decode([(c, ctx, False)])
    c.commit(ctx)
    for _ in range(20):
        lm.decode([(c, [5], False)])
        c.commit([5])
    del c
"""


def conditions(gguf: Path) -> list[tuple[str, list[list[str]], float]]:
    """(name, commands to run beside the steps, seconds to let them start)."""
    py, nice = [sys.executable, "-c"], ["nice", "-n", "19", sys.executable, "-c"]
    loop = LLAMA_LOOP.format(repo=str(Path(__file__).resolve().parents[1]), gguf=str(gguf))
    return [("idle", [], 1.5), ("one busy process", [py + [SPIN]], 1.5),
            ("two busy processes", [py + [SPIN]] * 2, 1.5),
            ("one nice-19 busy process", [nice + [SPIN]], 1.5),
            ("two nice-19 busy processes", [nice + [SPIN]] * 2, 1.5),
            ("a nice-19 llama.cpp loop on 2 threads", [nice + [loop]], 6.0)]


def main(argv=None) -> int:
    from registry.models import model_arg
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=model_arg, default="qwen2.5-coder-0.5b", help="a pulled model's name or a .gguf file")
    p.add_argument("--steps", type=int, default=15, help="steps per thread count (median reported)")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    assert a.steps >= 1, "--steps must be >= 1"
    from daemon.config import Config
    from daemon.cpu_share import ThreadRule
    from engine.llama_runner import LlamaModel
    gguf = a.model
    lm = LlamaModel.load(gguf, threads=2, n_ctx=1024, n_seq=2)
    ctx = [1000 + i % 5000 for i in range(400)]
    cache = lm.new_cache(600)
    lm.decode([(cache, ctx, False)])
    cache.commit(ctx)
    rule = ThreadRule()

    def step_ms(threads) -> float:
        ts = []
        for _ in range(a.steps):
            if threads == "rule":
                rule.apply(Config(), lm)
            else:
                lm.set_threads(threads)
            t0 = time.perf_counter()
            lm.decode([(cache, ctx[:1], False)])      # not committed: dropped by the next step's sync
            ts.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.05)
        return round(statistics.median(ts), 1)

    out = {"model": str(gguf), "conditions": {}}
    for name, cmds, settle in conditions(gguf):
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cmds]
        try:
            time.sleep(settle)
            row = {f"{t} thread{'s' if t != 1 else ''} ms": step_ms(t) for t in (1, 2)}
            row["rule ms"] = step_ms("rule")
            row["rule threads"] = lm.threads
            row["others busy cores"] = rule.last.get("others_busy_cores")
        finally:
            for pr in procs:
                pr.kill()
                pr.wait()
        out["conditions"][name] = row
        print(f"{name}: {row}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
