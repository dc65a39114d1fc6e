"""Section 7 (`--sections llamacpp`): tricode through llama.cpp's kernels vs llama.cpp's own decoding,
on the same GGUF, the same prompts and the same thread count, in one run (issue 22).

    python -m bench.llamacpp --gguf qwen2.5-coder-0.5b --threads 1,2 --tasks 12 --multi-tasks 6

The prompts are fill-in-the-middle prompts of held-out code (the embedded model's heldout_files.txt,
`training.evaluate.make_fim_tasks`) in Qwen2.5-Coder's format (<|fim_prefix|> prefix <|fim_suffix|>
suffix <|fim_middle|>), tokenized by the GGUF's own vocabulary, within `--prompt-tokens`. Each task
is a whole single-line completion from a cold cache: prefill, then decoding until the line ends;
`--multi-tasks` adds completions of 2 to 4 lines (bench/decoding.py's multi-line tasks, stopped after
that many lines). `--memory` (on by default) then starts a private `tricode daemon run` on the GGUF
and reports its RSS after one completion and its peak.

  llama.cpp      llama-cpp-python's high-level `Llama`: `eval(prompt)`, then the plain greedy loop
                 over `eval([token])` with the logits of the last position (what its server does)
  tricode ar     engine/generate.py's `ar` through engine/llama_runner.py
  tricode spec   `spec` with context drafts sized by the runner's step-cost curve (lookup.py)

Every engine generates as many tokens as tricode `ar` did on the task (the line, or --max-new-tokens),
so the figures compare equal work, and `spec`'s and llama.cpp's tokens are checked against `ar`'s.
The engines run in turn on each task (round robin) so that a change of load hits all alike.
The step-cost curve (a k-token verify after the prompt vs one token) is measured by the runner.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, cpu_model, loadavg

DEFAULT_GGUF = "qwen2.5-coder-0.5b"      # a pulled model's name (tricode model list) or a .gguf path


class Vocab:
    """The GGUF's tokenizer (llama.cpp's, vocab only: no weights loaded)."""

    def __init__(self, gguf: Path):
        from llama_cpp import Llama
        self.llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    def encode(self, text: str, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids).decode("utf-8", "replace")


def fim_prompt(vocab: Vocab, prefix: str, suffix: str, budget: int) -> list[int]:
    """Qwen2.5-Coder's FIM prompt within `budget` tokens: the prefix's end and the suffix's start kept."""
    from training.evaluate import clip_left, clip_right
    count = lambda s: len(vocab.encode(s))  # noqa: E731
    room = budget - 3
    if count(prefix) + count(suffix) > room:
        suffix = clip_right(suffix, max(room // 4, room - count(prefix)), count)
        prefix = clip_left(prefix, room - count(suffix), count)
    return (vocab.encode("<|fim_prefix|>", special=True) + vocab.encode(prefix)
            + vocab.encode("<|fim_suffix|>", special=True) + vocab.encode(suffix)
            + vocab.encode("<|fim_middle|>", special=True))


def line_stop(vocab: Vocab):
    from training.evaluate import newline_stop
    return newline_stop(vocab.decode)


def plain_llama(gguf: Path, **kw):
    """llama-cpp-python's high-level `Llama` with the same weight buffers as engine/llama_runner.py
    (every script and test that opens the high-level Llama on a model goes through here):
    the extra CPU buffer types (AMX / repacked weights) off, since they crash llama_decode on this
    machine (see LlamaModel). `Llama` takes no such option, so its default model params are wrapped
    while it loads."""
    import llama_cpp.llama_cpp as C
    from llama_cpp import Llama
    orig = C.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = False
        return p
    C.llama_model_default_params = params
    kw.setdefault("verbose", False)
    try:
        return Llama(model_path=str(gguf), **kw)
    finally:
        C.llama_model_default_params = orig


class LlamaCppGreedy:
    """llama-cpp-python's high-level plain greedy decoding."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int):
        self.llm = plain_llama(gguf, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads)
        self.n_vocab = self.llm.n_vocab()

    def __call__(self, ids: list[int], n: int) -> dict:
        llm = self.llm
        t0 = time.perf_counter()
        llm.reset()
        llm.eval(ids)
        t1 = time.perf_counter()
        out: list[int] = []
        while len(out) < n:
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
            out.append(int(np.argmax(logits)))
            if len(out) < n:
                llm.eval([out[-1]])
        t2 = time.perf_counter()
        return {"tokens": out, "prefill_ms": (t1 - t0) * 1e3, "decode_ms": (t2 - t1) * 1e3,
                "total_ms": (t2 - t0) * 1e3}


def tricode_run(lm, ids: list[int], mode: str, n: int, stop=None) -> dict:
    from engine.generate import DecodeParams, generate
    t0 = time.perf_counter()
    r = generate(lm, ids, DecodeParams(mode=mode, max_new_tokens=n), stop=stop)
    total = (time.perf_counter() - t0) * 1e3
    return {"tokens": r.tokens, "prefill_ms": r.prefill_ms, "decode_ms": total - r.prefill_ms, "total_ms": total,
            "nfe": r.nfe, "accept_lengths": r.accept_lengths, "lookup_steps": r.lookup_steps}


def acceptance_by_match(prompts: list[list[int]], outputs: list[list[int]], cap: int = 7, top: int = 9) -> dict:
    """Replay the context lookup over greedy outputs: at every position, the draft lookup.py would
    find and its match length m, and how many of its tokens the model's own output confirms. Per m
    (m >= top - 1 pooled), the per-token acceptance as a geometric rate: accepted / (accepted +
    first misses). What lookup.ACCEPT_BY_MATCH holds."""
    from engine.lookup import Lookup
    acc = [0] * top
    miss = [0] * top
    for ids, out in zip(prompts, outputs):
        lk = Lookup(ids)
        for t in range(len(out)):
            d = lk.draft(out[:t], cap)
            if not d:
                continue
            m = min(lk.match_length(), top - 1)
            truth = out[t:t + len(d)]
            c = 0
            while c < len(truth) and d[c] == truth[c]:
                c += 1
            acc[m] += c
            miss[m] += c < len(truth)
    return {m: {"rate": round(acc[m] / (acc[m] + miss[m]), 3), "n": acc[m] + miss[m]}
            for m in range(1, top) if acc[m] + miss[m]}


def _summary(rows: list[dict], prompt_lens: list[int]) -> dict:
    med = statistics.median
    dec_tok = [len(r["tokens"]) - 1 for r in rows]       # the first token comes with the prefill
    out = {"total_ms_median": round(med(r["total_ms"] for r in rows), 1),
           "prefill_ms_median": round(med(r["prefill_ms"] for r in rows), 1),
           "prefill_tokens_per_s": round(sum(prompt_lens) / sum(r["prefill_ms"] for r in rows) * 1e3, 1),
           "decode_tokens_per_s": round(sum(dec_tok) / max(1e-9, sum(r["decode_ms"] for r in rows)) * 1e3, 1)}
    acc = [a for r in rows for a in r.get("accept_lengths", [])]
    if acc:
        out["mean_accept_length"] = round(sum(acc) / len(acc), 2)
        out["tokens_per_forward"] = round(sum(len(r["tokens"]) for r in rows) / sum(r["nfe"] for r in rows), 2)
    return out


def compare(lm, peer, prompts: list[list[int]], stops: list, max_new_tokens: int, log=print, label: str = "") -> dict:
    """The three engines on each prompt in turn (the module docstring): tricode `ar` decides the
    number of tokens (its stop, or max_new_tokens), the others generate as many -> rows per engine,
    outputs differing from `ar`, and the prompts' lengths."""
    rows: dict[str, list[dict]] = {"llama.cpp": [], "tricode ar": [], "tricode spec": []}
    mismatches = {"llama.cpp": 0, "tricode spec": 0}
    lens = []
    for i, (ids, stop) in enumerate(zip(prompts, stops)):
        ar = tricode_run(lm, ids, "ar", max_new_tokens, stop)
        n = len(ar["tokens"])
        if n == 0:
            continue
        rows["tricode ar"].append(ar)
        ll = peer(ids, n)
        rows["llama.cpp"].append(ll)
        sp = tricode_run(lm, ids, "spec", n)
        rows["tricode spec"].append(sp)
        lens.append(len(ids))
        mismatches["llama.cpp"] += ll["tokens"] != ar["tokens"]
        mismatches["tricode spec"] += sp["tokens"] != ar["tokens"]
        log(f"  {label}task {i + 1}/{len(prompts)}: {len(ids)} prompt tokens, {n} new; total ms llama.cpp "
            f"{ll['total_ms']:.0f}, ar {ar['total_ms']:.0f}, spec {sp['total_ms']:.0f} "
            f"(accept {sp['accept_lengths']})")
    return {"rows": rows, "mismatches": mismatches, "lens": lens}


def _ratios(engines: dict) -> dict:
    ll, ar, sp = engines["llama.cpp"], engines["tricode ar"], engines["tricode spec"]
    return {"prefill_vs_llama.cpp": round(ar["prefill_tokens_per_s"] / ll["prefill_tokens_per_s"], 2),
            "spec_decode_vs_llama.cpp": round(sp["decode_tokens_per_s"] / ll["decode_tokens_per_s"], 2),
            "ar_decode_vs_llama.cpp": round(ar["decode_tokens_per_s"] / ll["decode_tokens_per_s"], 2),
            "spec_total_vs_llama.cpp": round(sp["total_ms_median"] / ll["total_ms_median"], 2)}


def run_section(gguf: Path, files, *, threads: int, tasks: int = 12, prompt_tokens: int = 1000,
                max_new_tokens: int = 32, accept_tokens: int = 0, seed: int = 0, multi_tasks: int = 0,
                log=print) -> dict:
    """The side-by-side run (see the module docstring) -> a JSON-able dict: `tasks` single-line
    completions, and `multi_tasks` completions of 2 to 4 lines (stopped after that many, up to
    3 x max_new_tokens tokens)."""
    from bench.decoding import lines_stop, multiline_tasks
    from engine.llama_runner import LlamaModel
    from training import evaluate as ev
    vocab = Vocab(gguf)
    count = lambda s: len(vocab.encode(s))  # noqa: E731
    fim = ev.make_fim_tasks(files, tasks, seed, count_tokens=count, max_line_tokens=max_new_tokens - 2)
    prompts = [fim_prompt(vocab, t.prefix, t.suffix, prompt_tokens) for t in fim]
    multi = multiline_tasks(files, multi_tasks, seed, count_tokens=count) if multi_tasks else []
    multi_new = 3 * max_new_tokens
    n_ctx = prompt_tokens + max(2 * multi_new, accept_tokens) + 64
    lm = LlamaModel.load(gguf, threads=threads, n_ctx=n_ctx, n_seq=2)
    peer = LlamaCppGreedy(gguf, threads, n_ctx)
    curve = lm.measure_step_costs(context=prompts[0][:500] if prompts else None)
    lm.runner.step_costs = curve["relative"]
    log(f"  step costs at {threads} thread(s): {curve['ms']} ms -> relative {curve['relative']}")
    single = compare(lm, peer, prompts, [line_stop(vocab)] * len(prompts), max_new_tokens, log)
    lens = single["lens"]
    # the acceptance model of the draft sizing, from longer greedy runs of the same prompts
    longer = [tricode_run(lm, ids, "ar", accept_tokens)["tokens"] for ids in prompts] if accept_tokens else []
    res = {"gguf": str(gguf), "threads": threads, "tasks": len(lens),
           "prompt_tokens": {"min": min(lens), "median": statistics.median(lens), "max": max(lens)},
           "new_tokens_median": statistics.median(len(r["tokens"]) for r in single["rows"]["tricode ar"]),
           "step_costs": curve, "engines": {k: _summary(v, lens) for k, v in single["rows"].items()},
           "mismatches_vs_ar": single["mismatches"], "cpu": cpu_model(), "load": loadavg(),
           "acceptance_by_match": acceptance_by_match(prompts, longer) if longer else None}
    res["ratios"] = dict(_ratios(res["engines"]), k4_vs_k1=curve["relative"].get(4))
    if multi:
        mp = [fim_prompt(vocab, t.prefix, t.suffix, prompt_tokens) for t in multi]
        m = compare(lm, peer, mp, [lines_stop(vocab.decode, t.lines) for t in multi], multi_new, log, "multi-line ")
        engines = {k: _summary(v, m["lens"]) for k, v in m["rows"].items()}
        res["multi"] = {"tasks": len(m["lens"]), "lines": [t.lines for t in multi],
                        "new_tokens_median": statistics.median(len(r["tokens"]) for r in m["rows"]["tricode ar"]),
                        "engines": engines, "mismatches_vs_ar": m["mismatches"], "ratios": _ratios(engines)}
    lm.close()
    return res


def daemon_memory(gguf: Path, threads: int = 0) -> dict:
    """The daemon's memory with `gguf` loaded (`tricode daemon run`, a private socket): its RSS once
    ready and after one inline completion, and its peak (VmHWM), in MiB."""
    from bench.latency import private_daemon
    from protocol import Complete
    from protocol.client import call

    def mib(pid: str) -> dict:
        with open(f"/proc/{pid}/status") as f:
            kv = dict(ln.split(":", 1) for ln in f if ln.startswith(("VmRSS", "VmHWM")))
        return {k: round(int(v.split()[0]) / 1024, 1) for k, v in kv.items()}

    with private_daemon(gguf, {"cpu_threads": threads} if threads else None) as env:
        pid = env["_BENCH_DAEMON_PID"]
        ready = mib(pid)
        r = call(Complete(doc="file:///bench/m.py", prefix="def add(a, b):\n    ", suffix="\n", path="/bench/m.py",
                          max_tokens=16, max_lines=1, deadline_ms=60000), socket_path=env["TRICODE_SOCKET"], timeout=120)[0]
        after = mib(pid)
    return {"ready_rss_mib": ready["VmRSS"], "rss_mib": after["VmRSS"], "peak_rss_mib": after["VmHWM"],
            "completion": r.get("type")}


def accept_only(gguf: Path, files, *, threads: int, tasks: int, prompt_tokens: int, accept_tokens: int,
                seed: int = 0) -> dict:
    """The acceptance model alone: greedy `ar` for `accept_tokens` on each task's prompt, replayed."""
    from engine.llama_runner import LlamaModel
    from training import evaluate as ev
    vocab = Vocab(gguf)
    fim = ev.make_fim_tasks(files, tasks, seed, count_tokens=lambda s: len(vocab.encode(s)))
    prompts = [fim_prompt(vocab, t.prefix, t.suffix, prompt_tokens) for t in fim]
    lm = LlamaModel.load(gguf, threads=threads, n_ctx=prompt_tokens + accept_tokens + 64, n_seq=2)
    outs = [tricode_run(lm, ids, "ar", accept_tokens)["tokens"] for ids in prompts]
    lm.close()
    return {"tasks": len(prompts), "accept_tokens": accept_tokens, "load": loadavg(),
            "acceptance_by_match": acceptance_by_match(prompts, outs)}


def markdown(res: dict) -> list[str]:
    md = [f"### tricode vs llama.cpp on `{Path(res['gguf']).name}`, {res['threads']} thread(s)", "",
          f"{res['tasks']} single-line held-out FIM tasks, prompts {res['prompt_tokens']['min']}-"
          f"{res['prompt_tokens']['max']} tokens (median {res['prompt_tokens']['median']:.0f}), median "
          f"{res['new_tokens_median']:.0f} new tokens; {res['cpu']}; load average {res['load'][0]}.", "",
          "| engine | whole completion ms (median) | prefill ms (median) | prefill tok/s | decode tok/s | accept | tokens/forward |",
          "|---|---|---|---|---|---|---|"]
    for name, s in res["engines"].items():
        md.append(f"| {name} | {s['total_ms_median']:.0f} | {s['prefill_ms_median']:.0f} | "
                  f"{s['prefill_tokens_per_s']:.0f} | {s['decode_tokens_per_s']:.1f} | "
                  f"{s.get('mean_accept_length', '-')} | {s.get('tokens_per_forward', '-')} |")
    c = res["step_costs"]
    md += ["", "Step cost (a k-token verify after the prompt, relative to one token): "
           + ", ".join(f"k={k}: {v}x" for k, v in c["relative"].items()),
           "", f"Outputs differing from tricode `ar`: {res['mismatches_vs_ar']}; ratios {res['ratios']}.", ""]
    if res.get("multi"):
        mu = res["multi"]
        md += [f"Multi-line ({mu['tasks']} tasks of {min(mu['lines'])}-{max(mu['lines'])} lines, median "
               f"{mu['new_tokens_median']:.0f} new tokens):", "",
               "| engine | whole completion ms (median) | prefill tok/s | decode tok/s | accept | tokens/forward |",
               "|---|---|---|---|---|---|"]
        md += [f"| {name} | {s['total_ms_median']:.0f} | {s['prefill_tokens_per_s']:.0f} | {s['decode_tokens_per_s']:.1f} | "
               f"{s.get('mean_accept_length', '-')} | {s.get('tokens_per_forward', '-')} |" for name, s in mu["engines"].items()]
        md += ["", f"Outputs differing from tricode `ar`: {mu['mismatches_vs_ar']}; ratios {mu['ratios']}.", ""]
    if res.get("acceptance_by_match"):
        md += ["Context-draft acceptance per token by match length m: " + ", ".join(
            f"m={m}: {v['rate']} (n={v['n']})" for m, v in res["acceptance_by_match"].items()), ""]
    return md


def main(argv=None) -> int:
    from registry.models import model_arg
    p = argparse.ArgumentParser(prog="python -m bench.llamacpp", description=__doc__.split("\n")[0])
    p.add_argument("--gguf", type=model_arg, default=DEFAULT_GGUF, help="a pulled model's name or a .gguf file")
    p.add_argument("--threads", default="1", help="comma list of thread counts, each run in turn")
    p.add_argument("--tasks", type=int, default=12)
    p.add_argument("--prompt-tokens", type=int, default=1000, dest="prompt_tokens")
    p.add_argument("--max-new-tokens", type=int, default=32, dest="max_new_tokens")
    p.add_argument("--accept-tokens", type=int, default=0, dest="accept_tokens",
                   help="also decode this many tokens per prompt (ar) to measure the lookup acceptance by match length")
    p.add_argument("--accept-only", action="store_true", dest="accept_only",
                   help="only measure the lookup acceptance by match length (greedy ar, --accept-tokens per prompt)")
    p.add_argument("--multi-tasks", type=int, default=6, dest="multi_tasks", help="multi-line (2-4 line) tasks")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the daemon's RSS with the model loaded (a private `tricode daemon run`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON report")
    a = p.parse_args(argv)
    from training import evaluate as ev
    files, _ = ev.read_heldout_files(REPO / "engine" / "embedded", None, print)
    if not files:
        print("no held-out files on this machine (engine/embedded/heldout_files.txt)", file=sys.stderr)
        return 2
    if a.accept_only:
        res = accept_only(a.gguf, files, threads=int(a.threads.split(",")[0]), tasks=a.tasks,
                          prompt_tokens=a.prompt_tokens, accept_tokens=a.accept_tokens or 64, seed=a.seed)
        print(json.dumps(res, indent=1))
        if a.out:
            a.out.write_text(json.dumps(res, indent=1))
        return 0
    out = []
    for th in [int(x) for x in a.threads.split(",")]:
        out.append(run_section(a.gguf, files, threads=th, tasks=a.tasks, prompt_tokens=a.prompt_tokens,
                               max_new_tokens=a.max_new_tokens, accept_tokens=a.accept_tokens, seed=a.seed,
                               multi_tasks=a.multi_tasks))
        print("\n".join(markdown(out[-1])), flush=True)
    if a.memory:
        mem = daemon_memory(a.gguf)
        out.append({"daemon_memory": mem})
        print(f"daemon memory with {a.gguf.name}: RSS {mem['rss_mib']} MiB after a completion, peak {mem['peak_rss_mib']} MiB")
    if a.out:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
