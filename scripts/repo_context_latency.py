"""Typing latency with repository context on and off, through `tricode lsp` (bench/latency.py's
replay: a language client types held-out lines character by character against a private daemon).

One workspace for every variant: a repository (a .git marker) holding every held-out file of the
model (heldout_files.txt; ~300 files of IPython, sympy, ... on this machine), the sites' files with
their line removed. The variants alternate, on, off, on, off (one private daemon each, the same
sites and typing seed), so that a drift of the machine's load hits both; each pair's figures and
the pooled ones are printed, with the prompt tokens (median over the cache-miss requests).

    python scripts/repo_context_latency.py --sites 8 --json /tmp/repo_latency.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--sites", type=int, default=8, help="editing sites replayed per variant")
    p.add_argument("--rounds", type=int, default=2, help="on/off pairs (alternating)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    from bench.common import dist
    from bench.latency import run_latency
    from engine.embedded_model import default_model
    from training.evaluate import read_heldout_files
    model = args.model or default_model()
    files, info = read_heldout_files(Path(model), None, print)
    if not files:
        print(f"no held-out files for {model}: {info}", file=sys.stderr)
        return 2
    variants = []
    for i in range(args.rounds):
        # distinct configs (the repeated key makes the pairs' daemons distinct: one daemon per config)
        variants.append((f"on {i + 1}", "spec", {"repo_context": True, "repo_context_tokens": 0.3, "cache_slots": 4 + i}))
        variants.append((f"off {i + 1}", "spec", {"repo_context": False, "cache_slots": 4 + i}))
    res = run_latency(Path(model), files, sites=args.sites, variants=variants, seed=args.seed, project=True)
    if "skipped" in res:
        print(res["skipped"], file=sys.stderr)
        return 1
    pooled: dict[str, list[float]] = {"on": [], "off": []}
    tokens: dict[str, list[float]] = {"on": [], "off": []}
    for label, s in res["variants"].items():
        kind = label.split()[0]
        pooled[kind] += s["raw_cache_miss_ms"]
        tokens[kind].append(s["split_cache_miss"].get("prompt_tokens", 0.0))
        m, sp = s["latency_cache_miss"], s["split_cache_miss"]
        print(f"{label:6s} cache miss p50 {m['p50']:.0f} ms p95 {m['p95']:.0f} ms (n={m['n']}); daemon total "
              f"{sp.get('total_ms', 0):.0f} ms, context {sp.get('context_ms', 0):.1f} ms, prefill "
              f"{sp.get('prefill_ms', 0):.0f} ms ({sp.get('prefill_tokens', 0):.0f} new / "
              f"{sp.get('reused_tokens', 0):.0f} reused tokens), prompt {sp.get('prompt_tokens', 0):.0f} tokens")
    on, off = dist(pooled["on"]), dist(pooled["off"])
    res["pooled"] = {"on": on, "off": off, "prompt_tokens_on": tokens["on"], "prompt_tokens_off": tokens["off"]}
    print(f"pooled: on p50 {on['p50']:.0f} / p95 {on['p95']:.0f} ms (n={on['n']}); off p50 {off['p50']:.0f} / "
          f"p95 {off['p95']:.0f} ms (n={off['n']}); p50 ratio on/off {on['p50'] / off['p50']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
