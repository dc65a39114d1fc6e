"""CPU step costs of the embedded model, for before/after comparisons of the forward (issue 12).

    PYTHONPATH=<a checkout> python scripts/cpu_steps.py [N_TASKS]

Runs whatever tree PYTHONPATH points at (so an older checkout can be measured with this same
script), one torch thread: aten ops (torch.profiler, nested ops counted) and median ms per step shape
(one-token AR step, 4-token verify, 4-token LoRA draft over the median prompt's cache, interleaved
repeats), then `ar` vs `spec b4` on the first N held-out single-line tasks (cold prompt, interleaved
per task). Prints one JSON line. Uses only APIs that predate the runner (run_forwards, Forward,
bench.decoding.complete)."""
import json, sys, statistics, time
import torch
from torch.profiler import profile, ProfilerActivity
from textkit.tokenizer import Tokenizer
from engine.checkpoint import load_checkpoint
from engine.embedded_model import default_model
from engine.generate import run_forwards, Forward
from training import evaluate as ev
from bench import decoding
torch.set_num_threads(1)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
md = default_model(); ck = load_checkpoint(md, device="cpu"); m = ck.model; tok = Tokenizer(md)
files, _ = ev.read_heldout_files(md, None, lambda *a: None)
count = lambda s: len(tok.encode(s))
tasks = ev.make_fim_tasks(files, N, 0, count_tokens=count, max_line_tokens=min(ev.DEFAULT_MAX_LINE_TOKENS, ev.DEFAULT_MAX_NEW_TOKENS - 2))
prompts = [ev.fim_prompt(tok, t.prefix, t.suffix, 1024) for t in tasks]
prefix = int(statistics.median(len(p) for p in prompts))
out = {"tree": __import__("engine").__file__, "prefix": prefix, "tasks": len(tasks)}
# ops + ms per step shape
cache = m.new_cache(prefix + 200)
ids = list(range(10, 10 + prefix))
with torch.inference_mode():
    run_forwards(m, [Forward(ids, cache, "causal", True, last_only=True, prefill=True)])
L = cache.length
shapes = {"AR step (causal 1)": ([5], "causal", False), "verify b4 (causal 4)": ([5, 6, 7, 8], "causal", False),
          "draft b4 (block 4, LoRA)": ([5, 1, 1, 1], "block", True)}
def run(tok_ids, pat, lora):
    run_forwards(m, [Forward(tok_ids, cache, pat, pat == "causal", lora=lora)]); cache.crop(L)
rows = {}
for name, (t, pat, lora) in shapes.items():
    for _ in range(3): run(t, pat, lora)
    with profile(activities=[ProfilerActivity.CPU]) as prof: run(t, pat, lora)
    n_ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    rows[name] = {"aten_ops": n_ops, "times": []}
for rep in range(25):                         # interleaved, so that load changes hit every shape alike
    for name, (t, pat, lora) in shapes.items():
        t0 = time.perf_counter(); run(t, pat, lora); rows[name]["times"].append((time.perf_counter() - t0) * 1e3)
for r in rows.values():
    r["ms_median"] = round(statistics.median(r.pop("times")), 3)
base = rows["AR step (causal 1)"]["ms_median"]
for r in rows.values():
    r["x_ar_step"] = round(r["ms_median"] / base, 3)
out["steps"] = rows
# whole completions, cold prompt, ar vs spec b4, interleaved per task
res = {"ar": [], "spec b4": []}
cfgs = {"ar": decoding.DecodeConfig("ar"), "spec b4": decoding.DecodeConfig("spec", "linear", 4)}
for name, c in cfgs.items():
    decoding.complete(m, tok, tasks[:1], prompts[:1], c, max_new_tokens=48)   # warm-up
for i in range(len(tasks)):
    for name, c in cfgs.items():
        res[name] += decoding.complete(m, tok, tasks[i:i + 1], prompts[i:i + 1], c, max_new_tokens=48, warmup=False)
same = sum(a["tokens"] == b["tokens"] for a, b in zip(res["ar"], res["spec b4"]))
out["equal_output"] = f"{same}/{len(tasks)}"
for name, g in res.items():
    out[name] = {"ms_median": round(statistics.median(x["ms"] for x in g), 1),
                 "decode_ms_median": round(statistics.median(x["decode_ms"] for x in g), 1),
                 "ms_total": round(sum(x["ms"] for x in g), 1), "decode_ms_total": round(sum(x["decode_ms"] for x in g), 1),
                 "tokens": sum(len(x["tokens"]) for x in g), "nfe": sum(x["nfe"] for x in g)}
out["spec_vs_ar_whole_total"] = round(out["ar"]["ms_total"] / out["spec b4"]["ms_total"], 3)
out["spec_vs_ar_decode_total"] = round(out["ar"]["decode_ms_total"] / out["spec b4"]["decode_ms_total"], 3)
out["spec_vs_ar_whole_median"] = round(out["ar"]["ms_median"] / out["spec b4"]["ms_median"], 3)
out["spec_vs_ar_decode_median"] = round(out["ar"]["decode_ms_median"] / out["spec b4"]["decode_ms_median"], 3)
print(json.dumps(out))
