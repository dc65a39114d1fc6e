"""Section 1: decoding per mode and block size, on held-out single-line and multi-line completions.

Tasks, prompt and metrics are training/evaluate.py's:
  single-line  :func:`training.evaluate.make_fim_tasks` (one line's content removed after its
               indentation; generation stops at the newline: :func:`newline_stop` / :func:`cut_at_newline`)
  multi-line   the same construction over 2 to 4 consecutive lines (:func:`multiline_tasks`, built
               on :func:`training.evaluate.line_task`'s layout); generation stops after as many
               lines as were removed (the oracle line count, like the daemon's ``max_lines``)
  prompt       :func:`training.evaluate.fim_prompt` (suffix first, <= 1024 tokens), a fresh KV
               cache per completion (a cold prompt: the LSP section measures the warm, reused one)
  metrics      :func:`training.evaluate.summarize` / :func:`compare_modes` (exact match, edit
               similarity, tokens per forward with the prefill counted as one forward, acceptance
               length, ms median / p95) plus decode-only ms and tokens/s

Also here: the cost of one forward against its width (why spec gains less on a CPU than on a GPU)
and a torch.profiler summary of a few completions (where the milliseconds go).
"""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from training import evaluate as ev

DEFAULT_BLOCKS = (4, 8, 16)
MULTI_MAX_TOKENS = 128
MULTI_MAX_MIDDLE_TOKENS = 96


@dataclass(frozen=True)
class DecodeConfig:
    mode: str                      # ar | spec | diffusion
    variant: str = "linear"        # spec: linear | quadratic
    block: int | None = None
    lookup: bool = True            # spec: context drafts too (engine/lookup.py)

    @property
    def name(self) -> str:
        if self.mode == "ar":
            return "ar"
        base = "spec-quad" if self.mode == "spec" and self.variant == "quadratic" else self.mode
        name = f"{base} b{self.block}" if self.block else base
        return name + (" no-lookup" if self.mode == "spec" and not self.lookup else "")

    @property
    def family(self) -> str:
        """ar | spec | spec-quad | diffusion (the plot's series)."""
        return self.name.split(" ")[0]


def configs(blocks: Sequence[int] = DEFAULT_BLOCKS, no_lookup: Sequence[int] = ()) -> list[DecodeConfig]:
    """ar, then per block spec (linear, quadratic) and diffusion; for the blocks in `no_lookup` also
    both spec variants with diffusion drafts only (what context drafts add)."""
    out = [DecodeConfig("ar")]
    for b in blocks:
        out += [DecodeConfig("spec", "linear", b), DecodeConfig("spec", "quadratic", b),
                DecodeConfig("diffusion", "linear", b)]
        if b in no_lookup:
            out += [DecodeConfig("spec", "linear", b, lookup=False), DecodeConfig("spec", "quadratic", b, lookup=False)]
    return out


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class MultiTask(ev.FimTask):
    lines: int = 2


def multiline_tasks(files: Sequence[tuple[str, str]], n: int, seed: int = 0, *,
                    count_tokens: Callable[[str], int] | None = None, lines: Sequence[int] = (2, 3, 4),
                    max_middle_tokens: int = MULTI_MAX_MIDDLE_TOKENS) -> list[MultiTask]:
    """``n`` multi-line tasks: from a non-blank line's indentation to the end of the content of the
    line ``k - 1`` lines further (k drawn from ``lines``), with the layout of
    :func:`training.evaluate.line_task` (prefix ends with the first line's indentation, suffix starts
    with the last line's break). Deterministic given files and seed; fewer when the files run out."""
    from training.fim import split_lines
    items = sorted(files)
    rng = random.Random(f"tricode-bench-multiline/{seed}")
    cands = []
    for key, text in items:
        ls = split_lines(text)
        idx = [i for i, ln in enumerate(ls) if not ln.blank and i + max(lines) <= len(ls)]
        if idx:
            cands.append((key, text, ls, idx))
    out: list[MultiTask] = []
    used: set = set()
    attempts = 0
    while cands and len(out) < n and attempts < 50 * n + 1000:
        attempts += 1
        f = rng.randrange(len(cands))
        key, text, ls, idx = cands[f]
        i, k = rng.choice(idx), rng.choice(list(lines))
        last = ls[i + k - 1]
        if (f, i) in used or last.blank:
            continue
        used.add((f, i))
        first = ls[i]
        prefix, middle = text[:first.indent_end], text[first.indent_end:last.content_end]
        if count_tokens is not None and count_tokens(middle) > max_middle_tokens:
            continue
        out.append(MultiTask(task_id=f"{key}:{i + 1}-{i + k}", prefix=prefix, middle=middle,
                             suffix=text[last.content_end:], previous_line=ev.previous_nonblank(prefix),
                             lines=middle.count("\n") + 1))
    return out


def lines_stop(decode: Callable[[list[int]], str], k: int) -> Callable[[list[int]], int | None]:
    """Like :func:`training.evaluate.newline_stop`, after the k-th newline."""
    def stop(ids: list[int]) -> int | None:
        if decode(ids).count("\n") < k:
            return None
        for j in range(1, len(ids) + 1):
            if decode(ids[:j]).count("\n") >= k:
                return j
        return None
    return stop


def cut_lines(text: str, k: int) -> str:
    return "\n".join(text.split("\n")[:k])


# ----------------------------------------------------------------------------- running


def complete(model, tok, tasks: Sequence[ev.FimTask], prompts: Sequence[list[int]], cfg: DecodeConfig, *,
             max_new_tokens: int, threshold: float | None = None, warmup: bool = True,
             progress: Callable[[int], None] | None = None) -> list[dict]:
    """Greedy completions of ``tasks`` with one decoder configuration: per task the dict of
    :func:`training.evaluate.run_completions` (plus ``decode_ms``), so that ``summarize`` applies.
    (run_completions itself has no spec_variant; this is the same loop with it.)"""
    from engine.generate import DecodeParams, generate
    params = DecodeParams(mode=cfg.mode, max_new_tokens=max_new_tokens, block_size=cfg.block,
                          threshold=threshold, temperature=0.0, spec_variant=cfg.variant, lookup=cfg.lookup)
    out = []
    if warmup and tasks:    # first call of a shape allocates; not timed
        generate(model, prompts[0], DecodeParams(mode=cfg.mode, max_new_tokens=4, block_size=cfg.block,
                                                 spec_variant=cfg.variant))
    for i, (t, ids) in enumerate(zip(tasks, prompts)):
        k = getattr(t, "lines", 1)
        stop = ev.newline_stop(tok.decode) if k == 1 else lines_stop(tok.decode, k)
        res = generate(model, ids, params, stop=stop)
        text = tok.decode(res.tokens)
        out.append({"line": ev.cut_at_newline(text) if k == 1 else cut_lines(text, k), "tokens": res.tokens,
                    "nfe": res.nfe, "accept_lengths": res.accept_lengths, "denoise_steps": res.denoise_steps,
                    "lookup_steps": res.lookup_steps, "ms": res.elapsed_ms, "prefill_ms": res.prefill_ms,
                    "decode_ms": max(res.elapsed_ms - res.prefill_ms, 0.0), "stop_reason": res.stop_reason,
                    "block_size": res.block_size, "prompt_tokens": len(ids)})
        if progress:
            progress(i + 1)
    return out


def summarize(gens: list[dict], tasks, cfg: DecodeConfig) -> dict:
    s = ev.summarize(gens, tasks, cfg.mode)
    toks = sum(len(g["tokens"]) for g in gens)
    total_s = sum(g["ms"] for g in gens) / 1e3
    dec = [g["decode_ms"] for g in gens]
    dec_s = sum(dec) / 1e3
    s.update(config=cfg.name, family=cfg.family, block=cfg.block,
             tokens_per_s=toks / total_s if total_s else 0.0,
             decode_tokens_per_s=sum(max(len(g["tokens"]) - 1, 0) for g in gens) / dec_s if dec_s else 0.0,
             decode_ms_median=statistics.median(dec) if dec else 0.0, decode_ms_p95=ev.percentile(dec, 95),
             prompt_tokens_median=statistics.median(g["prompt_tokens"] for g in gens) if gens else 0)
    if cfg.mode == "spec":
        acc = [a for g in gens for a in g["accept_lengths"]]
        s["mean_accept_length"] = sum(acc) / len(acc) if acc else 0.0
        s["lookup_share"] = sum(g.get("lookup_steps", 0) for g in gens) / len(acc) if acc else 0.0
    for k in ("stop_reasons",):
        s.pop(k, None)
    return s


def run_decoding(model, tok, kinds: dict[str, list], cfgs: Sequence[DecodeConfig], *, prompt_tokens: int,
                 max_new_tokens: int | None = None, log=print) -> dict:
    """``kinds``: {"single": tasks, "multi": tasks}. Returns per kind: per config summary, the spec-vs-ar
    mismatch counts, and the raw generations (for the peers' equal-output check)."""
    out: dict = {}
    for kind, tasks in kinds.items():
        if not tasks:
            continue
        prompts = [ev.fim_prompt(tok, t.prefix, t.suffix, prompt_tokens) for t in tasks]
        max_new = max_new_tokens or (ev.DEFAULT_MAX_NEW_TOKENS if kind == "single" else MULTI_MAX_TOKENS)
        gens, summ = {}, {}
        for cfg in cfgs:
            t0 = time.perf_counter()
            gens[cfg.name] = complete(model, tok, tasks, prompts, cfg, max_new_tokens=max_new)
            summ[cfg.name] = summarize(gens[cfg.name], tasks, cfg)
            summ[cfg.name]["seconds"] = round(time.perf_counter() - t0, 1)
            s = summ[cfg.name]
            log(f"  {kind:<6} {cfg.name:<14} exact {s['exact_match']:.3f} TPF {s['tokens_per_forward']:.2f} "
                f"ms p50 {s['ms_median']:.0f} p95 {s['ms_p95']:.0f} ({s['seconds']:.0f} s)")
        mism = {}
        if "ar" in gens:
            for name, g in gens.items():
                if name.startswith("spec"):
                    mism[name] = sum(a["tokens"] != b["tokens"] for a, b in zip(gens["ar"], g))
                if name.startswith("diffusion"):
                    summ[name]["agreement_with_ar"] = sum(a["line"] == b["line"] for a, b in
                                                          zip(gens["ar"], g)) / len(g)
        out[kind] = {"tasks": len(tasks), "prompts": prompts, "configs": summ, "spec_vs_ar_mismatches": mism,
                     "baseline_copy_previous_line": ev.copy_previous_line_baseline(tasks),
                     "gens": gens, "max_new_tokens": max_new,
                     "prompt_tokens_median": statistics.median(len(p) for p in prompts)}
    return out


# ----------------------------------------------------------------------------- where the time goes


def forward_costs(model, prefix_len: int, *, blocks: Sequence[int] = DEFAULT_BLOCKS, repeat: int = 7,
                  prefill: bool = True) -> list[dict]:
    """Median ms of one forward of width T over a cache of ``prefix_len`` tokens, per attention
    pattern the decoders use (causal T=1: an AR step; block T=B: a draft; causal T=B: a verify;
    quadratic T=B(B+1): a fused spec step), and the prefill of ``prefix_len`` tokens."""
    import torch
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    dev = model.head.weight.device
    ids = torch.randint(10, cfg.vocab_size, (1, prefix_len + 300), generator=g).to(dev)
    cache = model.new_cache(prefix_len + 400)
    rows = []

    def timed(fn) -> float:
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    with torch.inference_mode():
        if prefill:
            def pre():
                cache.crop(0)
                model(ids[:, :prefix_len], cache, pattern="causal", write=True, last_only=True)
            rows.append({"what": f"prefill {prefix_len} tokens", "pattern": "causal", "T": prefix_len,
                         "ms": timed(pre)})
            twin = model.prefill_twin
            if twin is not None:            # what the decoders use for the prompt (NLDModel.prefill_twin)
                def pre_twin():
                    cache.crop(0)
                    twin(ids[:, :prefix_len], cache, pattern="causal", write=True, last_only=True)
                rows.append({"what": f"prefill {prefix_len} tokens, "
                                     f"{str(twin.head.weight.dtype).removeprefix('torch.')} twin",
                             "pattern": "causal", "T": prefix_len, "ms": timed(pre_twin)})
        cache.crop(0)
        model(ids[:, :prefix_len], cache, pattern="causal", write=True, last_only=True)
        shapes = [("AR step", "causal", 1, 0)]
        for b in blocks:
            shapes += [(f"draft b{b}", "block", b, 0), (f"verify b{b}", "causal", b, 0),
                       (f"quadratic step b{b}", "quadratic", b * (b + 1), b + 1)]
        for what, pattern, T, group in shapes:
            x = ids[:, prefix_len:prefix_len + T] if T <= 300 else ids[:, :T]
            ms = timed(lambda: model(x, cache, pattern=pattern, write=False, group=group))
            rows.append({"what": what, "pattern": pattern, "T": T, "ms": round(ms, 3),
                         "aten_ops": aten_ops(lambda: model(x, cache, pattern=pattern, write=False, group=group))})
    base = next(r["ms"] for r in rows if r["what"] == "AR step")
    bound = weight_read_bound(model)["ms"]
    for r in rows:
        r["ms"] = round(r["ms"], 3)
        r["x_ar_step"] = round(r["ms"] / base, 2) if base else 0.0
        if not r["what"].startswith("prefill"):
            r["bound_share"] = round(bound / r["ms"], 3) if r["ms"] else 0.0
    return rows


def aten_ops(fn) -> int:
    """aten ops (nested calls included, as torch.profiler counts them) one call of fn dispatches."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def weight_read_bound(model, repeat: int = 5) -> dict:
    """The floor of a forward that reads every weight once (the embedding excepted: a forward reads
    only its rows): weight bytes / memory bandwidth, measured as a large copy (bytes read + written)
    on the model's device."""
    import torch
    p0 = model.head.weight
    nbytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embed"))
    n = 1 << 28 if p0.is_cuda else 1 << 26
    a = torch.empty(n, dtype=torch.uint8, device=p0.device).fill_(1)
    b = torch.empty_like(a)
    ts = []
    for _ in range(repeat):
        if p0.is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        b.copy_(a)
        if p0.is_cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    gbps = 2 * n / min(ts) / 1e9
    return {"weight_bytes": nbytes, "gbps": round(gbps, 1), "ms": round(nbytes / gbps / 1e6, 3)}


def spec_speedup_model(costs: list[dict], accept: dict[str, float]) -> list[dict]:
    """Decode-phase speed-up over AR predicted from the forward costs and the measured acceptance
    lengths: linear spec spends draft(B) + verify(B) per accepted run, quadratic one fused step."""
    by = {r["what"]: r["ms"] for r in costs}
    ar = by.get("AR step")
    out = []
    for name, acc in accept.items():
        fam, _, b = name.partition(" b")
        if not b or not ar or not acc:
            continue
        step = by.get(f"quadratic step b{b}") if fam == "spec-quad" else \
            (by.get(f"draft b{b}", 0) + by.get(f"verify b{b}", 0))
        if step:
            out.append({"config": name, "accept": round(acc, 2), "ms_per_step": round(step, 2),
                        "predicted_speedup": round(acc * ar / step, 2)})
    return out


def profile(model, tok, tasks, prompts, cfgs: Sequence[DecodeConfig], *, max_new_tokens: int,
            top: int = 12) -> dict:
    """torch.profiler over the same completions per config: top ops by self CPU time, and how much of
    the wall time no op accounts for (Python, dispatch, the decoder's own bookkeeping)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile
    out = {}
    for cfg in cfgs:
        complete(model, tok, tasks[:1], prompts[:1], cfg, max_new_tokens=max_new_tokens, warmup=False)
        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            gens = complete(model, tok, tasks, prompts, cfg, max_new_tokens=max_new_tokens, warmup=False)
            wall = (time.perf_counter() - t0) * 1e3
        ka = prof.key_averages()
        rows = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)
        op_ms = sum(e.self_cpu_time_total for e in ka) / 1e3
        n_ops = sum(e.count for e in ka if e.key.startswith("aten::"))
        nfe = sum(g["nfe"] for g in gens)
        out[cfg.name] = {
            "completions": len(gens), "wall_ms": round(wall, 1), "op_self_ms": round(op_ms, 1),
            "forwards": nfe, "aten_ops_per_forward": round(n_ops / nfe, 1) if nfe else 0,
            "prefill_ms": round(sum(g["prefill_ms"] for g in gens), 1),
            "ops": [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                     "share": round(e.self_cpu_time_total / 1e3 / wall, 3) if wall else 0.0}
                    for e in rows[:top]],
        }
        del prof
        torch.set_grad_enabled(True)
    return out
