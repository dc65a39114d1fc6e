"""The real model through `tricode lsp` at typing speed (issue 22's LSP targets): the typing replay
(bench/latency.py) and the first suggestion at a new place with the editor plugin's cursor-rest
prefetch (bench/newplace.py, the `plugin` client), each against a private daemon serving a GGUF model
on llama.cpp, with prompt sizing (daemon/prompt_sizing.py) at the configured budget and without it
(`prefill_budget_ms = 0`: the full prompt at a cold place, the behaviour before).

Sites and places come from the embedded model's held-out files (the GGUF has no held-out list of its
own). Each part's figures are appended to --json as it completes (a long run under load keeps what it
finished); one daemon at a time.

    python scripts/cold_place_latency.py --gguf qwen2.5-coder-0.5b \\
        --sites 4 --place-files 6 --parts newplace-sized,newplace-full,typing-sized --json /tmp/cold.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARTS = ("newplace-sized", "newplace-full", "typing-sized", "typing-full")


def main(argv=None) -> int:
    from registry.models import model_arg
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gguf", type=model_arg, default="qwen2.5-coder-0.5b", help="a pulled model's name (tricode model list) or a .gguf file")
    p.add_argument("--sites", type=int, default=4, help="typing replay: editing sites")
    p.add_argument("--place-files", type=int, default=6, dest="place_files", help="new-place replay: files")
    p.add_argument("--place-pause", type=float, default=1.0, dest="place_pause",
                   help="new-place replay: the user's pause at a place before Enter (s)")
    p.add_argument("--budget-ms", type=int, default=300, dest="budget_ms", help="prefill_budget_ms of the sized runs")
    p.add_argument("--parts", default=",".join(PARTS[:3]), help="comma list of " + ",".join(PARTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-threads", type=int, default=0, dest="cpu_threads",
                   help="the daemons' cpu_threads (0: the daemon's rule, llama.cpp on the idle cores)")
    p.add_argument("--json", type=Path, required=True, help="JSON lines, one per finished part")
    args = p.parse_args(argv)
    from bench import newplace
    from bench.latency import run_latency
    from engine.embedded_model import default_model
    from training.evaluate import read_heldout_files
    files, info = read_heldout_files(Path(default_model()), None, print)
    if not files:
        print(f"no held-out files: {info}", file=sys.stderr)
        return 2
    for part in [x for x in args.parts.split(",") if x]:
        if part not in PARTS:
            print(f"unknown part {part!r}: choose from {', '.join(PARTS)}", file=sys.stderr)
            return 2
        kind, form = part.split("-")
        dcfg = {"prefill_budget_ms": args.budget_ms if form == "sized" else 0,
                **({"cpu_threads": args.cpu_threads} if args.cpu_threads else {})}
        t0, load0 = time.time(), os.getloadavg()
        if kind == "newplace":
            res = newplace.run_new_place(args.gguf, files, n=args.place_files, seed=args.seed,
                                         variants=((part, dcfg, True),), pause_s=args.place_pause)
        else:
            res = run_latency(args.gguf, files, sites=args.sites, variants=((part, "spec", dcfg),), seed=args.seed)
        rec = {"part": part, "config": dcfg, "place_pause_s": args.place_pause, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t0)),
               "seconds": round(time.time() - t0, 1), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
               "result": res}
        with args.json.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{part}: done in {rec['seconds']} s, load {load0[0]:.1f} -> {rec['loadavg_after'][0]:.1f}",
              file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
