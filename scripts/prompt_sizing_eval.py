"""What a cold place's sized prompt costs in quality and saves in time (issue 22 part 4): single-line
completions of held-out places with the daemon's full inline prompt and with its window forms
(daemon/prompt_sizing.py), the real model through llama.cpp.

    nice python scripts/prompt_sizing_eval.py --model /tmp/models/qwen2.5-coder-0.5b.gguf --tasks 60 \\
        --windows 128,256 --out /tmp/sizing.jsonl
    python scripts/prompt_sizing_eval.py --summary --out /tmp/sizing.jsonl

Tasks: the held-out single-line FIM tasks of `tricode eval` (scripts/prompt_format_eval.py's
`fim_tasks`: seed 0, the embedded tokenizer's line filter). Prompts: exactly what the daemon builds
with the GGUF's own vocabulary (daemon.prompt.PromptBuilder in the measured best format, fim-prefix,
budget `--context-tokens`), and PromptSizer.window's form of the same place for each window size.
Decoding: greedy, one thread, scripts/prompt_format_eval.py's `Greedy` (stop at the first newline or a
control token), every prompt cold (the forms share only their first token). Scores: exact match and
edit similarity of training/evaluate.py, after the daemon's whitespace healing. Each record holds the
prompt's tokens and the cold prefill and decode milliseconds; records are appended as they come (a run
resumes), and the summary tables the tasks every form has done.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LONG_PROMPT = 300         # tokens: a full prompt longer than this is one the window form cuts


def summary(path: Path) -> str:
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    forms = list(dict.fromkeys(r["form"] for r in recs))
    by: dict[str, dict[str, dict]] = {}
    for r in recs:
        by.setdefault(r["task"], {})[r["form"]] = r
    tasks = [t for t, d in by.items() if all(f in d for f in forms)]
    rows = ["| prompt form | exact match | edit similarity | prompt tokens (median) | cold prefill ms (median) "
            "| cold whole ms (median) |", "|---|---|---|---|---|---|"]
    for f in forms:
        rs = [by[t][f] for t in tasks]
        rows.append(f"| {f} | {sum(r['exact'] for r in rs) / len(rs):.3f} ({sum(r['exact'] for r in rs)}/{len(rs)}) "
                    f"| {statistics.mean(r['edit_sim'] for r in rs):.3f} "
                    f"| {statistics.median(r['prompt_tokens'] for r in rs):.0f} "
                    f"| {statistics.median(r['prefill_ms'] for r in rs):.0f} | {statistics.median(r['ms'] for r in rs):.0f} |")
    out = "\n".join(rows) + f"\n\n{len(tasks)} tasks."
    long_ = [t for t in tasks if by[t]["full"]["prompt_tokens"] > LONG_PROMPT] if "full" in forms else []
    if long_:
        out += f"\n\nOf them, the {len(long_)} places whose full prompt exceeds {LONG_PROMPT} tokens (where sizing acts):\n"
        for f in forms:
            rs = [by[t][f] for t in long_]
            out += (f"\n- {f}: exact {sum(r['exact'] for r in rs)}/{len(rs)}, edit similarity "
                    f"{statistics.mean(r['edit_sim'] for r in rs):.3f}, prompt tokens (median) "
                    f"{statistics.median(r['prompt_tokens'] for r in rs):.0f}, cold whole ms (median) "
                    f"{statistics.median(r['ms'] for r in rs):.0f}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/models/qwen2.5-coder-0.5b.gguf", help="a GGUF file")
    ap.add_argument("--tasks", type=int, default=60)
    ap.add_argument("--windows", default="128,256", help="window sizes (tokens) besides the full prompt")
    ap.add_argument("--context-tokens", type=int, default=1024, dest="context_tokens")
    ap.add_argument("--max-new-tokens", type=int, default=48, dest="max_new_tokens")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=0, help="stop starting tasks after this long (0: no limit)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--summary", action="store_true", help="only table what --out holds")
    args = ap.parse_args(argv)
    if args.summary:
        print(summary(args.out))
        return 0
    from daemon.prompt import PromptBuilder, fim, pretrained_format, protect_special_tokens
    from daemon.prompt_sizing import PromptSizer
    from scripts.prompt_format_eval import Greedy, fim_tasks, open_gguf
    from textkit.tokenizer import Tokenizer
    from training.evaluate import edit_similarity, exact_match

    tok = Tokenizer(Path(args.model))
    protect_special_tokens(tok)
    builder = PromptBuilder(tok, pretrained_format(tok, "auto"))
    sizes = [int(x) for x in args.windows.split(",") if x]
    done = set()
    if args.out.is_file():
        done = {(r["task"], r["form"]) for r in map(json.loads, args.out.read_text().splitlines()) if r}
    tasks = fim_tasks(args.tasks)
    g = Greedy(open_gguf(args.model, args.threads))
    t0 = time.perf_counter()
    for task in tasks:
        if args.minutes and time.perf_counter() - t0 > 60 * args.minutes:
            print(f"stopping after {args.minutes} min (resume with the same command)", file=sys.stderr)
            break
        prompts = {}
        for size in sizes:
            sizer = PromptSizer()
            sizer.windows[("k",)] = (size, None)
            prompts[f"window {size}"] = sizer.window(builder, ("k",), task.prefix, task.suffix, size, "",
                                                     args.context_tokens)
        prompts["full"] = builder.build(task.prefix, task.suffix, args.context_tokens)
        line_out = []
        for form, prompt in prompts.items():
            if (task.task_id, form) in done:
                continue
            g.cache = []                               # cold: as at a new place
            g.llm.n_tokens = 0
            r = g.line(prompt.ids, args.max_new_tokens)
            line = fim.single_line(fim.heal(r["text"], prompt.heal))
            rec = {"task": task.task_id, "form": form, "line": line, "reference": task.middle,
                   "exact": exact_match(line, task.middle), "edit_sim": round(edit_similarity(line, task.middle), 4),
                   "prompt_tokens": len(prompt.ids), "prefill_ms": round(r["prefill_ms"], 1),
                   "decode_ms": round(r["decode_ms"], 1), "ms": round(r["ms"], 1), "gen_tokens": r["gen_tokens"]}
            with args.out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            line_out.append(f"{form} {'Y' if rec['exact'] else '-'} {len(prompt.ids)}t {rec['ms'] / 1e3:.1f}s")
        print(f"  {task.task_id}: " + ", ".join(line_out), file=sys.stderr, flush=True)
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
