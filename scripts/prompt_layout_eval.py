"""Compare the daemon's prompt layouts (daemon/prompt/: `contiguous`, `window`) on held-out
single-line FIM tasks with one model: exact match and edit similarity of the generated line, prompt
size, and the tokens a move to another place in the same file has to prefill (the prompt's tokens
after its common prefix with the prompt at the file's previous task, at least 20 lines away).

    python scripts/prompt_layout_eval.py --tasks 60 [--model DIR] [--budget 1024] [--json out.json]

Greedy spec decoding (token for token the AR output) with the daemon's newline stop; no extra files.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--layouts", default="contiguous,window")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--near-share", type=float, default=None, help="window layout: override NEAR_SHARE")
    ap.add_argument("--head-share", type=float, default=None, help="window layout: override HEAD_SHARE")
    args = ap.parse_args(argv)

    import torch
    from daemon.prompt import PromptBuilder, protect_special_tokens
    from textkit.tokenizer import Tokenizer
    from engine.checkpoint import load_checkpoint
    from engine.embedded_model import default_model
    from engine.generate import DecodeParams, generate
    from training.evaluate import cut_at_newline, edit_similarity, exact_match, make_fim_tasks, newline_stop
    from training.evaluate import read_heldout_files

    import daemon.prompt as dc
    if args.near_share is not None:
        dc.NEAR_SHARE = args.near_share
    if args.head_share is not None:
        dc.HEAD_SHARE = args.head_share
    torch.set_num_threads(1)
    model_dir = args.model or default_model()
    files, info = read_heldout_files(model_dir, None)
    if not files:
        print(f"no held-out files for {model_dir}: {info}", file=sys.stderr)
        return 2
    ck = load_checkpoint(model_dir, device="cpu")
    tok = Tokenizer(model_dir)
    protect_special_tokens(tok)
    builder = PromptBuilder(tok)
    tasks = make_fim_tasks(files, args.tasks, seed=args.seed, count_tokens=lambda s: len(tok.encode(s)))
    stop = newline_stop(tok.decode)
    out: dict = {"model": str(model_dir), "tasks": len(tasks), "budget": args.budget, "layouts": {},
                 "near_share": dc.NEAR_SHARE, "head_share": dc.HEAD_SHARE}
    for layout in args.layouts.split(","):
        em = sim = 0.0
        sizes, moves, secs = [], [], []
        last: dict[str, tuple[int, list[int]]] = {}
        for t in tasks:
            key = t.task_id.rsplit(":", 1)[0]
            label = key.rsplit("/", 1)[-1]
            p = builder.build(t.prefix, t.suffix, args.budget, [], layout=layout, label=label)
            line = t.prefix.count("\n")
            if key in last and abs(last[key][0] - line) >= 20:
                prev = last[key][1]
                common = next((i for i, (a, b) in enumerate(zip(prev, p.ids)) if a != b), min(len(prev), len(p.ids)))
                moves.append(len(p.ids) - common)
            last[key] = (line, p.ids)
            t0 = time.perf_counter()
            r = generate(ck.model, p.ids, DecodeParams(mode="spec", max_new_tokens=48), stop=stop)
            secs.append(time.perf_counter() - t0)
            gen = cut_at_newline(tok.decode(r.tokens))
            em += exact_match(gen, t.middle)
            sim += edit_similarity(gen, t.middle)
            sizes.append(len(p.ids))
        n = max(len(tasks), 1)
        res = {"exact_match": round(em / n, 4), "edit_similarity": round(sim / n, 4),
               "prompt_tokens_mean": round(sum(sizes) / n, 1),
               "move_prefill_tokens_median": sorted(moves)[len(moves) // 2] if moves else None,
               "move_prefill_tokens_mean": round(sum(moves) / len(moves), 1) if moves else None, "moves": len(moves),
               "seconds_per_task": round(sum(secs) / n, 3)}
        out["layouts"][layout] = res
        print(layout, json.dumps(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
