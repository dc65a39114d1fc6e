"""GPU check of triton_kernels and the engine (at the real 8B shape) on one CUDA GPU.

Run from the repository root with the repo importable (scripts/gpu_check.sh does both):

    PYTHONPATH=. python scripts/gpu_check.py [--profile first|second|all] [--budget-s 300] [--out runs/gpu_check.md]

Needs only torch and triton (no network, installs nothing); pytest is used when present. Parts
(PARTS; a profile is a list of them, `--parts a,b` picks any):

tests      pytest on named files, one stage each (TEST_STAGES): the new code's checks first (the CUDA-graph
           runner, w4a16 and scales), then every compiled-kernel check (the `kernel_test` ones too: no
           -m filter), then the engine's CUDA tests; --continue-on-collection-errors, so one module that
           cannot be imported is one error row, not an empty run. Without pytest: triton_kernels.testing.
attention  attention_triton vs torch SDPA at the 8B attention shape (Hq 32, Hkv 8, D 128, bf16, batch 1,
           a 4096-token prefix): median time over CUDA events (L2 flushed), bytes/s, useful TFLOP/s;
           with --full (profile second/all) a sweep of tile configurations.
cached     attention_cached (the CUDA-graph steps' attention) vs SDPA; full: every shape and a sweep
           of its key splits; else the decode shapes only.
small      the verify/unmask kernels vs their torch references at V = 131072.
steps      the CUDA-graph runner vs the eager runner per step shape (AR step, verify, draft,
           quadratic) on the 8B shape with random weights: the replay checked against eager first,
           then wall ms per forward, share of the weight-read bound, ratio to a one-token step,
           capture time; AR tokens/s through generate() eager vs graphs; predicted spec tokens/s.
model      the eager forward per width (1, 8, 16, 32 tokens, a draft, a quadratic step) on that model.
w4_matmul  the w4a16 matmul vs the 16-bit matmul at the 8B linear shapes (1 and 32 rows; full: 1, 8,
           32, 512), its error against the fp32 definition checked first.
w4_model   the 8B and 14B models with w4a16 layers: forwards, peak memory against a 12 GiB card.

Profiles: `first` = tests, cached, steps, w4_matmul (the first script of a GPU session, ~4 min:
scripts/gpu_session.sh); `second` = attention, cached, small, model, w4_matmul, w4_model with sweeps
(scripts/gpu_session2.sh); `all` (the default) = everything.

How a run is kept safe (docs/gpu_check.md): every part but the tests runs in a child process of its
own, so a device-side assert (which kills the CUDA context) loses that part only; every part gets a
share of --budget-s as its deadline (the child is told a deadline short of it and killed at it);
a kernel whose output differs from its reference beyond a threshold (ATTN_MAX_ERR, W4_MAX_REL_ERR,
the graph replay against eager) gives a FAIL row, not a timing; the report is rewritten after every
part. Exit status 1 when any row failed. GPU_CHECK_FAIL=PART[:raise|crash|hang] injects a failure.

`--cpu-smoke` runs the same plumbing on CPU at toy shapes under TRITON_INTERPRET=1 (no timings worth
reading; the tests part runs two quick host tests; the CUDA-graph runner runs with the CPU stand-in
of tests/graph_standin.py), to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton_kernels defines its kernels
else:
    os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels only: the interpreter would crawl here

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import json  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
HQ, HKV, D, PREFIX, VOCAB, BLOCK = (4, 2, 16, 40, 512, 4) if SMOKE else (32, 8, 128, 4096, 131072, 32)
GROUP = BLOCK + 1  # quadratic: BLOCK groups [d_i, M x BLOCK]
ATTN_DTYPE = torch.float32 if SMOKE else torch.bfloat16
ATTN_CASES = [("causal", 1, 0), ("causal", 8, 0), ("causal", 16, 0), ("causal", BLOCK, 0), ("block", BLOCK, 0),
              ("quadratic", GROUP * BLOCK, GROUP)]
START = time.time()
FAIL_ENV = "GPU_CHECK_FAIL"      # PART[:raise|crash|hang]: inject a failure into one part (tests, rehearsals)

# Largest error a kernel may show against its fp32 reference before its row is a failure, not a
# timing: max abs error for attention (outputs are averages of values of magnitude ~1), error relative
# to the largest output for w4a16 (bf16 output rounding is 2^-8 ~ 4e-3 relative; fp32: summation order).
ATTN_MAX_ERR = 1e-4 if ATTN_DTYPE == torch.float32 else 3e-2
W4_MAX_REL_ERR = 1e-4 if ATTN_DTYPE == torch.float32 else 1.5e-2


def fail_row(name: str, why: str, width: int) -> list[str]:
    """A failure row: FAIL in the second column, the reason in the third, the rest empty."""
    return [name, "FAIL", why] + [""] * (width - 3)


def injected_failure(part: str) -> None:
    """What GPU_CHECK_FAIL asks of this part: raise (a Python error), crash (the process dies as on a
    device-side assert) or hang (runs past its deadline)."""
    spec = os.environ.get(FAIL_ENV, "")
    name, _, how = spec.partition(":")
    if name != part:
        return
    how = how or "raise"
    log(f"{FAIL_ENV}: injecting '{how}' into part {part}")
    if how == "crash":
        sys.stdout.flush()
        os._exit(134)
    if how == "hang":
        time.sleep(10 ** 6)
    raise RuntimeError(f"injected failure ({FAIL_ENV}={spec})")


def elapsed() -> float:
    return time.time() - START


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def free() -> None:
    gc.collect()
    if DEV == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

_L2_FLUSH = None


def bench_ms(fn, *, warmup: int = 5, iters: int = 25, flush: bool = True, after=None) -> float:
    """Median milliseconds of fn() over CUDA events; the L2 is overwritten before each timed run
    (so K/V come from HBM, as they do inside a real forward); after() runs outside the timing."""
    if DEV != "cuda":      # the smoke run: the plumbing, once
        return _bench_ms_cpu(fn, warmup=0, iters=1, after=after)
    global _L2_FLUSH
    if flush and _L2_FLUSH is None:
        _L2_FLUSH = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(warmup):
        fn()
        if after:
            after()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        if flush:
            _L2_FLUSH.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        if after:
            after()
        events.append((s, e))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def _bench_ms_cpu(fn, *, warmup, iters, after):
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        if after:
            after()
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# Part 1: correctness
# --------------------------------------------------------------------------------------------------


# (label, pytest arguments, share of the tests' time): the checks of the newest code first (the CUDA-graph
# runner and its stand-in bookkeeping, the w4a16 kernel and scales), then every compiled-kernel check
# (the kernel_test ones included: no -m filter), then the engine's CUDA tests. Named files only: a
# module that cannot be imported there (a missing package) is one collection error, not an empty run.
TEST_STAGES = [
    ("new code: CUDA-graph runner", ["tests/test_runner.py"], 0.30),
    ("new code: w4a16 kernel, scales", ["tests/test_quant.py", "-k", "w4a16 or scales"], 0.15),
    ("compiled kernels", ["tests/test_kernels.py"], 0.35),
    ("engine on CUDA", ["tests/test_engine.py", "-m", "gpu"], 0.20),
]
SMOKE_TEST_STAGES = [   # the plumbing only: two quick host tests in one pytest run
    ("smoke: lean forward, int4 packing", ["tests/test_runner.py::test_rms_norm_is_bit_identical_to_torch",
                                           "tests/test_quant.py::test_int4_packing_round_trips_low_nibble_first"], 1.0),
]


def _pytest_stage(label: str, args: list[str], timeout_s: float) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           *args]
    t0 = time.time()
    log(f"tests: {label}: {' '.join(args)} (up to {timeout_s:.0f}s)")
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout_s, 1))
        out, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out, rc = out + f"\nTIMEOUT after {timeout_s:.0f}s", None
    print(out[-6000:], flush=True)
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    summary = next((ln.strip("= ") for ln in reversed(lines)
                    if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)), "no summary")
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    result = "PASS" if rc == 0 else "FAIL"       # a timeout too: the checks did not all run
    return [f"pytest {' '.join(args)}", result, f"{summary} ({time.time() - t0:.0f}s)"
            + (f"; failed: {', '.join(failed[:12])}" if failed else "")]


def part_tests(deadline: float) -> list[list[str]]:
    """The test stages, each within its share of the time to `deadline`; without pytest the direct
    checks (triton_kernels.testing)."""
    rows = []
    if importlib.util.find_spec("pytest") is not None:
        stages = SMOKE_TEST_STAGES if SMOKE else TEST_STAGES
        for i, (label, args, share) in enumerate(stages):
            left = deadline - time.time()
            rest = sum(sh for _, _, sh in stages[i:])
            if left < 5:
                rows.append([f"pytest {' '.join(args)}", "skipped (time budget)", ""])
                continue
            rows.append(_pytest_stage(label, args, left * share / rest))
        return rows
    rows.append(["pytest", "n/a", "not installed; running the checks directly"])
    from triton_kernels import testing as kt
    t0 = time.time()
    res = kt.run_gpu_checks(log=log)
    n_fail = sum(not ok for _, ok, _ in res)
    rows.append(["GPU checks (direct)", "PASS" if n_fail == 0 else "FAIL",
                 f"{len(res) - n_fail}/{len(res)} passed ({time.time() - t0:.0f}s)"
                 + "".join(f"; FAILED {name}: {detail[:200]}" for name, ok, detail in res if not ok)])
    return rows


# --------------------------------------------------------------------------------------------------
# Part 2: kernels vs torch
# --------------------------------------------------------------------------------------------------


def _sdpa(q, k, v, mask, gqa: bool):
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attn_inputs(T, seed=0):
    from triton_kernels import testing as kt
    gen = torch.Generator(device=DEV).manual_seed(seed)
    q = torch.randn(1, HQ, T, D, generator=gen, device=DEV).to(ATTN_DTYPE)
    k, v = kt.kv_cache_view(1, HKV, PREFIX + T, D, ATTN_DTYPE, torch.device(DEV), gen)
    return q, k, v


def part_attention(deadline: float, sweep: bool = True) -> tuple[list[list[str]], list[list[str]]]:
    from triton_kernels.attention import attention_mask, attention_triton
    rows, sweep_rows = [], []
    sweep_until = deadline if sweep else 0
    for pattern, T, group in ATTN_CASES:
        name = f"{pattern} T={T}" + (f" (group {group})" if group else "")
        if time.time() > deadline:
            rows.append([name, "skipped (time budget)", "", "", "", ""])
            continue
        try:
            q, k, v = _attn_inputs(T)
            L = PREFIX + T
            dense = attention_mask(T, PREFIX, pattern, group, device=DEV)
            pairs = int(dense.sum())
            mask = None if pattern == "block" or (pattern == "causal" and T == 1) else dense
            out = torch.empty_like(q)
            kv_bytes = 2 * HKV * L * D * q.element_size()
            io_bytes = kv_bytes + 2 * q.numel() * q.element_size()
            flops = 4 * HQ * pairs * D

            def run_triton(**cfg):
                return attention_triton(q, k, v, prefix_len=PREFIX, pattern=pattern, group=group, out=out, **cfg)

            err = float((run_triton().float() - _sdpa(q.float(), k.float(), v.float(), mask, True)).abs().max())
            if not err <= ATTN_MAX_ERR:          # a wrong kernel is a failure, not a timing
                rows.append(fail_row(name, f"max abs err {err:.2e} vs fp32 SDPA > {ATTN_MAX_ERR:.0e}", 6))
                log(f"attention {name}: FAIL, max abs err {err:.2e}")
                continue
            t_tri = bench_ms(run_triton)
            sdpa_times = {}
            for label, gqa, kk, vv in (("gqa", True, k, v), ("expanded kv", False, None, None)):
                try:
                    if not gqa:
                        kk = k.repeat_interleave(HQ // HKV, dim=1)
                        vv = v.repeat_interleave(HQ // HKV, dim=1)
                    sdpa_times[label] = bench_ms(lambda: _sdpa(q, kk, vv, mask, gqa))
                except Exception as e:  # noqa: BLE001
                    log(f"sdpa ({label}) failed for {name}: {type(e).__name__}: {e}")
            best_label, t_sdpa = min(sdpa_times.items(), key=lambda kv_: kv_[1]) if sdpa_times else ("-", float("nan"))
            rows.append([name, f"{t_tri * 1e3:.1f}", f"{io_bytes / t_tri / 1e9:.2f}", f"{flops / t_tri / 1e9:.1f}",
                         f"{t_sdpa * 1e3:.1f} ({best_label})", f"{t_sdpa / t_tri:.2f}x"])
            log(f"attention {name}: triton {t_tri * 1e3:.1f} us, sdpa {sdpa_times}")
            if time.time() < sweep_until:
                sweep_rows.append(_sweep(name, T, run_triton, t_tri, sweep_until))
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(fail_row(name, f"{type(e).__name__}: {str(e)[:120]}", 6))
        free()
    return rows, sweep_rows


def _sweep(name, T, run_triton, t_default, until) -> list[str]:
    """A handful of tile configurations around the default; reports the best one found."""
    import triton
    R = T * (HQ // HKV)
    top = max(16, min(128, triton.next_power_of_2(R)))
    configs = []
    for bm in (16, 32, 64, 128):
        if bm > top:
            continue
        for bn in (64, 128):
            for stages in (2, 3):
                configs.append(dict(block_m=bm, block_n=bn, num_warps=8 if bm >= 128 else 4, num_stages=stages))
    if R <= 128:
        for splits in (1, 8, 16, 32, 64):
            configs.append(dict(num_splits=splits))
    if SMOKE:
        configs = configs[:1]              # the plumbing: one configuration
    best, best_cfg, tried = t_default, "default", 0
    for cfg in configs:
        if time.time() > until:
            break
        try:
            t = bench_ms(lambda: run_triton(**cfg), warmup=3, iters=15)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory
            log(f"sweep {name} {cfg}: {type(e).__name__}: {str(e)[:100]}")
            continue
        tried += 1
        if t < best:
            best, best_cfg = t, ", ".join(f"{k_}={v_}" for k_, v_ in cfg.items())
    log(f"sweep {name}: best {best * 1e3:.1f} us ({best_cfg}) of {tried} configs")
    return [name, f"{t_default * 1e3:.1f}", f"{best * 1e3:.1f}", best_cfg, str(tried)]


def part_cached_attention(deadline: float, sweep: bool = True) -> list[list[str]]:
    """attention_cached (what a CUDA-graph step runs: lengths on the device, grid fixed by the cache
    capacity) vs SDPA over the same keys (its error checked first), then a sweep of its key splits /
    tile sizes per shape. Without the sweep: the decode shapes only (T = 1 and the block)."""
    from triton_kernels.attention import attention_cached, attention_mask
    rows = []
    until = deadline if sweep else 0
    cap = PREFIX + GROUP * BLOCK + 64              # the cache a step reads: capacity > length
    cases = ATTN_CASES if sweep else [c for c in ATTN_CASES if c[1] in (1, BLOCK) and c[0] != "block"]
    for pattern, T, group in cases:
        name = f"{pattern} T={T}" + (f" (group {group})" if group else "")
        if time.time() > deadline:
            rows.append([name, "skipped (time budget)", "", "", "", "", ""])
            continue
        try:
            gen = torch.Generator(device=DEV).manual_seed(1)
            q = torch.randn(1, HQ, T, D, generator=gen, device=DEV).to(ATTN_DTYPE)
            kc = torch.randn(1, HKV, cap, D, generator=gen, device=DEV).to(ATTN_DTYPE)
            vc = torch.randn(1, HKV, cap, D, generator=gen, device=DEV).to(ATTN_DTYPE)
            lengths = torch.tensor([PREFIX + T], device=DEV)
            out = torch.empty_like(q)
            k, v = kc[:, :, :PREFIX + T], vc[:, :, :PREFIX + T]
            dense = attention_mask(T, PREFIX, pattern, group, device=DEV)
            mask = None if pattern == "block" or (pattern == "causal" and T == 1) else dense
            ref = _sdpa(q.float(), k.float(), v.float(), mask, True)
            got = attention_cached(q, kc, vc, lengths, pattern=pattern, group=group, out=out)
            err = float((got.float() - ref).abs().max())
            if not err <= ATTN_MAX_ERR:          # a wrong kernel is a failure, not a timing
                rows.append(fail_row(name, f"max abs err {err:.2e} vs fp32 SDPA > {ATTN_MAX_ERR:.0e}", 7))
                log(f"attention_cached {name}: FAIL, max abs err {err:.2e}")
                continue
            t = bench_ms(lambda: attention_cached(q, kc, vc, lengths, pattern=pattern, group=group, out=out))
            t_sdpa = bench_ms(lambda: _sdpa(q, k, v, mask, True))
            best, best_cfg = t, "default"
            if time.time() < until:
                for splits in ((1,) if SMOKE else (1, 4, 8, 16, 32, 64, 128)):
                    for bn in ((32,) if SMOKE else (32, 64, 128)):
                        if time.time() > until:
                            break
                        try:
                            ts = bench_ms(lambda: attention_cached(q, kc, vc, lengths, pattern=pattern, group=group,
                                                                   out=out, num_splits=splits, block_n=bn),
                                          warmup=2, iters=10)
                        except Exception as e:  # noqa: BLE001
                            log(f"cached sweep {name} splits={splits} block_n={bn}: {type(e).__name__}")
                            continue
                        if ts < best:
                            best, best_cfg = ts, f"num_splits={splits}, block_n={bn}"
            rows.append([name, f"{t * 1e3:.1f}", f"{t_sdpa * 1e3:.1f}", f"{t_sdpa / t:.2f}x", f"{best * 1e3:.1f}",
                         best_cfg, f"{err:.2e}"])
            log(f"attention_cached {name}: {t * 1e3:.1f} us (best {best * 1e3:.1f}: {best_cfg}), "
                f"sdpa {t_sdpa * 1e3:.1f} us, max err {err:.2e}")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(fail_row(name, f"{type(e).__name__}: {str(e)[:120]}", 7))
        free()
    return rows


def part_small_kernels(deadline: float) -> list[list[str]]:
    from triton_kernels.unmask import unmask_step_reference, unmask_step_triton
    from triton_kernels.verify import (verify_greedy_reference, verify_greedy_triton, verify_sample_reference,
                                       verify_sample_triton)

    rows = []
    V, T = VOCAB, BLOCK
    gen = torch.Generator(device=DEV).manual_seed(0)
    logits = torch.randn(1, T, V, generator=gen, device=DEV).to(ATTN_DTYPE)
    tokens = logits.argmax(-1)
    tokens = torch.cat([tokens[:, :1], tokens[:, :-1]], 1)
    u = torch.rand(1, T, generator=gen, device=DEV)
    masked = tokens.clone()
    masked[:, 1:] = 100
    cases = [
        ("verify_greedy", lambda: verify_greedy_triton(tokens, logits), lambda: verify_greedy_reference(tokens, logits)),
        ("verify_sample", lambda: verify_sample_triton(tokens, logits, temperature=0.8, uniforms=u),
         lambda: verify_sample_reference(tokens, logits, temperature=0.8, uniforms=u)),
        ("unmask_step", lambda: unmask_step_triton(masked, logits, mask_id=100, threshold=0.9),
         lambda: unmask_step_reference(masked, logits, mask_id=100, threshold=0.9)),
    ]
    nbytes = logits.numel() * logits.element_size()
    for name, tri, ref in cases:
        if time.time() > deadline:
            rows.append([name, "skipped (time budget)", "", "", ""])
            continue
        try:
            got, want = tri(), ref()
            same = all(torch.equal(a.cpu(), b.cpu()) if not a.is_floating_point() else
                       torch.allclose(a.float().cpu(), b.float().cpu(), atol=1e-2, rtol=1e-2)
                       for a, b in zip(got, want))
            if not same:                         # accepted counts / tokens must equal the reference
                rows.append(fail_row(name, f"differs from the reference: {got} vs {want}"[:300], 5))
                continue
            t_tri = bench_ms(tri)
            t_ref = bench_ms(ref)
            rows.append([f"{name} (B=1, T={T}, V={V})", f"{t_tri * 1e3:.1f}", f"{nbytes / t_tri / 1e9:.2f}",
                         f"{t_ref * 1e3:.1f}", f"{t_ref / t_tri:.2f}x"])
            log(f"{name}: triton {t_tri * 1e3:.1f} us, torch {t_ref * 1e3:.1f} us")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(fail_row(name, f"{type(e).__name__}: {str(e)[:120]}", 5))
    return rows


# --------------------------------------------------------------------------------------------------
# Part 3: the model
# --------------------------------------------------------------------------------------------------


def part_model(deadline: float, forwards: bool = True, steps: bool = True) -> list[list[str]]:
    """forwards: the eager forward of each step width; steps: eager vs the CUDA-graph runner per step
    shape (part_steps)."""
    from engine.config import ModelConfig
    from engine.model import NLDModel

    rows = []
    if SMOKE:
        cfg = ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)
    else:
        cfg = ModelConfig(vocab_size=131072, hidden_size=4096, intermediate_size=14336, num_hidden_layers=34,
                          num_attention_heads=32, num_key_value_heads=8, head_dim=128)
    t0 = time.time()
    old = torch.get_default_dtype()
    torch.set_default_dtype(ATTN_DTYPE)
    try:
        with torch.device(DEV):
            model = NLDModel(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model built: {n_params / 1e9:.2f}B parameters in {time.time() - t0:.0f}s; "
        f"kernels: {getattr(model, 'kernel_impl', '?')}")
    rows.append([f"model (random weights, {str(ATTN_DTYPE).replace('torch.', '')})", f"{n_params / 1e9:.2f}B params", f"built in {time.time() - t0:.0f}s"])

    gen = torch.Generator(device=DEV).manual_seed(0)

    def ids(T):
        return torch.randint(0, cfg.vocab_size, (1, T), generator=gen, device=DEV)

    with torch.inference_mode():
        cache = model.new_cache(PREFIX + GROUP * BLOCK + 64, batch=1)
        prompt = ids(PREFIX)
        sync()
        t0 = time.time()
        model(prompt, cache, pattern="causal", write=True)
        sync()
        rows.append([f"prefill {PREFIX} tokens (first call, incl. compile)", f"{(time.time() - t0) * 1e3:.0f}", ""])
        assert cache.length == PREFIX, cache.length
        crop = lambda: cache.crop(PREFIX)  # noqa: E731
        times = {}
        plan = [("causal", T, True, 0) for T in (1, 8, 16, BLOCK)] + [("block", BLOCK, False, 0),
                                                                      ("quadratic", GROUP * BLOCK, False, GROUP)]
        plan = plan if forwards else []
        for pattern, T, write, group in plan:
            if time.time() > deadline:
                rows.append([f"{pattern} T={T}", "skipped (time budget)", ""])
                continue
            x = ids(T)
            ms = bench_ms(lambda: model(x, cache, pattern=pattern, write=write, group=group),
                          warmup=3, iters=10, flush=False, after=crop)
            assert cache.length == PREFIX, cache.length
            times[(pattern, T)] = ms
            label = f"{pattern} forward, T={T}" + (f" (group {group})" if group else "") + \
                    (", write" if write else ", no write")
            rows.append([label, f"{ms:.2f}", f"{T / ms * 1e3:.0f} tok/s processed"])
            log(f"model {label}: {ms:.2f} ms")
        if steps:
            rows += part_steps(model, cache, deadline)
        if ("causal", 1) in times:
            rows.append(["AR decode (1-token forwards, eager)", f"{times[('causal', 1)]:.2f} per token",
                         f"{1e3 / times[('causal', 1)]:.1f} tok/s"])
        if ("block", BLOCK) in times and ("causal", BLOCK) in times:
            step = times[("block", BLOCK)] + times[("causal", BLOCK)]
            rows.append([f"spec, linear: draft (block {BLOCK}) + verify (causal {BLOCK}), 7+1 tokens/step",
                         f"{step:.2f} per step", f"{8e3 / step:.1f} tok/s (assumed acceptance 7/32)"])
        if ("quadratic", GROUP * BLOCK) in times:
            step = times[("quadratic", GROUP * BLOCK)]
            rows.append([f"spec, quadratic: one {BLOCK}x{GROUP} forward per step, 7+1 tokens/step",
                         f"{step:.2f} per step", f"{8e3 / step:.1f} tok/s (assumed acceptance 7/32)"])
    return rows


def hbm_gbps() -> float:
    """Device memory bandwidth, measured: a large copy (bytes read + written) / time."""
    n = (1 << 30) if DEV == "cuda" else (1 << 24)
    a = torch.empty(n, dtype=torch.int8, device=DEV)
    b = torch.empty_like(a)
    ms = bench_ms(lambda: b.copy_(a), warmup=3, iters=10, flush=False)
    del a, b
    return 2 * n / ms / 1e6


def wall_ms(fn, *, warmup: int = 3, iters: int = 15, after=None) -> float:
    """Median wall-clock ms of fn() followed by a device sync (what a decoder waits for: it reads the
    logits back before its next step), host work included."""
    if SMOKE:
        warmup, iters = 0, 1
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
        if after:
            after()
    return statistics.median(times)


def part_steps(model, cache, deadline: float) -> list[list[str]]:
    """Per step shape: eager vs the device's runner (CUDA graphs), wall ms per forward (host included),
    share of the weight-read bound (weight bytes read once / measured bandwidth), and the ratio to a
    one-token step; then AR tokens/s through `generate` (eager vs runner) and spec tokens/s predicted
    from the step times at an assumed acceptance."""
    from engine.generate import DecodeParams, Forward, generate
    from engine.runner import CudaGraphRunner, EagerRunner
    rows = []
    bw = hbm_gbps()
    wbytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.startswith("embed"))
    bound = wbytes / bw / 1e6
    rows.append(["weight-read bound (weights except the embedding / measured copy bandwidth)", f"{bound:.2f}",
                 f"{wbytes / 1e6:.1f} MB at {bw:.1f} GB/s"])
    log(f"weight-read bound {bound:.2f} ms ({wbytes / 1e6:.1f} MB at {bw:.1f} GB/s)")
    eager = EagerRunner(model)
    if DEV == "cuda":
        fast = CudaGraphRunner(model, capture_after=1)
    else:   # --cpu-smoke: the real runner, with the tests' CPU stand-in for torch.cuda.graph
        from tests.graph_standin import RecordingGraphAPI
        fast = CudaGraphRunner(model, capture_after=1, api=RecordingGraphAPI())
        fast.name = "cuda-graphs (CPU stand-in)"
    tol = 1e-3 if ATTN_DTYPE == torch.float32 else 0.1
    P = cache.length
    crop = lambda: cache.crop(P)  # noqa: E731
    M = model.cfg.mask_token_id
    quad_pos = tuple(p for i in range(BLOCK) for p in [P + i] + list(range(P + i + 1, P + i + 1 + BLOCK)))
    shapes = [("AR step (causal 1)", Forward([7], cache, "causal", True)),
              (f"verify (causal {BLOCK})", Forward(list(range(7, 7 + BLOCK)), cache, "causal", True)),
              (f"draft (block {BLOCK})", Forward([7] + [M] * (BLOCK - 1), cache, "block", False)),
              (f"quadratic step ({BLOCK}x{GROUP})", Forward([M] * (GROUP * BLOCK), cache, "quadratic", False,
                                                            lora=False, positions=quad_pos, group=GROUP))]
    times = {}
    for label, f in shapes:
        if time.time() > deadline:
            rows.append([label, "skipped (time budget)", ""])
            continue
        try:
            want = torch.stack(eager.run([f])).float()
            crop()
            t0 = time.time()
            fast.run([f])                                 # capture (graphs) or first call
            crop()
            first = (time.time() - t0) * 1e3
            if f.key in fast.fallback:                    # the capture failed: the runner went eager
                rows.append(fail_row(label, f"capture failed: {fast.fallback.failed[f.key]}"[:300], 3))
                continue
            got = torch.stack(fast.run([f])).float()      # a replay
            crop()
            finite = torch.isfinite(want)                 # the mask id is -inf in both
            same_inf = bool((torch.isinf(got) == ~finite).all())
            err = float((got - want)[finite].abs().max() / want[finite].abs().max().clamp(min=1e-6))
            err = err if same_inf else float("inf")
            if not err <= tol:                            # a wrong replay is a failure, not a timing
                rows.append(fail_row(label, f"replay differs from eager: rel err {err:.2e} > {tol:.0e}", 3))
                continue
            t_e = wall_ms(lambda: eager.run([f]), after=crop)
            t_f = wall_ms(lambda: fast.run([f]), after=crop)
            times[label] = (t_e, t_f)
            rows.append([f"{label}: eager / {fast.name}", f"{t_e:.2f} / {t_f:.2f}",
                         f"{bound / t_e:.0%} / {bound / t_f:.0%} of the weight-read bound; "
                         f"capture or first call {first:.0f} ms; replay vs eager rel err {err:.1e}"])
            log(f"step {label}: eager {t_e:.2f} ms, {fast.name} {t_f:.2f} ms (bound {bound:.2f})")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(fail_row(label, f"{type(e).__name__}: {str(e)[:200]}", 3))
            crop()
    one = times.get("AR step (causal 1)")
    if one:
        for label, (t_e, t_f) in times.items():
            if label != "AR step (causal 1)":
                rows.append([f"{label} / one-token step", f"{t_e / one[0]:.2f}x / {t_f / one[1]:.2f}x", "eager / runner"])
        v = times.get(f"verify (causal {BLOCK})")
        d = times.get(f"draft (block {BLOCK})")
        if v and d:
            rows.append([f"spec, linear (predicted): draft + verify per step, 7+1 tokens/step",
                         f"{d[0] + v[0]:.2f} / {d[1] + v[1]:.2f}",
                         f"{8e3 / (d[0] + v[0]):.1f} / {8e3 / (d[1] + v[1]):.1f} tok/s eager / runner "
                         "(assumed acceptance 7/32)"])
        q = times.get(f"quadratic step ({BLOCK}x{GROUP})")
        if q:
            rows.append(["spec, quadratic (predicted): one step, 7+1 tokens/step", f"{q[0]:.2f} / {q[1]:.2f}",
                         f"{8e3 / q[0]:.1f} / {8e3 / q[1]:.1f} tok/s eager / runner (assumed acceptance 7/32)"])
    # AR end to end through generate(): the decoder, its Python and the runner together
    if time.time() < deadline:
        try:
            prompt = [1] + list(range(10, 10 + min(PREFIX, 512) - 1))
            n_new = 4 if SMOKE else 64
            dec_cache = model.new_cache(len(prompt) + n_new + 64)
            res = {}
            for label, runner in (("eager", eager), (fast.name, fast)):
                model.__dict__["_runner"] = runner
                params = DecodeParams(mode="ar", max_new_tokens=n_new)
                generate(model, prompt, params, cache=dec_cache)          # warm-up (captures)
                r = generate(model, prompt, params, cache=dec_cache)
                res[label] = r
                toks = len(r.tokens) - 1
                dec_ms = r.elapsed_ms - r.prefill_ms
                rows.append([f"AR decode through generate(), {label}", f"{dec_ms / max(toks, 1):.2f} per token",
                             f"{toks / dec_ms * 1e3:.1f} tok/s ({toks} tokens after a {len(prompt)}-token prompt)"])
                log(f"AR generate {label}: {toks / dec_ms * 1e3:.1f} tok/s")
            a, b = list(res.values())
            rows.append(["AR tokens: runner == eager", "yes" if a.tokens == b.tokens else "NO",
                         "random weights; bf16 ties may differ" if a.tokens != b.tokens else ""])
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(fail_row("AR decode through generate()", f"{type(e).__name__}: {str(e)[:200]}", 3))
        finally:
            model.__dict__.pop("_runner", None)
    return rows


# --------------------------------------------------------------------------------------------------
# Part 4: 4-bit weights
# --------------------------------------------------------------------------------------------------

W4_GROUP = 32 if SMOKE else 128


def _cfg(size: str):
    from engine.config import ModelConfig
    if SMOKE:
        return ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=HQ, num_key_value_heads=HKV, head_dim=D)
    h, i, n = {"8B": (4096, 14336, 34), "14B": (5120, 16384, 40)}[size]
    return ModelConfig(vocab_size=131072, hidden_size=h, intermediate_size=i, num_hidden_layers=n,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128)


def _random_w4_model(cfg):
    """NLDModel with random bf16 embed/head/norms and random 4-bit layers (codes, fp16 scales around
    0.02/8, zeros), built without ever holding the float layer weights."""
    from engine.model import NLDModel
    from engine.quant import QuantSpec, prepare_layers, quantize_layers
    with torch.device("meta"):
        model = NLDModel(cfg)
        quantize_layers(model, QuantSpec(4, W4_GROUP))
    model.to_empty(device=DEV)
    model.to(ATTN_DTYPE)
    from engine.config import rope_inv_freq
    model.inv_freq = rope_inv_freq(cfg)[0].to(DEV)
    gen = torch.Generator(device=DEV).manual_seed(0)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("inv_freq"):
                continue
            if t.dtype == torch.uint8:
                hi = 16 if name.endswith("qzeros") else 256
                t.copy_(torch.randint(0, hi, t.shape, generator=gen, device=DEV, dtype=torch.int32).to(torch.uint8))
            elif name.endswith("scales"):
                t.fill_(0.02 / 8)
            elif "norm" in name:
                t.fill_(1.0)
            else:
                t.normal_(0, 0.02, generator=gen)
    prepare_layers(model, ATTN_DTYPE)
    model.eval()
    return model


def part_w4a16_matmul(deadline: float, rows_list=None) -> list[list[str]]:
    """The w4a16 matmul at the 8B linear shapes for each row count, its error against the fp32
    definition checked first (a wrong kernel is a FAIL row, never a timing)."""
    from engine.quant import QuantSpec, quantize_weight
    from triton_kernels.w4a16 import dequantize_int4, w4a16_matmul_triton

    cfg = _cfg("8B")
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    shapes = [("qkv", (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd, h),
              ("o", h, cfg.num_attention_heads * hd), ("gate_up", 2 * i, h), ("down", h, i)]
    rows = []
    gen = torch.Generator(device=DEV).manual_seed(0)
    ms = rows_list or ((1, 33) if SMOKE else (1, 8, 32, 512))
    for name, n, k in shapes:
        if time.time() > deadline:
            rows.append([f"{name} {n}x{k}", "skipped (time budget)", "", "", "", ""])
            continue
        w = torch.randn(n, k, generator=gen, device=DEV) * 0.02
        t = quantize_weight(w, QuantSpec(4, W4_GROUP))
        wb = w.to(ATTN_DTYPE)
        del w
        wbytes = t["qweight"].numel() + t["scales"].numel() * 2 + t["qzeros"].numel()
        w_def = dequantize_int4(t["qweight"], t["scales"], t["qzeros"], W4_GROUP)
        for m in ms:
            label = f"{name} {n}x{k}, M={m}"
            if time.time() > deadline:
                rows.append([label, "skipped (time budget)", "", "", "", ""])
                continue
            x = torch.randn(m, k, generator=gen, device=DEV).to(ATTN_DTYPE)
            got = w4a16_matmul_triton(x, t["qweight"], t["scales"], t["qzeros"], W4_GROUP)
            ref = x.float() @ w_def.T
            err = float((got.float() - ref).abs().max() / ref.abs().max().clamp(min=1e-6))
            if not err <= W4_MAX_REL_ERR:
                rows.append(fail_row(label, f"rel err {err:.1e} vs the fp32 definition > {W4_MAX_REL_ERR:.0e}", 6))
                log(f"w4a16 {label}: FAIL, rel err {err:.1e}")
                continue
            t_q = bench_ms(lambda: w4a16_matmul_triton(x, t["qweight"], t["scales"], t["qzeros"], W4_GROUP))
            t_b = bench_ms(lambda: x @ wb.T)
            rows.append([label, f"{t_q * 1e3:.1f}", f"{wbytes / t_q / 1e9:.2f}",
                         f"{t_b * 1e3:.1f}", f"{t_b / t_q:.2f}x", f"{err:.1e}"])
            log(f"w4a16 {name} M={m}: {t_q * 1e3:.1f} us vs bf16 {t_b * 1e3:.1f} us (rel err {err:.1e})")
        del wb, t, w_def
        free()
    return rows


def part_w4a16_model(deadline: float) -> list[list[str]]:
    rows = []
    for size, T_list in (("8B", (1, 8, 32)), ("14B", (1, 8))):
        if time.time() > deadline:
            rows.append([f"{size} w4a16", "skipped (time budget)", ""])
            continue
        free()
        if DEV == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.time()
        model = _random_w4_model(_cfg(size))
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        backend = model.layers[0].qkv.backend
        rows.append([f"{size} w4a16 model (random weights, groups of {W4_GROUP}, {backend})",
                     f"built in {time.time() - t0:.0f}s", f"weights {weights / 2**30:.2f} GiB"])
        gen = torch.Generator(device=DEV).manual_seed(1)
        with torch.inference_mode():
            cache = model.new_cache(PREFIX + 64)
            prompt = torch.randint(0, model.cfg.vocab_size, (1, PREFIX), generator=gen, device=DEV)
            sync()
            t0 = time.time()
            model(prompt, cache, last_only=True)
            sync()
            rows.append([f"{size} w4a16 prefill {PREFIX} tokens (first call)", f"{(time.time() - t0) * 1e3:.0f}", ""])
            crop = lambda: cache.crop(PREFIX)  # noqa: E731
            for T in T_list:
                x = torch.randint(0, model.cfg.vocab_size, (1, T), generator=gen, device=DEV)
                ms = bench_ms(lambda: model(x, cache), warmup=3, iters=10, flush=False, after=crop)
                rows.append([f"{size} w4a16 causal forward, T={T}, write", f"{ms:.2f}",
                             f"{1e3 / ms:.1f} forwards/s" + (" (AR tok/s)" if T == 1 else "")])
                log(f"{size} w4a16 T={T}: {ms:.2f} ms")
        if DEV == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            verdict = "fits" if peak < 12 * 0.93 else "does NOT fit"   # ~7% for the CUDA context and the display
            rows.append([f"{size} w4a16 peak GPU memory (weights + {PREFIX}-token KV + activations)",
                         f"{peak:.2f} GiB", f"{verdict} a 12 GiB card (allowing ~0.8 GiB for context)"])
        del model, cache
        free()
    return rows


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Parts, profiles, and the run: every part but the tests in a child process of its own
# --------------------------------------------------------------------------------------------------

def _tables_attention(deadline, full):
    rows, sweep = part_attention(deadline, sweep=full)
    out = [(f"2. Attention kernel vs torch SDPA ({str(ATTN_DTYPE)[6:]}, B=1, Hq {HQ}, Hkv {HKV}, D {D}, prefix {PREFIX})",
            ["case", "triton us", "triton TB/s (K/V+Q/O bytes)", "triton TFLOP/s (visible pairs)",
             "SDPA us (best variant)", "speedup"], rows)]
    if sweep:
        out.append(("2. Tile sweep (triton)", ["case", "default us", "best us", "best config", "configs"], sweep))
    return out


# name -> (title, table header, share of the budget, in a child process?, run(deadline, full) -> rows)
PARTS = {
    "tests": ("1. Correctness (pytest on named test files, new code first)", ["check", "result", "detail"], 0.40,
              False, lambda d, full: part_tests(d)),
    "attention": (None, None, 0.20, True, _tables_attention),
    "cached": ("2a. attention_cached (CUDA-graph steps: lengths on the device) vs SDPA",
               ["case", "cached us", "SDPA us", "speedup", "best us", "best config", "max abs err vs fp32 SDPA"],
               0.10, True, lambda d, full: part_cached_attention(d, sweep=full)),
    "small": ("2b. Verify / unmask kernels vs torch references (outputs checked first)",
              ["op", "triton us", "logits TB/s", "torch us", "speedup"], 0.05, True,
              lambda d, full: part_small_kernels(d)),
    "steps": (f"3. CUDA-graph runner vs eager per step shape (8B shape, random weights, {PREFIX}-token prefix)",
              ["what", "ms", "detail"], 0.35, True, lambda d, full: part_model(d, forwards=False, steps=True)),
    "model": (f"3b. Eager forwards per width (8B shape, random weights, {PREFIX}-token prefix)",
              ["what", "ms", "throughput"], 0.20, True, lambda d, full: part_model(d, forwards=True, steps=False)),
    "w4_matmul": (f"4a. w4a16 matmul (groups of {W4_GROUP}) vs the 16-bit torch matmul, 8B linear shapes "
                  "(error vs the fp32 definition checked first)",
                  ["shape, rows", "w4a16 us", "weight TB/s", "bf16 us", "speedup", "rel err"], 0.15, True,
                  lambda d, full: part_w4a16_matmul(d, None if full else (1, 32))),
    "w4_model": (f"4b. Whole model with w4a16 layers (8B, 14B; {PREFIX}-token prefix)", ["what", "ms", "detail"],
                 0.25, True, lambda d, full: part_w4a16_model(d)),
}
# first: the tests, then the figures that matter, short (the first script of a GPU session, ~4 min);
# second: the rest, sweeps included (the second script); all: everything (scripts/gpu_check.sh)
PROFILES = {
    "first": (["tests", "cached", "steps", "w4_matmul"], False),
    "second": (["attention", "cached", "small", "model", "w4_matmul", "w4_model"], True),
    "all": (["tests", "attention", "cached", "small", "steps", "model", "w4_matmul", "w4_model"], True),
}


def run_part_here(name: str, deadline: float, full: bool) -> list:
    """The part's tables [(title, header, rows)]; a Python error is a FAIL row, never a stop."""
    title, header, _, _, fn = PARTS[name]
    try:
        injected_failure(name)
        got = fn(deadline, full)
        return got if title is None else [(title, header, got)]
    except Exception as e:  # noqa: BLE001 - every part reports, none stops the run
        traceback.print_exc()
        width = len(header) if header else 6
        return [(title or name, header or ["what", "result", "detail"] + [""] * 3,
                 [fail_row(name, f"{type(e).__name__}: {str(e)[:300]}", width)])]
    finally:
        free()


def run_part_child(name: str, end: float, full: bool, log_path: Path) -> list:
    """The part in a child process, killed at `end`: a device-side assert there kills its CUDA context
    and that process only. Its own deadline leaves it room to finish and write its rows."""
    now = time.time()
    soft = end - min(20.0, 0.25 * (end - now))
    rows_path = log_path.with_suffix(".json")
    rows_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--deadline", f"{soft:.3f}",
           "--rows-out", str(rows_path), "--start", f"{START:.3f}"] + (["--full"] if full else []) \
        + (["--cpu-smoke"] if SMOKE else [])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    why = None
    with open(log_path, "w") as logf:
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT,
                               timeout=max(1.0, end - now))
            if r.returncode != 0:
                why = f"the part's process exited with {r.returncode}"
        except subprocess.TimeoutExpired:
            why = f"killed at its deadline ({end - now:.0f}s)"
    text = log_path.read_text(errors="replace")
    print(text[-20000:], flush=True)
    if why is None and rows_path.is_file():
        return [(t, h, r) for t, h, r in json.loads(rows_path.read_text())]
    why = why or "no rows written"
    tail = " / ".join(ln.strip() for ln in text.strip().splitlines()[-3:])[:300]
    title, header, *_ = PARTS[name]
    width = len(header) if header else 6
    return [(title or name, header or ["what", "result", "detail", "", "", ""], [fail_row(name, f"{why}: {tail}", width)])]


def _header() -> str:
    import importlib.metadata
    try:
        tv = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        tv = "absent"
    if SMOKE:
        gpu = "CPU smoke run (TRITON_INTERPRET=1, toy shapes; timings meaningless)"
    else:
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB)"
    return (f"# GPU check: triton_kernels and the engine\n\n{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
            f"{gpu}, torch {torch.__version__}, triton {tv}, CUDA {torch.version.cuda}")


def write_report(out: Path, head: str, tables: list, pending: list[str], done: bool) -> None:
    """The report as it stands, written atomically (a kill between parts keeps every finished one)."""
    parts = [head]
    for title, header, rows in tables:
        parts.append(f"## {title}\n\n" + table(header, rows))
    n_fail = sum(1 for _, _, rows in tables for r in rows if len(r) > 1 and r[1] == "FAIL")
    tail = f"Failures: {n_fail}. Wall time so far {elapsed():.0f}s."
    if pending:
        tail += f" Still to run: {', '.join(pending)}."
    elif done:
        tail = f"Failures: {n_fail}. Total wall time {elapsed():.0f}s."
    parts.append(tail)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n\n".join(parts) + "\n")
    tmp.replace(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu_check.md", help="where to write the markdown report")
    ap.add_argument("--budget-s", type=float, default=300.0, help="overall time budget in seconds")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="all", help="which parts (see PROFILES)")
    ap.add_argument("--parts", help="comma-separated parts to run instead of the profile's: " + ",".join(PARTS))
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--skip-w4", action="store_true", help="skip part 4 (4-bit weights)")
    ap.add_argument("--cpu-smoke", action="store_true", help="toy shapes on CPU under the interpreter (script check)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:                      # one part, in its own process (run_part_child)
        global START
        START = args.start or START
        tables = run_part_here(args.child, args.deadline, args.full)
        tmp = Path(args.rows_out + ".tmp")
        tmp.write_text(json.dumps(tables))
        tmp.replace(args.rows_out)
        return 0

    if not SMOKE and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to do (--cpu-smoke checks the script on CPU)", file=sys.stderr)
        return 2
    names, full = PROFILES[args.profile]
    if args.parts:
        names = [n.strip() for n in args.parts.split(",") if n.strip()]
        unknown = [n for n in names if n not in PARTS]
        if unknown:
            print(f"gpu_check: unknown part(s) {unknown}; parts are {', '.join(PARTS)}", file=sys.stderr)
            return 2
    full = full and not args.no_sweep
    drop = set()
    if args.skip_tests:
        drop.add("tests")
    if args.skip_model:
        drop |= {"model", "steps"}
    if args.skip_w4:
        drop |= {"w4_matmul", "w4_model"}
    names = [n for n in names if n not in drop]
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = out.with_name(out.stem + ".parts")
    logs.mkdir(exist_ok=True)
    head = _header()
    budget_end = START + args.budget_s - 3          # the parent's own exit
    tables: list = []
    write_report(out, head, tables, names, False)
    for i, name in enumerate(names):
        now = time.time()
        share = PARTS[name][2] / sum(PARTS[n][2] for n in names[i:])
        end = now + max(0.0, budget_end - now) * share
        if end - now < 10:
            title, header = PARTS[name][0] or name, PARTS[name][1] or ["what", "result", "detail"]
            tables.append((title, header, [[name, "skipped (time budget)"] + [""] * (len(header) - 2)]))
            log(f"part {name}: skipped, {budget_end - now:.0f}s left")
        else:
            log(f"part {name}: until +{end - START:.0f}s")
            if PARTS[name][3]:
                tables += run_part_child(name, end, full, logs / f"{name}.log")
            else:
                tables += run_part_here(name, end, full)
        write_report(out, head, tables, names[i + 1:], i == len(names) - 1)
    report = out.read_text()
    print("\n" + report + f"\n(written to {out})", flush=True)
    return 1 if any(len(r) > 1 and r[1] == "FAIL" for _, _, rows in tables for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
