"""`python -m bench` (what `make bench` runs): see bench/__init__.py for the sections.

    python -m bench                          # the full run: docs/benchmarks.md + docs/benchmarks.png
    python -m bench --smoke --out /tmp/b.md  # tiny random checkpoint, tiny sizes: seconds
    python -m bench --sections decoding,peers --tasks 20

Defaults are sized for the 2-core CPU (about 20 to 25 minutes on an idle machine): 40 single-line
and 16 multi-line held-out tasks per configuration, block sizes 4/8/16, 10 replayed editing sites per
inline mode (spec, ar), 20 tasks for the peers, 200 HumanEval tasks (`--humaneval-limit 1033` for
all of them: about 4x longer).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, logger, machine_info, section

SECTIONS = ("decoding", "latency", "peers", "humaneval", "concurrency", "load", "llamacpp")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny random checkpoint, tiny sizes (seconds)")
    p.add_argument("--model", type=Path, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--out", type=Path, default=None, help="markdown report (default docs/benchmarks.md; "
                                                          "--smoke: a temporary directory)")
    p.add_argument("--json", type=Path, default=None, help="also write the whole report as JSON here")
    p.add_argument("--sections", type=_names, default=SECTIONS, help="comma list of " + ",".join(SECTIONS))
    p.add_argument("--tasks", type=int, default=40, help="single-line held-out tasks per configuration")
    p.add_argument("--multi-tasks", type=int, default=16, dest="multi_tasks", help="multi-line tasks per configuration")
    p.add_argument("--blocks", type=_ints, default=(4, 8, 16), help="block sizes for spec / spec-quad / diffusion")
    p.add_argument("--prompt-tokens", type=int, default=1024, dest="prompt_tokens")
    p.add_argument("--lsp-sites", type=int, default=10, dest="lsp_sites", help="replayed editing sites per mode")
    p.add_argument("--lsp-modes", type=_names, default=("spec", "ar"), dest="lsp_modes",
                   help="inline modes replayed against the daemon with its default config")
    p.add_argument("--lsp-threads", type=_ints, default=(1,), dest="lsp_threads",
                   help="also replay spec against a daemon with cpu_threads = each of these (empty: none)")
    p.add_argument("--place-files", type=int, default=10, dest="place_files",
                   help="held-out files of the new-place replay (section 2: open, rest, Enter; jump; 0 = skip)")
    p.add_argument("--place-pause", type=float, default=1.0, dest="place_pause",
                   help="seconds the new-place replay's user pauses at a place before pressing Enter")
    p.add_argument("--peer-tasks", type=int, default=20, dest="peer_tasks")
    p.add_argument("--peers", type=_names, default=("transformers", "llama.cpp"), help="which peers to run")
    p.add_argument("--peer-threads", type=_ints, default=(0, 1), dest="peer_threads",
                   help="thread counts for the peers section (0 = torch's default), every engine alike")
    p.add_argument("--render", type=Path, default=None,
                   help="only write the report (markdown, plot, stdout) from this JSON report of an earlier run")
    p.add_argument("--appendix", type=Path, action="append", default=[],
                   help="JSON report of another run (e.g. on a loaded machine) to summarise in an appendix")
    p.add_argument("--merge", type=Path, default=None,
                   help="a JSON report of an earlier run: the sections not run now are taken from it")
    p.add_argument("--humaneval-limit", type=int, default=200, dest="humaneval_limit",
                   help="HumanEval tasks (seeded subset; 1033 = all; 0 = skip)")
    p.add_argument("--concurrent-tasks", type=int, default=8, dest="concurrent_tasks",
                   help="single-line tasks for the batching section (split into groups of each size)")
    p.add_argument("--concurrent-sizes", type=_ints, default=(1, 2, 4), dest="concurrent_sizes",
                   help="completions started together in the batching section")
    p.add_argument("--profile-tasks", type=int, default=4, dest="profile_tasks")
    p.add_argument("--max-new-tokens", type=int, default=None, dest="max_new_tokens",
                   help="cap on generated tokens (default: 48 single-line, 128 multi-line)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--gguf", default="qwen2.5-coder-0.5b",
                   help="section 7 (llamacpp): the GGUF model run by both engines (a file or a pulled model's name)")
    p.add_argument("--gguf-threads", type=_ints, default=(1, 2), dest="gguf_threads",
                   help="section 7: thread counts, every engine alike")
    p.add_argument("--gguf-tasks", type=int, default=12, dest="gguf_tasks", help="section 7: single-line tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--note", action="append", default=[], help="a sentence for the report (why sizes were cut...)")
    return p.parse_args(argv)


def smoke_setup(args, tmp: Path):
    """A tiny random checkpoint and a few real files of this repository as the 'held-out' set."""
    from tests.tiny_checkpoint import write_tiny_checkpoint
    model_dir = write_tiny_checkpoint(tmp / "tiny", layers=2, hidden=64, heads=4, kv_heads=2, block_size=8)
    files = []
    # lsp/documents.py: functions far enough apart for the new-place replay whatever the seeded shuffle
    # of these paths picks (with only the four above it depended on where the files live)
    for rel in ("lsp/cache.py", "lsp/gating.py", "textkit/tokenizer.py", "engine/kv_cache.py", "lsp/documents.py"):
        p = REPO / rel
        files.append((str(p), p.read_text()))
    args.tasks, args.multi_tasks, args.blocks = min(args.tasks, 2), min(args.multi_tasks, 1), (2, 4)
    args.max_new_tokens = 8
    args.prompt_tokens = min(args.prompt_tokens, 192)
    args.lsp_sites, args.lsp_modes, args.lsp_threads = min(args.lsp_sites, 1), ("spec",), ()
    args.place_files = min(args.place_files, 1)
    args.peer_tasks, args.humaneval_limit, args.profile_tasks = 2, min(args.humaneval_limit, 2), 1
    args.peer_threads = (0,)
    args.concurrent_tasks, args.concurrent_sizes = 2, (1, 2)
    return model_dir, files


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def analysis(r: dict) -> list[str]:
    """Data-driven notes on where the time goes (the figures of this run)."""
    out = []
    dec = r.get("decoding", {}).get("single")
    spec = r.get("spec_default")
    if dec and spec in dec["configs"] and "ar" in dec["configs"]:
        s, a = dec["configs"][spec], dec["configs"]["ar"]
        pre = s["ms_median"] - s["decode_ms_median"]
        out.append(f"- Cold prompt: a single-line completion spends about {pre:.0f} ms of its {s['ms_median']:.0f} ms "
                   f"(median) prefilling a {dec['prompt_tokens_median']:.0f}-token prompt, identical for every mode; "
                   f"only the remaining {s['decode_ms_median']:.0f} ms (`{spec}`) vs {a['decode_ms_median']:.0f} ms "
                   f"(`ar`) depend on the decoder, so the wall-clock ratio is diluted towards 1.")
    fc = {x["what"]: x for x in r.get("forward_costs", [])
          if x.get("threads", 0) == r.get("forward_costs_threads_default", x.get("threads", 0))}
    if fc and spec:
        b = spec.split(" b")[-1]
        ar, dr, vf = fc.get("AR step"), fc.get(f"draft b{b}"), fc.get(f"verify b{b}")
        if ar and dr and vf:
            sc = dec["configs"][spec] if dec else {}
            acc, share = sc.get("mean_accept_length"), sc.get("lookup_share", 0.0)
            step = (vf["ms"] + (1 - share) * dr["ms"]) / ar["ms"]
            out.append(f"- Per forward ({fc['AR step'].get('threads', '?')} torch threads): an AR step costs "
                       f"{ar['ms']:.1f} ms, a draft of {b} {dr['ms']:.1f} ms and a verify of {b} {vf['ms']:.1f} ms. "
                       f"{share:.0%} of the `{spec}` steps took their draft from the context (no draft forward), so "
                       f"a step costs {step:.1f} AR steps on average"
                       + (f" and emits {acc:.2f} tokens: its decode phase can run at about {acc / step:.2f}x ar's "
                          "speed" if acc else "")
                       + ". Self-speculation pays most when a forward of B tokens costs about as much as a forward "
                         f"of one (memory-bound, as on a GPU); here a {b}-token forward costs "
                         f"{(dr['x_ar_step'] + vf['x_ar_step']) / 2:.1f}x a one-token forward.")
        q = fc.get(f"quadratic step b{b}")
        if ar and q:
            out.append(f"- The quadratic variant runs one forward of {q['T']} tokens per step ({q['ms']:.1f} ms = "
                       f"{q['x_ar_step']:.1f} AR steps): one forward instead of two, but {int(b) + 1}x wider.")
    pre32 = next((x for x in fc.values() if x["what"].startswith("prefill") and "twin" not in x["what"]), None)
    twin = next((x for x in fc.values() if x["what"].startswith("prefill") and "twin" in x["what"]), None)
    if pre32 and twin:
        out.append(f"- Prompt prefill: {pre32['what']} in fp32 {pre32['ms']:.0f} ms, on the model's bf16 twin "
                   f"{twin['ms']:.0f} ms ({pre32['ms'] / twin['ms']:.2f}x the fp32 speed; the decoders use the twin for the prompt "
                   "and decode in fp32, so greedy spec still equals ar).")
    pf = r.get("profile", {})
    if spec in pf:
        p = pf[spec]
        top = ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in p["ops"][:5])
        other = max(p["wall_ms"] - p["op_self_ms"], 0) / p["wall_ms"] if p["wall_ms"] else 0
        out.append(f"- Profile of `{spec}` ({p['completions']} completions): {p['aten_ops_per_forward']:.0f} aten ops per "
                   f"forward; top self time {top}; {other:.0%} of the wall time is outside any op (Python, dispatch, "
                   "decoder bookkeeping, the stop callback's detokenization).")
    by_th: dict[int, dict] = {}
    for x in r.get("forward_costs", []):
        by_th.setdefault(x.get("threads", 0), {})[x["what"]] = x["ms"]
    if len(by_th) > 1 and all("AR step" in v for v in by_th.values()):
        (t_hi, hi), (t_lo, lo) = sorted(by_th.items(), reverse=True)[:2]
        pre = next((k for k in hi if k.startswith("prefill")), None)
        out.append(f"- Threads: with {t_hi} torch threads an AR step takes {hi['AR step']:.1f} ms, with {t_lo} "
                   f"{lo['AR step']:.1f} ms" + (f"; the prefill {hi[pre]:.0f} vs {lo[pre]:.0f} ms" if pre else "")
                   + ". A second thread helps the prefill (large matmuls) and hardly the one-token steps (small ops); "
                     "when the other core is busy (an editor, a browser, a test run) it costs instead: every op's "
                     "OpenMP barrier waits for a thread that is not scheduled (see the loaded-machine appendix, "
                     "where one thread is several times faster).")
    for label, lat in r.get("latency", {}).get("variants", {}).items():
        if isinstance(lat, dict) and lat.get("split_cache_miss"):
            x = lat["split_cache_miss"]
            out.append(f"- Through the LSP (`{label}`, cache miss, medians): daemon total {x['total_ms']:.0f} ms; queue "
                       f"{x['queue_ms']:.0f}, context {x['context_ms']:.0f}, prefill {x['prefill_ms']:.0f} "
                       f"({x['prefill_tokens']:.0f} new tokens, {x['reused_tokens']:.0f} reused from the KV cache), decode "
                       f"{x['decode_ms']:.0f}, post {x['post_ms']:.0f}; outside the daemon {x['outside_daemon_ms']:.0f} ms "
                       f"(the debounce of {lat['debounce_ms']} ms, the LSP, JSON-RPC)"
                       + (f"; a completion is {x['tokens']:.0f} tokens (median: the rest of the line being typed), "
                          f"{x['tokens_per_forward']:.2f} per forward" if "tokens" in x else "") + ".")
    peers = r.get("peers", {})
    for th, eng in (peers.get("by_threads") or {}).items():
        ll = [n for n in eng if n.startswith("llama.cpp")]
        me = eng.get("tricode " + peers["spec_config"])
        if ll and me:
            best = min(ll, key=lambda n: eng[n]["ms_median"])
            b = eng[best]
            out.append(f"- Peers at {th} thread(s): {best} completes in {b['ms_median']:.0f} ms (prefill "
                       f"{_fmt(b.get('prefill_ms_median'))} ms, decode {_fmt(b.get('decode_tokens_per_s'))} tok/s) vs "
                       f"{me['ms_median']:.0f} ms for tricode `{peers['spec_config']}` (prefill "
                       f"{_fmt(me.get('prefill_ms_median'))} ms, decode {_fmt(me.get('decode_tokens_per_s'))} tok/s) and "
                       f"{eng['tricode ar']['ms_median']:.0f} ms for tricode `ar`: llama.cpp runs each forward as one "
                       "C/C++ graph with no Python between its ops.")
    return out


def render(args) -> int:
    """Write the markdown, the plot and the stdout table of a saved JSON report (no measuring)."""
    r = json.loads(Path(args.render).read_text())
    if args.appendix:
        r["appendix"] = [json.loads(Path(p).read_text()) for p in args.appendix]
        for a in r["appendix"]:
            a.pop("appendix", None)
    out = Path(args.out or REPO / "docs" / "benchmarks.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(r, out, args.json, f"(from {args.render})")
    return 0


def write_report(r: dict, out: Path, json_path: Path | None, how: str) -> None:
    """The analysis, the markdown and its PNG plot, the JSON (if asked) and the stdout table."""
    from bench import report
    png = out.with_suffix(".png")
    r["analysis"] = analysis(r)
    r["png"] = str(png)
    r["plot_backend"] = report.plot(r, png)
    out.write_text(report.markdown(r))
    if json_path:
        json_path.write_text(json.dumps(r, indent=1, default=str))
    print(report.main_table(r))
    print(f"\nwrote {out} and {png} {how}")


def main(argv=None) -> int:
    args = parse_args(argv)
    log = logger(args.quiet)
    t_start = time.perf_counter()
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        print(f"--sections: unknown {bad}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.render is not None:
        return render(args)
    tmp_ctx = tempfile.TemporaryDirectory(prefix="tricode-bench-")
    tmp = Path(tmp_ctx.name)
    import torch

    from textkit.tokenizer import Tokenizer
    from engine.checkpoint import load_checkpoint
    from engine.generate import default_block_size
    from training import evaluate as ev

    from bench import decoding

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        model_dir, files = smoke_setup(args, tmp)
        torch.set_num_threads(1)      # figures are meaningless anyway; one thread suffers least from a busy box
        out = args.out or Path(tempfile.mkdtemp(prefix="tricode-bench-smoke-")) / "benchmarks.md"
    else:
        from engine.embedded_model import default_model
        model_dir = args.model or default_model()
        if model_dir is None:
            print("python -m bench: no model (pass --model DIR)", file=sys.stderr)
            return 2
        files = None
        out = args.out or REPO / "docs" / "benchmarks.md"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    ck = load_checkpoint(model_dir, device="cpu")
    tok = Tokenizer(model_dir)
    model = ck.model
    if files is None:
        files, finfo = ev.read_heldout_files(Path(model_dir), None, log)
    spec_block = args.blocks[-1] if args.smoke else default_block_size(model)
    blocks = tuple(sorted(set(args.blocks) | {spec_block}))
    r: dict = {"machine": machine_info(), "model": str(model_dir), "parameters": ck.config.num_parameters,
               "device": str(ck.device), "dtype": str(ck.dtype).removeprefix("torch."), "smoke": args.smoke,
               "prompt_tokens": args.prompt_tokens, "blocks": list(blocks),
               "spec_default": f"spec b{spec_block}", "cuts": [],
               "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                 else sys.argv[1:]))}
    r["command"] = r["command"].strip()
    if not args.smoke:
        defaults = parse_args([])
        for name, label in (("tasks", "single-line tasks"), ("multi_tasks", "multi-line tasks"),
                            ("lsp_sites", "replayed editing sites"), ("peer_tasks", "peer tasks"),
                            ("humaneval_limit", "HumanEval tasks")):
            if 0 < getattr(args, name) < getattr(defaults, name):
                r["cuts"].append(f"{label}: {getattr(args, name)} instead of the default {getattr(defaults, name)}")
        r["cuts"] += args.note
    log(f"tricode bench: {model_dir} ({ck.config.num_parameters / 1e6:.1f}M parameters, cpu fp32), "
        f"{len(files)} held-out files, {r['machine']['cpu']}")
    count = lambda s: len(tok.encode(s))  # noqa: E731
    single = ev.make_fim_tasks(files, args.tasks, args.seed, count_tokens=count,
                               max_line_tokens=min(ev.DEFAULT_MAX_LINE_TOKENS, ev.DEFAULT_MAX_NEW_TOKENS - 2))
    multi = decoding.multiline_tasks(files, args.multi_tasks, args.seed, count_tokens=count)
    gens_single = None

    if "decoding" in args.sections:
        with section(r, "1. decoding", log) as rec:
            cfgs = decoding.configs(blocks, no_lookup=(spec_block,))
            res = decoding.run_decoding(model, tok, {"single": single, "multi": multi}, cfgs,
                                        prompt_tokens=args.prompt_tokens, max_new_tokens=args.max_new_tokens,
                                        log=log)
            gens_single = res.get("single", {}).get("gens", {}).get("ar")
            prompts_single = res.get("single", {}).get("prompts")
            for sec in res.values():
                sec.pop("gens", None)
                sec.pop("prompts", None)
            r["decoding"] = res
            prefix = int(res["single"]["prompt_tokens_median"]) if "single" in res else 512
            r["forward_costs_prefix"] = prefix
            r["forward_costs"] = []
            default_threads = torch.get_num_threads()
            for th in sorted({default_threads, 1}, reverse=True):     # the default first: the analysis uses it
                torch.set_num_threads(th)
                rows = decoding.forward_costs(model, prefix, blocks=blocks, repeat=3 if args.smoke else 9)
                r["forward_costs"] += [dict(x, threads=th) for x in rows]
            torch.set_num_threads(default_threads)
            r["forward_costs_threads_default"] = default_threads
            r["weight_read_bound"] = decoding.weight_read_bound(model)
            if "single" in res:
                acc = {n: s.get("mean_accept_length") for n, s in res["single"]["configs"].items()
                       if n.startswith("spec")}
                r["spec_model"] = []
                for th in sorted({x["threads"] for x in r["forward_costs"]}, reverse=True):
                    r["spec_model"] += [dict(x, threads=th) for x in decoding.spec_speedup_model(
                        [x for x in r["forward_costs"] if x["threads"] == th], acc)]
                n = max(1, args.profile_tasks)
                pcfgs = [decoding.DecodeConfig("ar"), decoding.DecodeConfig("spec", "linear", spec_block)]
                r["profile"] = decoding.profile(model, tok, single[:n], prompts_single[:n], pcfgs,
                                                max_new_tokens=args.max_new_tokens or ev.DEFAULT_MAX_NEW_TOKENS)
            rec["tasks"] = {"single": len(single), "multi": len(multi), "configs": len(cfgs)}

    if "latency" in args.sections:
        from bench import latency
        with section(r, "2. lsp latency", log):
            try:
                variants = [(m, m, {}) for m in args.lsp_modes]
                variants += [(f"{m}, cpu_threads={n}", m, {"cpu_threads": n})
                             for n in args.lsp_threads for m in args.lsp_modes]
                r["latency"] = latency.run_latency(
                    Path(model_dir), files, sites=args.lsp_sites, variants=variants, seed=args.seed,
                    cps=(40.0, 60.0) if args.smoke else (10.0, 20.0), log=log)
            except Exception as e:  # noqa: BLE001 - reported in the doc, the rest of the bench goes on
                r["latency"] = {"skipped": f"{type(e).__name__}: {e}"}
                log(f"  latency section failed: {e}")
            if args.place_files > 0:
                from bench import newplace
                try:
                    variants = [v for v in newplace.VARIANTS if v[0] != "plain"] if args.smoke else newplace.VARIANTS
                    r["new_place"] = newplace.run_new_place(Path(model_dir), files, n=args.place_files,
                                                            seed=args.seed, pause_s=args.place_pause,
                                                            variants=variants, log=log)
                except Exception as e:  # noqa: BLE001
                    r["new_place"] = {"skipped": f"{type(e).__name__}: {e}"}
                    log(f"  new-place replay failed: {e}")

    if "peers" in args.sections:
        from bench import peers
        with section(r, "3. peers", log):
            ptasks = single[:args.peer_tasks]
            prompts = [ev.fim_prompt(tok, t.prefix, t.suffix, args.prompt_tokens) for t in ptasks]
            if gens_single is None:
                gens_single = decoding.complete(model, tok, ptasks, prompts, decoding.DecodeConfig("ar"),
                                                max_new_tokens=args.max_new_tokens or ev.DEFAULT_MAX_NEW_TOKENS)
            r["peers"] = peers.run_peers(model, tok, Path(model_dir), ptasks, prompts, gens_single[:len(ptasks)],
                                         spec_block=spec_block, max_new_tokens=args.max_new_tokens, log=log,
                                         want=args.peers, threads=args.peer_threads)

    if "humaneval" in args.sections and args.humaneval_limit != 0:
        from bench import quality
        with section(r, "4. humaneval", log):
            hcfgs = [decoding.DecodeConfig("ar"), decoding.DecodeConfig("spec", "linear", spec_block),
                     decoding.DecodeConfig("spec", "quadratic", spec_block),
                     decoding.DecodeConfig("diffusion", "linear", spec_block)]
            r["humaneval"] = quality.run_humaneval(model, tok, hcfgs, limit=args.humaneval_limit,
                                                   prompt_tokens=args.prompt_tokens, seed=args.seed, log=log)

    if "concurrency" in args.sections:
        from bench import concurrency
        with section(r, "5. concurrency", log):
            ctasks = single[:args.concurrent_tasks]
            cprompts = [ev.fim_prompt(tok, t.prefix, t.suffix, args.prompt_tokens) for t in ctasks]
            ccfgs = [decoding.DecodeConfig("ar"), decoding.DecodeConfig("spec", "linear", spec_block),
                     decoding.DecodeConfig("diffusion", "linear", spec_block)]
            r["concurrency"] = concurrency.run_concurrency(
                model, tok, cprompts, ccfgs, sizes=args.concurrent_sizes,
                max_new_tokens=args.max_new_tokens or ev.DEFAULT_MAX_NEW_TOKENS, log=log)

    if "load" in args.sections:
        from bench import load
        with section(r, "6. load", log):
            try:
                r["load"] = load.run_variants(Path(model_dir), log=log, **(
                    dict(editors=2, rate=10.0, seconds=6.0, refactor_every=2.0) if args.smoke else {}))
            except Exception as e:  # noqa: BLE001 - reported in the doc, the rest of the bench goes on
                r["load"] = {"skipped": f"{type(e).__name__}: {e}"}
                log(f"  load section failed: {e}")

    # a smoke run leaves the real GGUF out unless the section is asked for by name
    if "llamacpp" in args.sections and not (args.smoke and tuple(args.sections) == SECTIONS):
        from bench import llamacpp
        with section(r, "7. llama.cpp kernels", log):
            r["llamacpp"] = []
            for th in args.gguf_threads:
                try:
                    from registry.models import resolve
                    r["llamacpp"].append(llamacpp.run_section(
                        resolve(args.gguf), files, threads=th, tasks=2 if args.smoke else args.gguf_tasks, seed=args.seed,
                        prompt_tokens=200 if args.smoke else 1000, max_new_tokens=8 if args.smoke else 32,
                        multi_tasks=1 if args.smoke else 6, log=log))
                except Exception as e:  # noqa: BLE001 - reported in the doc, the rest of the bench goes on
                    r["llamacpp"].append({"skipped": f"{type(e).__name__}: {e}"})
                    log(f"  llama.cpp section failed: {e}")
            try:
                from registry.models import resolve
                r["llamacpp_memory"] = llamacpp.daemon_memory(resolve(args.gguf))
            except Exception as e:  # noqa: BLE001
                r["llamacpp_memory"] = {"skipped": f"{type(e).__name__}: {e}"}

    r["seconds"] = round(time.perf_counter() - t_start, 1)
    r["appendix"] = [json.loads(Path(p).read_text()) for p in args.appendix]
    for a in r["appendix"]:
        a.pop("appendix", None)
    if args.merge is not None:
        old = json.loads(Path(args.merge).read_text())
        keys = {"decoding": ("decoding", "forward_costs", "forward_costs_prefix", "forward_costs_threads_default",
                             "spec_model", "profile", "weight_read_bound"),
                "latency": ("latency", "new_place"), "peers": ("peers",), "humaneval": ("humaneval",),
                "concurrency": ("concurrency",), "load": ("load",), "llamacpp": ("llamacpp",)}
        names = {"decoding": "1. decoding", "latency": "2. lsp latency", "peers": "3. peers", "humaneval": "4. humaneval",
                 "concurrency": "5. concurrency", "load": "6. load", "llamacpp": "7. llama.cpp kernels"}
        now = dict(r.get("sections", {}))
        r["sections"] = {}
        for sec in SECTIONS:
            if sec in args.sections:
                if names[sec] in now:
                    r["sections"][names[sec]] = now[names[sec]]
                continue
            for k in keys[sec]:
                if k in old:
                    r[k] = old[k]
            if names[sec] in old.get("sections", {}):
                r["sections"][names[sec]] = dict(old["sections"][names[sec]], earlier_run=old["machine"]["date"])
        r["merged_from"] = {"command": old.get("command"), "date": old["machine"]["date"],
                            "commit": old["machine"].get("commit"), "seconds": old.get("seconds"),
                            "cuts": old.get("cuts", [])}
        r["cuts"] = list(dict.fromkeys(old.get("cuts", []) + r["cuts"]))
    write_report(r, out, args.json, f"in {r['seconds'] / 60:.1f} min")
    tmp_ctx.cleanup()
    torch.set_grad_enabled(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
