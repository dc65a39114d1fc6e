"""docs/benchmarks.md, docs/benchmarks.png and the table printed to stdout, from the report dict."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

TARGETS_MS = {"lsp_p50": 150.0, "lsp_p95": 300.0, "typed_through": 5.0}
SPEC_VS_AR = 1.5
SPEC_VS_HF = 2.0
SPEC_VS_LLAMA = 1.0


def _f(x, nd=1, unit="") -> str:
    if x is None:
        return "-"
    return f"{x:.{nd}f}{unit}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _load(rec: dict | None) -> str:
    if not rec:
        return "-"
    a, b = rec.get("load_start"), rec.get("load_end")
    return f"{a[0]:.2f} -> {b[0]:.2f}" if a and b else "-"


# ----------------------------------------------------------------------------- targets


def targets(r: dict) -> list[dict]:
    """Each target: what, goal, measured, hit (True/False/None when not measured), note."""
    out = []
    var = r.get("latency", {}).get("variants", {})
    spec_lat = var.get("spec")
    if spec_lat:
        m = spec_lat["latency_cache_miss"]
        ok = m["n"] > 0
        out.append({"what": "single-line via `tricode lsp`, cache miss, daemon warm: p50", "goal": "< 150 ms",
                    "measured": f"{m['p50']:.0f} ms (n={m['n']})" if ok else "no sample",
                    "hit": (m["p50"] < TARGETS_MS["lsp_p50"]) if ok else None,
                    "by": f"{m['p50'] / TARGETS_MS['lsp_p50']:.2f}x the goal" if ok else ""})
        out.append({"what": "single-line via `tricode lsp`, cache miss, daemon warm: p95", "goal": "< 300 ms",
                    "measured": f"{m['p95']:.0f} ms" if ok else "no sample",
                    "hit": (m["p95"] < TARGETS_MS["lsp_p95"]) if ok else None,
                    "by": f"{m['p95'] / TARGETS_MS['lsp_p95']:.2f}x the goal" if ok else ""})
        t = spec_lat["latency_typed_through"]
        ok = t["n"] > 0
        out.append({"what": "typed-through cache hit (client-side, p50; p95 in brackets)", "goal": "< 5 ms",
                    "measured": f"{t['p50']:.1f} ms ({t['p95']:.1f}) (n={t['n']})" if ok else "no sample",
                    "hit": (t["p50"] < TARGETS_MS["typed_through"]) if ok else None,
                    "by": f"{t['p50'] / TARGETS_MS['typed_through']:.2f}x the goal" if ok else ""})
    for label, v in var.items():
        if label == "spec" or v.get("mode") != "spec":
            continue
        m = v["latency_cache_miss"]
        if m["n"]:
            out.append({"what": f"same, daemon variant `{label}`: p50 / p95", "goal": "< 150 / < 300 ms",
                        "measured": f"{m['p50']:.0f} / {m['p95']:.0f} ms (n={m['n']})",
                        "hit": m["p50"] < TARGETS_MS["lsp_p50"] and m["p95"] < TARGETS_MS["lsp_p95"],
                        "by": f"{m['p50'] / TARGETS_MS['lsp_p50']:.2f}x / {m['p95'] / TARGETS_MS['lsp_p95']:.2f}x"})
    ar_lat = var.get("ar")
    if spec_lat and ar_lat and spec_lat.get("split_cache_miss") and ar_lat.get("split_cache_miss"):
        sd, ad = spec_lat["split_cache_miss"], ar_lat["split_cache_miss"]
        if sd["decode_ms"] and sd["total_ms"]:
            ratio = ad["decode_ms"] / sd["decode_ms"]
            out.append({"what": "`spec` vs `ar` through `tricode lsp` (daemon warm, prompt reused): daemon decode "
                                "time p50 (daemon total in brackets)", "goal": ">= 1.5x",
                        "measured": f"{ratio:.2f}x ({ad['decode_ms']:.0f} vs {sd['decode_ms']:.0f} ms; total "
                                    f"{ad['total_ms'] / sd['total_ms']:.2f}x)",
                        "hit": ratio >= SPEC_VS_AR, "by": f"{ratio / SPEC_VS_AR:.2f}x the goal"})
    dec = r.get("decoding", {}).get("single")
    if dec:
        spec_name = r["spec_default"]
        c = dec["configs"]
        if "ar" in c and spec_name in c:
            ratio = c["ar"]["ms_median"] / c[spec_name]["ms_median"] if c[spec_name]["ms_median"] else 0
            dratio = (c["ar"]["decode_ms_median"] / c[spec_name]["decode_ms_median"]
                      if c[spec_name]["decode_ms_median"] else 0)
            mism = dec["spec_vs_ar_mismatches"].get(spec_name)
            out.append({"what": f"`{spec_name}` vs `ar` wall-clock, single-line, equal output ({mism} mismatches)",
                        "goal": ">= 1.5x", "measured": f"{ratio:.2f}x (decode phase only: {dratio:.2f}x)",
                        "hit": ratio >= SPEC_VS_AR and mism == 0, "by": f"{ratio / SPEC_VS_AR:.2f}x the goal"})
            best = max((n for n in c if n.startswith("spec")), key=lambda n: c["ar"]["ms_median"] / c[n]["ms_median"]
                       if c[n]["ms_median"] else 0)
            if best != spec_name:
                b = c["ar"]["ms_median"] / c[best]["ms_median"] if c[best]["ms_median"] else 0
                out.append({"what": f"best spec configuration (`{best}`) vs `ar`", "goal": ">= 1.5x",
                            "measured": f"{b:.2f}x ({dec['spec_vs_ar_mismatches'].get(best)} mismatches)",
                            "hit": b >= SPEC_VS_AR and dec["spec_vs_ar_mismatches"].get(best) == 0,
                            "by": f"{b / SPEC_VS_AR:.2f}x the goal"})
    # issue 12: the forward itself (default torch threads)
    th0 = r.get("forward_costs_threads_default")
    fc = {x["what"]: x for x in r.get("forward_costs", []) if x.get("threads", th0) == th0}
    ar_step = fc.get("AR step")
    if ar_step and "aten_ops" in ar_step:
        out.append({"what": "aten ops per one-token forward (torch.profiler, nested ops counted)", "goal": "<= 400",
                    "measured": str(ar_step["aten_ops"]), "hit": ar_step["aten_ops"] <= 400,
                    "by": f"{ar_step['aten_ops'] / 400:.2f}x the goal"})
    v4 = fc.get("verify b4")
    if ar_step and v4:
        out.append({"what": "4-token verify / one-token step (ms)", "goal": "<= 1.15x",
                    "measured": f"{v4['x_ar_step']:.2f}x ({v4['ms']:.2f} vs {ar_step['ms']:.2f} ms)",
                    "hit": v4["x_ar_step"] <= 1.15, "by": f"{v4['x_ar_step'] / 1.15:.2f}x the goal"})
    if dec and "ar" in dec["configs"] and r["spec_default"] in dec["configs"]:
        a, sp = dec["configs"]["ar"], dec["configs"][r["spec_default"]]
        if sp["decode_ms_median"]:
            d = a["decode_ms_median"] / sp["decode_ms_median"]
            out.append({"what": f"`{r['spec_default']}` vs `ar` decode phase (single-line, median)", "goal": ">= 2x",
                        "measured": f"{d:.2f}x", "hit": d >= 2.0, "by": f"{d / 2.0:.2f}x the goal"})
    peers = r.get("peers", {})
    groups = peers.get("by_threads") or ({str(peers.get("threads")): peers["engines"]} if peers.get("engines") else {})
    for th, eng in groups.items():
        base = eng.get("tricode " + peers["spec_config"])
        if not base:
            continue
        for name, row in eng.items():
            if name.startswith("tricode"):
                continue
            goal = SPEC_VS_HF if name.startswith("transformers") else SPEC_VS_LLAMA
            ratio = row["ratio_vs_tricode_spec"]
            out.append({"what": f"`{peers['spec_config']}` vs {name}, {th} thread{'s' if th != '1' else ''} "
                                "(ms per single-line completion)",
                        "goal": f">= {goal:g}x", "measured": f"{ratio:.2f}x ({row['ms_median']:.0f} ms vs "
                                                            f"{base['ms_median']:.0f} ms)",
                        "hit": ratio >= goal, "by": f"{ratio / goal:.2f}x the goal"})
    return out


def _hit(h) -> str:
    return "not measured" if h is None else ("**hit**" if h else "**miss**")


# ----------------------------------------------------------------------------- markdown


def _decode_table(sec: dict, multi: bool) -> list[str]:
    rows = ["| config | exact | edit sim | TPF | accept | lookup | ms p50 | ms p95 | decode ms p50 | tok/s | decode tok/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in sec["configs"].items():
        look = _pct(s["lookup_share"]) if "lookup_share" in s else "-"
        rows.append(f"| `{name}` | {_pct(s['exact_match'])} | {s['edit_similarity']:.3f} | "
                    f"{s['tokens_per_forward']:.2f} | {_f(s.get('mean_accept_length'), 2)} | {look} | {s['ms_median']:.0f} | "
                    f"{s['ms_p95']:.0f} | {s['decode_ms_median']:.0f} | {s['tokens_per_s']:.0f} | "
                    f"{s['decode_tokens_per_s']:.0f} |")
    b = sec["baseline_copy_previous_line"]
    rows.append(f"| copy previous line (baseline) | {_pct(b['exact_match'])} | {b['edit_similarity']:.3f} "
                "| | | | | | | | |")
    return rows


def _concurrency(c: dict | None) -> list[str]:
    if not c:
        return []
    md = ["## 5. Several completions at once (batching)", "",
          f"n held-out single-line completions (median prompt {c['prompt_tokens_median']:.0f} tokens, groups of n "
          f"out of {c['prompts']} tasks) started together, as when n editors ask at once: one after another vs "
          "batched (engine.generate.step, what the daemon does with `batch_size` > 1). `cold`: every completion "
          "prefills its whole prompt (prompts differ in length, so the prefills run one by one); `warm`: each "
          "cache already holds its prompt but the last token (the daemon after a keystroke). ms = wall time per "
          "group of n; tok/s over all n.", "",
          "| config | start | n | one after another ms | batched ms | speed-up | batched tok/s | mismatches |",
          "|---|---|---|---|---|---|---|---|"]
    for x in c["rows"]:
        md.append(f"| `{x['config']}` | {x['start']} | {x['n']} | {x['serial_ms']:.0f} | {x['batched_ms']:.0f} | "
                  f"{_f(x['speedup'], 2)}x | {_f(x['tokens_per_s'], 0)} | {x['mismatches']} |")
    md += ["", "Median speed-up at n = " + str(max(c["sizes"])) + ": " + ", ".join(
        f"{k} {v:.2f}x" for k, v in c["median_speedup_at_max"].items()) + ".", ""]
    return md


def markdown(r: dict) -> str:
    m = r["machine"]
    md = ["# Benchmarks", "",
          f"Generated by `{r['command']}` on {m['date']} (commit `{m['commit']}`)"
          + (" — **smoke run on a tiny random-weight checkpoint: the figures mean nothing**" if r.get("smoke") else "")
          + ". Everything below comes from that one run: the same weights, prompts and machine for every engine.",
          ""]
    cores = m.get("cores") or 1
    loaded = any(max(s.get("load_start", [0])[0], s.get("load_end", [0])[0]) > cores
                 for s in r.get("sections", {}).values())
    md += ["## Machine", "",
           "| | |", "|---|---|",
           f"| CPU | {m['cpu']} ({m['cores']} cores{', GPU ' + m['gpu'] if m.get('gpu') else ''}) |",
           f"| memory | {m.get('memory_gib')} GiB |",
           f"| model | `{r['model']}`: {r['parameters'] / 1e6:.1f}M parameters, {r['device']} {r['dtype']} |",
           f"| torch | {m['torch']} ({m['torch_threads']} threads) |",
           f"| transformers | {m.get('transformers') or 'not installed'} |",
           f"| llama-cpp-python | {m.get('llama_cpp_python') or 'not installed'} |",
           f"| gguf | {m.get('gguf') or 'not installed'} |",
           f"| python | {m['python']} (bench process niceness {m.get('nice')}) |",
           f"| total time | {r.get('seconds', 0) / 60:.1f} min |", ""]
    md += ["Load average (1 min) at the start and the end of each section (it counts the bench's own busy "
           "threads too: 1 to 2 while it computes; above the core count, other processes were competing):", "",
           "| section | seconds | load average |", "|---|---|---|"]
    for name, s in r.get("sections", {}).items():
        md.append(f"| {name}{' (earlier run)' if s.get('earlier_run') else ''} | {s['seconds']:.0f} | {_load(s)} |")
    md.append("")
    if loaded:
        md += [f"**Measured on a loaded machine**: other processes (other engineers' test runs) competed for the "
               f"{cores} cores during the run (a load average above {cores}); absolute milliseconds are pessimistic and "
               "noisier than on an idle machine. Ratios between engines are measured in the same section, "
               "interleaved task by task, so they are the robust figures.", ""]
    else:
        md += [f"The machine is shared with other engineers, but the load average stayed at or below the core count "
               f"({cores}) during this run: no section competed with another heavy process for long.", ""]
    mf = r.get("merged_from")
    if mf:
        earlier = [n for n, x in r.get("sections", {}).items() if x.get("earlier_run")]
        md += [f"Sections {', '.join(earlier)} come from an earlier run on {mf['date']} (commit `{mf.get('commit')}`, "
               f"`{mf.get('command')}`, {(mf.get('seconds') or 0) / 60:.0f} min); the others were run again on "
               f"{m['date']} with `{r['command']}`.", ""]
    if r.get("cuts"):
        md += ["Task counts were cut to fit the time box: " + "; ".join(r["cuts"]) + ".", ""]

    md += ["## Targets", "", "| target | goal | measured | result | measured / goal |", "|---|---|---|---|---|"]
    for t in targets(r):
        md.append(f"| {t['what']} | {t['goal']} | {t['measured']} | {_hit(t['hit'])} | {t.get('by', '')} |")
    md.append("")
    if r.get("analysis"):
        md += ["### Where the milliseconds go", ""] + r["analysis"] + [""]

    dec = r.get("decoding", {})
    if dec:
        md += ["## 1. Decoding per mode and block size", "",
               "Greedy, one prompt at a time, a fresh KV cache per completion (a cold prompt: the whole prompt is "
               "prefilled; section 2 shows the warm case), prompts of at most "
               f"{r['prompt_tokens']} tokens in training/evaluate.py's layout "
               "(`[EOS] [FIM_SUFFIX] suffix [FIM_PREFIX] prefix [FIM_MIDDLE]`). "
               "TPF = generated tokens / forwards (the prefill counted as one forward; a spec step is two forwards, "
               "draft and verify, a quadratic step one; a step whose draft came from the context, engine/lookup.py, "
               "one); accept = tokens emitted per verify; lookup = share of spec steps drafted from the context "
               "(`no-lookup`: diffusion drafts only); "
               "ms = whole completion including the prefill; decode ms = after the prefill; "
               "tok/s = generated tokens / whole time; decode tok/s = tokens after the first / decode time.", ""]
        for kind, title in (("single", "Single-line"), ("multi", "Multi-line (2 to 4 lines, stop after that many)")):
            sec = dec.get(kind)
            if not sec:
                continue
            md += [f"**{title}** ({sec['tasks']} held-out tasks, median prompt {sec['prompt_tokens_median']:.0f} "
                   f"tokens, at most {sec['max_new_tokens']} new tokens):", ""]
            md += _decode_table(sec, kind == "multi") + [""]
            mm = sec["spec_vs_ar_mismatches"]
            md += ["Greedy spec vs ar, tasks whose tokens differ (expected 0): "
                   + ", ".join(f"`{k}` {v}" for k, v in mm.items()) + ".", ""]
            agree = {k: v.get("agreement_with_ar") for k, v in sec["configs"].items() if "agreement_with_ar" in v}
            if agree:
                md += ["Diffusion writes the same text as ar in: "
                       + ", ".join(f"`{k}` {_pct(v)}" for k, v in agree.items()) + " of tasks.", ""]
        fc = r.get("forward_costs")
        if fc:
            md += [f"**Cost of one forward** (median of repeats, over a cache of {r['forward_costs_prefix']} tokens; "
                   "what each decoder step costs):", "",
                   "| torch threads | forward | pattern | tokens | ms | x AR step | aten ops | share of weight-read bound |",
                   "|---|---|---|---|---|---|---|---|"]
            md += [f"| {x.get('threads', '-')} | {x['what']} | {x['pattern']} | {x['T']} | {x['ms']:.2f} | "
                   f"{x['x_ar_step']:.2f} | {x.get('aten_ops', '-')} | "
                   f"{_pct(x['bound_share']) if 'bound_share' in x else '-'} |" for x in fc]
            wb = r.get("weight_read_bound")
            if wb:
                md += ["", f"Weight-read bound: {wb['weight_bytes'] / 1e6:.1f} MB of weights (the embedding excepted) "
                           f"at {wb['gbps']:.1f} GB/s (a large copy on this machine) = {wb['ms']:.2f} ms per forward."]
            md.append("")
        sm = r.get("spec_model")
        if sm:
            md += ["**Spec speed-up predicted from those costs** (decode phase: acceptance x AR step / cost of a "
                   "spec step; measured single-line acceptance):", "",
                   "| torch threads | config | accept | ms per spec step | predicted decode speed-up over ar |",
                   "|---|---|---|---|---|"]
            md += [f"| {x.get('threads', '-')} | `{x['config']}` | {x['accept']:.2f} | {x['ms_per_step']:.2f} | "
                   f"{x['predicted_speedup']:.2f}x |" for x in sm]
            md.append("")
        pr = r.get("profile")
        if pr:
            md += ["**torch.profiler** over the same single-line completions per config (self CPU time per op; "
                   "`not in ops` = wall time no aten op accounts for: Python, dispatch, the decoder's bookkeeping; "
                   "the profiler itself inflates per-op overhead):", ""]
            for name, p in pr.items():
                other = max(p["wall_ms"] - p["op_self_ms"], 0)
                md += [f"`{name}`: {p['completions']} completions, {p['wall_ms']:.0f} ms wall, {p['forwards']} forwards "
                       f"({p['aten_ops_per_forward']:.0f} aten ops per forward), prefill {p['prefill_ms']:.0f} ms, "
                       f"not in ops {other:.0f} ms ({other / p['wall_ms']:.0%}).", "",
                       "| op | calls | self ms | share of wall |", "|---|---|---|---|"]
                md += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.1f} | {o['share']:.1%} |" for o in p["ops"]]
                md.append("")

    lat = r.get("latency", {})
    var = lat.get("variants", {})
    if lat and "skipped" not in lat:
        md += ["## 2. Keystroke-to-suggestion latency through `tricode lsp`", "",
               f"A language client (pygls, JSON-RPC over stdio) drives `tricode lsp` in front of a private, warm "
               f"daemon and replays an editing session on {lat['sites']} real held-out files: open the file with one "
               f"line's content removed, ask once at the cursor (`open`: the daemon has not seen the document), then "
               f"type the line ({lat['chars']} characters in all) at {lat['cps'][0]:.0f} to {lat['cps'][1]:.0f} "
               "characters per second, an inline-completion request per keystroke and `$/cancelRequest` for the "
               "previous one when it is still pending; at word boundaries the typist sometimes pauses "
               "(0.6 to 1.2 s). Latency is client-side, from the keystroke to the response (the LSP's "
               f"debounce of {lat['options'].get('debounce_ms')} ms included). LSP settings: "
               f"`{lat['options']}`; the daemon runs with its default config except where the variant says so "
               f"(`cpu_threads`: torch threads of the daemon; 0, the default, lets torch use every core).", "",
               "| variant | requests | answered | from cache | superseded or cancelled | cache miss p50 / p95 / p99 (n) "
               "| open (cold doc) p50 / p95 (n) | cache hit p50 / p95 (n) | typed-through p50 / p95 (n) |",
               "|---|---|---|---|---|---|---|---|---|"]
        for mode, s in var.items():
            cm, op, ch, tt = (s["latency_cache_miss"], s["latency_open"], s["latency_cache_hit"],
                              s["latency_typed_through"])
            md.append(f"| `{mode}` | {s['requests']} | {_pct(s['answered_share'])} | {_pct(s['cache_share'])} | "
                      f"{_pct(s['superseded_share'])} | {cm['p50']:.0f} / {cm['p95']:.0f} / {cm['p99']:.0f} ({cm['n']}) | "
                      f"{op['p50']:.0f} / {op['p95']:.0f} ({op['n']}) | {ch['p50']:.1f} / {ch['p95']:.1f} ({ch['n']}) | "
                      f"{tt['p50']:.1f} / {tt['p95']:.1f} ({tt['n']}) |")
        md += ["", "Daemon-side split (medians, ms) of the answered model calls; post = total minus the others; "
               "outside daemon = client latency minus the daemon's total (debounce, LSP, JSON-RPC, socket):", "",
               "| variant | requests | queue | context | prefill | decode | post | daemon total | outside daemon "
               "| client | prefill tokens | reused tokens | tokens | TPF |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for mode, s in var.items():
            for label, key in (("cache miss", "split_cache_miss"), ("open", "split_open")):
                x = s.get(key)
                if x:
                    md.append(f"| `{mode}` | {label} | {x['queue_ms']:.1f} | {x['context_ms']:.1f} | {x['prefill_ms']:.1f} | "
                              f"{x['decode_ms']:.1f} | {x['post_ms']:.1f} | {x['total_ms']:.1f} | "
                              f"{x['outside_daemon_ms']:.1f} | {x['client_ms']:.1f} | {x['prefill_tokens']:.0f} | "
                              f"{x['reused_tokens']:.0f} | {x['tokens']:.0f} | {x['tokens_per_forward']:.2f} |")
        md += ["", "Classes of all requests: " + "; ".join(
            f"`{mode}`: " + ", ".join(f"{k} {_pct(v)}" for k, v in s["classes"].items())
            for mode, s in var.items()) + ".",
            "Model answers cut by the loop guard (textkit/loops.py): " + "; ".join(
            f"`{mode}`: {s.get('loop_cut', 0)} of {s.get('model_answers', 0)}" for mode, s in var.items()) + ".", ""]
    elif lat:
        md += ["## 2. Keystroke-to-suggestion latency", "", f"Skipped: {lat['skipped']}", ""]
    md += new_place(r.get("new_place"))

    peers = r.get("peers", {})
    if peers:
        md += ["## 3. Peers on the same weights", ""]
        groups = peers.get("by_threads") or ({str(peers.get("threads")): peers["engines"]}
                                             if peers.get("engines") else {})
        if groups:
            md += [f"{peers['tasks']} single-line tasks of section 1 (same prompt ids, a cold prompt each time), each "
                   "engine generating as many tokens as tricode `ar` did (greedy, mask id suppressed), timed in turn "
                   "task by task, with the same number of threads for every engine (torch threads for tricode and "
                   "transformers, `n_threads` for llama.cpp). ratio = engine ms / tricode "
                   f"`{peers['spec_config']}` ms (above 1: tricode spec is faster). prefill = the prompt's forward "
                   "(tricode, llama.cpp); decode tok/s = tokens after the first / time after the prefill.", "",
                   "| threads | engine | ms per completion p50 | mean | prefill ms p50 | tokens/s | decode tok/s "
                   "| output mismatches vs tricode ar | ratio (x tricode spec) | ratio (x tricode ar) |",
                   "|---|---|---|---|---|---|---|---|---|---|"]
            for th, eng in groups.items():
                for name, row in eng.items():
                    md.append(f"| {th} | {name} | {row['ms_median']:.0f} | {row['ms_mean']:.0f} | "
                              f"{_f(row.get('prefill_ms_median'), 0)} | {row['tokens_per_s']:.1f} | "
                              f"{_f(row.get('decode_tokens_per_s'), 1)} | {row['mismatches']}/{row['completions']} | "
                              f"{row['ratio_vs_tricode_spec']:.2f}x | {row['ratio_vs_tricode_ar']:.2f}x |")
            md.append("")
        ch = peers.get("checks", {})
        if ch:
            md += ["Export checks: " + "; ".join(f"{k.replace('_', ' ')}: "
                                                  f"{v:.2e}" if isinstance(v, float) and 'diff' in k else
                                                  f"{k.replace('_', ' ')}: {v}" for k, v in ch.items())
                   + ". (llama.cpp's tokenizer is gpt2-style BPE with its own pre-tokenizer regex; tricode's "
                     "tokenizer.json has a different split regex, so its text tokenization differs and the "
                     "prompts are fed as token ids.)", ""]
        for k, v in peers.get("unavailable", {}).items():
            md.append(f"- {k}: not measured: {v}")
        if peers.get("unavailable"):
            md.append("")

    he = r.get("humaneval", {})
    if he:
        md += ["## 4. HumanEval single-line infilling", ""]
        if "skipped" in he:
            md += [f"Skipped: {he['skipped']}", ""]
        else:
            md += [f"{he['tasks']} of {he['of']} tasks (training/evaluate.py's seeded subset; "
                   + ("all of them" if he['tasks'] == he['of'] else
                      "a subset so that the run fits its time box (`make bench` defaults to 200; "
                      "`python -m bench --humaneval-limit 1033` runs the whole set, about 5x longer)")
                   + f"); tests run in sandboxed subprocesses (network isolation: {he['sandbox']}).", "",
                   "| config | pass@1 | exact | TPF | accept | ms p50 | ms p95 |", "|---|---|---|---|---|---|---|"]
            for name, s in he["configs"].items():
                md.append(f"| `{name}` | {_pct(s['pass_at_1'])} ({s['passed']}) | {_pct(s['exact_match'])} | "
                          f"{s['tokens_per_forward']:.2f} | {_f(s.get('mean_accept_length'), 2)} | {s['ms_median']:.0f} | "
                          f"{s['ms_p95']:.0f} |")
            md += ["", "Greedy spec vs ar mismatches: " + ", ".join(
                f"`{k}` {v}" for k, v in he["spec_vs_ar_mismatches"].items()) + ".", ""]
    md += _concurrency(r.get("concurrency"))
    if r.get("load"):
        from bench.load import markdown as load_markdown
        ld = r["load"]
        md += ["## 6. Load: editors typing against one daemon, refactors in between", ""]
        if "skipped" in ld:
            md += [f"Skipped: {ld['skipped']}", ""]
        for name, run in ({} if "skipped" in ld else ld).items():
            md += [f"**{name}**: " + load_markdown(run, r.get("command", "python -m bench")), ""]
    if r.get("llamacpp"):
        from bench.llamacpp import markdown as llamacpp_markdown
        md += ["## 7. A GGUF model through llama.cpp's kernels: tricode vs llama.cpp", ""]
        for run in r["llamacpp"]:
            md += [f"Skipped: {run['skipped']}", ""] if "skipped" in run else llamacpp_markdown(run)
        mem = r.get("llamacpp_memory") or {}
        md += ([f"Daemon memory: skipped ({mem['skipped']})", ""] if "skipped" in mem else
               [f"Daemon memory with the model loaded (`tricode daemon run`, llama.cpp runner): RSS "
                f"{mem['rss_mib']} MiB after a completion, peak {mem['peak_rss_mib']} MiB.", ""] if mem else [])
    changes = Path(__file__).with_name("changes.md")
    if changes.is_file() and not r.get("smoke"):
        md += ["## Engine changes, before and after", "",
               "Kept by hand in bench/changes.md (each change's figures from the bench runs before and after it):", "",
               changes.read_text().strip(), ""]
    for other in r.get("appendix", []):
        md += appendix(other)
    if r.get("png"):
        md += ["## Plot", "", f"![benchmarks]({Path(r['png']).name})", ""]
    md += ["## Reproduce", "", "```", "make bench                 # = nice python -m bench: this file and the plot",
           f"{r['command']}    # this run",
           "python -m bench --smoke    # seconds, tiny random model (tests/test_bench.py)",
           "python -m bench --render run.json [--appendix loaded.json]   # re-render from --json reports",
           "```", ""]
    if r.get("appendix"):
        md += ["The appendix is the `--json` report of the loaded run, summarised with `--appendix`.", ""]
    return "\n".join(md)


def new_place(np: dict | None) -> list[str]:
    """Section 2's new-place replay (bench/newplace.py)."""
    if not np:
        return []
    if "skipped" in np:
        return ["### The first suggestion at a new place", "", f"Skipped: {np['skipped']}", ""]
    md = ["### The first suggestion at a new place", "",
          f"{np['files']} held-out files: open one, rest the cursor at the end of a line inside a function, wait "
          f"{np['pause_s']:.1f} s, press Enter and ask for a completion on the fresh line (`open`); then jump to "
          "another function of the file and do the same (`jump`). `before`: no prefetch, contiguous prompt "
          "layout; `plain`: prefetch at didOpen only (any LSP client); `plugin`: also `tricode/cursorIdle` "
          f"{np['rest_s'] * 1000:.0f} ms after the cursor rests (the Neovim and VS Code clients). Client-side "
          "latency from the Enter to the response; the daemon's split is the median over model calls.", "",
          "| variant | place | p50 / p95 ms (n) | prefill tokens | reused tokens | prefill ms | decode ms "
          "| daemon total ms | cut for looping |", "|---|---|---|---|---|---|---|---|---|"]
    for label, v in np["variants"].items():
        for phase in ("open", "jump"):
            x = v[phase]
            lat, sp = x["latency"], x["split"] or {}
            md.append(f"| `{label}` | {phase} | {lat['p50']:.0f} / {lat['p95']:.0f} ({lat['n']}) | "
                      f"{sp.get('prefill_tokens', 0):.0f} | {sp.get('reused_tokens', 0):.0f} | "
                      f"{sp.get('prefill_ms', 0):.0f} | {sp.get('decode_ms', 0):.0f} | {sp.get('total_ms', 0):.0f} | "
                      f"{x['loop_cut']} of {x['model_calls']} |")
    pf = {k: v["daemon"].get("prefetch") for k, v in np["variants"].items()}
    md += ["", "Daemon prefetch counters per variant: " + "; ".join(f"`{k}`: {v}" for k, v in pf.items()) + ".", ""]
    return md


def appendix(o: dict) -> list[str]:
    """An earlier run (typically on a loaded machine), summarised: targets, LSP variants, forward costs."""
    m = o["machine"]
    loads = "; ".join(f"{n} {_load(x)}" for n, x in o.get("sections", {}).items())
    md = [f"## Appendix: the same bench on a loaded machine ({m['date']})", "",
          f"`{o['command']}` (commit `{m['commit']}`, {o.get('seconds', 0) / 60:.0f} min), while other engineers' "
          f"test runs and a `tricode eval` shared the {m['cores']} cores. Load average (1 min) per section: {loads}."
          + (" " + "; ".join(o["cuts"]) + "." if o.get("cuts") else ""), "",
          "| target | goal | measured | result |", "|---|---|---|---|"]
    for t in targets(o):
        md.append(f"| {t['what']} | {t['goal']} | {t['measured']} | {_hit(t['hit'])} |")
    md.append("")
    var = o.get("latency", {}).get("variants", {})
    if var:
        md += ["`tricode lsp` under that load, per daemon variant (cache-miss latency, client side, and the daemon's "
               "median split):", "",
               "| variant | cache miss p50 / p95 / p99 (n) | open p50 (n) | typed-through p50 (n) | queue | prefill | decode "
               "| daemon total |", "|---|---|---|---|---|---|---|---|"]
        for label, v in var.items():
            cm, op, tt, x = v["latency_cache_miss"], v["latency_open"], v["latency_typed_through"], v.get("split_cache_miss") or {}
            md.append(f"| `{label}` | {cm['p50']:.0f} / {cm['p95']:.0f} / {cm['p99']:.0f} ({cm['n']}) | {op['p50']:.0f} "
                      f"({op['n']}) | {tt['p50']:.1f} ({tt['n']}) | {_f(x.get('queue_ms'), 0)} | {_f(x.get('prefill_ms'), 0)} | "
                      f"{_f(x.get('decode_ms'), 0)} | {_f(x.get('total_ms'), 0)} |")
        md.append("")
    fc = o.get("forward_costs", [])
    if fc:
        keep = ("AR step", "draft b4", "verify b4", "quadratic step b4")
        by: dict = {}
        for x in fc:
            by.setdefault(x.get("threads"), {})[x["what"]] = x["ms"]
        pre = next((k for k in next(iter(by.values())) if k.startswith("prefill")), None)
        cols = ([pre] if pre else []) + [k for k in keep if k in next(iter(by.values()))]
        md += ["Cost of one forward under that load (ms, median):", "",
               "| torch threads | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for th, row in by.items():
            md.append(f"| {th} | " + " | ".join(f"{row.get(c, 0):.1f}" for c in cols) + " |")
        md.append("")
    return md


# ----------------------------------------------------------------------------- stdout


def main_table(r: dict) -> str:
    lines = []
    dec = r.get("decoding", {}).get("single")
    if dec:
        lines.append(f"Single-line completions ({dec['tasks']} held-out tasks, cold prompt, median "
                     f"{dec['prompt_tokens_median']:.0f} tokens)")
        lines.append(f"  {'config':<14} {'exact':>6} {'TPF':>5} {'accept':>6} {'ms p50':>7} {'ms p95':>7} "
                     f"{'dec p50':>7} {'tok/s':>6}")
        for n, s in dec["configs"].items():
            lines.append(f"  {n:<14} {100 * s['exact_match']:>5.1f}% {s['tokens_per_forward']:>5.2f} "
                         f"{_f(s.get('mean_accept_length'), 2):>6} {s['ms_median']:>7.0f} {s['ms_p95']:>7.0f} "
                         f"{s['decode_ms_median']:>7.0f} {s['tokens_per_s']:>6.0f}")
        lines.append("")
    peers = r.get("peers", {})
    for th, eng in (peers.get("by_threads") or {}).items():
        lines.append(f"Peers at {th} thread(s) (same weights, prompts, output length; x = engine ms / tricode spec ms)")
        for n, row in eng.items():
            lines.append(f"  {n:<44} {row['ms_median']:>7.0f} ms {row['tokens_per_s']:>6.1f} tok/s "
                         f"{row['ratio_vs_tricode_spec']:>5.2f}x")
        lines.append("")
    for mode, s in r.get("latency", {}).get("variants", {}).items():
        if isinstance(s, dict):
            cm, tt = s["latency_cache_miss"], s["latency_typed_through"]
            lines.append(f"tricode lsp ({mode}): cache miss p50 {cm['p50']:.0f} / p95 {cm['p95']:.0f} / p99 "
                         f"{cm['p99']:.0f} ms (n={cm['n']}); typed-through p50 {tt['p50']:.1f} ms (n={tt['n']}); "
                         f"cache {s['cache_share']:.0%}, superseded {s['superseded_share']:.0%}")
    he = r.get("humaneval", {})
    if he.get("configs"):
        lines.append("HumanEval single-line pass@1 (" + f"{he['tasks']} tasks): "
                     + ", ".join(f"{n} {100 * s['pass_at_1']:.1f}%" for n, s in he["configs"].items()))
    lines.append("")
    lines.append("Targets")
    for t in targets(r):
        lines.append(f"  {('HIT' if t['hit'] else 'MISS') if t['hit'] is not None else 'n/a':<5} {t['what']}: "
                     f"{t['measured']} (goal {t['goal']})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the plot


def plot(r: dict, path: Path) -> str:
    """matplotlib when installed (the bench extra), else bars drawn by a minimal PNG writer."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plain_png(r, path)
        return "minimal PNG writer (matplotlib not installed)"
    import textwrap
    fig, grid = plt.subplots(2, 2, figsize=(15, 10))
    axes = [grid[0][0], grid[1][0], grid[0][1], grid[1][1]]
    dec = r.get("decoding", {}).get("single", {}).get("configs", {})
    names = list(dec)
    colors = {"ar": "#555555", "spec": "#1f77b4", "spec-quad": "#9467bd", "diffusion": "#ff7f0e"}
    ax = axes[0]
    if names:
        pre = [dec[n]["ms_median"] - dec[n]["decode_ms_median"] for n in names]
        decm = [dec[n]["decode_ms_median"] for n in names]
        ax.barh(names, pre, color="#cccccc", label="prefill (cold prompt)")
        ax.barh(names, decm, left=pre, color=[colors.get(dec[n]["family"], "#333") for n in names], label="decode")
        ax.invert_yaxis()
        ax.set_xlabel("ms per single-line completion (median)")
        ax.set_title("1. Decoding per mode and block size (single-line, held-out)")
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    eng = r.get("peers", {}).get("engines", {})
    if eng:
        en = list(eng)
        ax.barh(["\n".join(textwrap.wrap(n, 24)) for n in en], [eng[n]["ms_median"] for n in en],
                color=["#1f77b4" if n.startswith("tricode") else "#d62728" for n in en])
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel("ms per single-line completion (median, same output)")
        ax.set_title("3. Peers on the same weights and prompts")
    ax = axes[2]
    var = r.get("latency", {}).get("variants", {})
    drew = False
    palette = ["#1f77b4", "#555555", "#2ca02c", "#9467bd", "#ff7f0e"]
    for (mode, s), col in zip(var.items(), palette):
        if isinstance(s, dict) and s.get("raw_cache_miss_ms"):
            xs = sorted(s["raw_cache_miss_ms"])
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", color=col,
                    label=f"{mode}: cache miss")
            drew = True
        if isinstance(s, dict) and s.get("raw_cache_hit_ms"):
            xs = sorted(s["raw_cache_hit_ms"])
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", color=col, ls=":",
                    label=f"{mode}: cache hit")
            drew = True
    if drew:
        for x, lab in ((5, "5 ms"), (150, "150 ms"), (300, "300 ms")):
            ax.axvline(x, color="#d62728", ls="--", lw=0.8)
            ax.text(x, 0.02, lab, rotation=90, fontsize=7, color="#d62728")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("keystroke to suggestion, ms (client side, log scale)")
        ax.set_ylabel("share of requests")
        ax.set_title("2. tricode lsp latency while typing (CDF)")
        ax.legend(fontsize=8, loc="upper left")
    ax = axes[3]
    fc = r.get("forward_costs", [])
    if fc:
        ths = sorted({x.get("threads", 0) for x in fc})
        shapes = [x["what"] for x in fc if x.get("threads", 0) == ths[0] and not x["what"].startswith("prefill")]
        width = 0.8 / len(ths)
        for k, th in enumerate(ths):
            row = {x["what"]: x["ms"] for x in fc if x.get("threads", 0) == th}
            ax.bar([i + k * width for i in range(len(shapes))], [row.get(w, 0) for w in shapes], width,
                   label=f"{th} torch thread{'s' if th != 1 else ''}")
        ax.set_xticks([i + width * (len(ths) - 1) / 2 for i in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("ms per forward (median)")
        ax.set_title(f"Cost of one forward over a {r.get('forward_costs_prefix')}-token cache")
        ax.legend(fontsize=8)
    fig.suptitle(f"tricode bench, {r['machine']['cpu']}, {r['machine']['date']}"
                 + (" (SMOKE: tiny random model)" if r.get("smoke") else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "matplotlib " + matplotlib.__version__


def _plain_png(r: dict, path: Path, width: int = 640, height: int = 360) -> None:
    """Horizontal bars of the single-line ms per config (and the peers), no text: a stand-in plot."""
    dec = r.get("decoding", {}).get("single", {}).get("configs", {})
    vals = [(v["ms_median"], (90, 90, 90) if n == "ar" else (31, 119, 180)) for n, v in dec.items()]
    vals += [(v["ms_median"], (214, 39, 40)) for n, v in r.get("peers", {}).get("engines", {}).items()
             if not n.startswith("tricode")]
    img = [[(255, 255, 255)] * width for _ in range(height)]
    if vals:
        top = max(v for v, _ in vals) or 1.0
        bar = max(2, (height - 20) // len(vals) - 4)
        for i, (v, col) in enumerate(vals):
            y0 = 10 + i * (bar + 4)
            for y in range(y0, min(y0 + bar, height)):
                for x in range(10, 10 + int((width - 20) * v / top)):
                    img[y][x] = col
    write_png(path, img)


def write_png(path: Path, rows: list[list[tuple[int, int, int]]]) -> None:
    h, w = len(rows), len(rows[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
