"""The runners (engine/runner.py) and the lean forward (engine/model.py): every fast path against the
eager / cache-free definition.

`static_forward` (what a CUDA graph captures) calls the Triton `attention_cached` kernel; without
CUDA that needs TRITON_INTERPRET=1 before `triton_kernels` is imported, so, as in test_kernels.py,
those tests run here only when the kernels do (CUDA, or a run started with TRITON_INTERPRET=1) and
otherwise in a subprocess of this file started with the variable set. The CUDA-graph tests are
marked gpu.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.checkpoint import load_checkpoint
from engine.generate import DecodeParams, Forward, generate, run_forwards
from engine.model import rms_norm
from engine.runner import EagerRunner, runner_for, static_forward
from tests.tiny_checkpoint import write_tiny_checkpoint
from triton_kernels._common import interpreted
from triton_kernels.attention import _attn_fwd_kernel, attention_mask

CUDA = torch.cuda.is_available()
INTERPRETED = interpreted(_attn_fwd_kernel)
KERNELS_HERE = CUDA or INTERPRETED
KDEV = "cuda" if CUDA else "cpu"          # where the kernel tests run (the interpreter: the CPU)
SUBPROCESS_ENV = "TRICODE_RUNNER_TESTS_SUBPROCESS"
IN_SUBPROCESS = os.environ.get(SUBPROCESS_ENV) == "1"
kernel_test = pytest.mark.skipif(not KERNELS_HERE, reason="no CUDA and no TRITON_INTERPRET: run in a subprocess")
host_test = pytest.mark.skipif(IN_SUBPROCESS, reason="ran in the parent pytest process")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("runner") / "c", seed=7, lora=True)


def _model(ckpt, dtype="float32", device="cpu"):
    return load_checkpoint(ckpt, device=device, dtype=dtype).model


def _prefill(m, n=23, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, m.cfg.vocab_size, (1, n), generator=g)
    cache = m.new_cache(n + 64)
    with torch.inference_mode():
        m(ids.to(m.head.weight.device), cache, pattern="causal", write=True)
    return cache


# shapes a decoder runs: (pattern, T, group, lora rows?, positions?)
STEPS = [("causal", 1, 0), ("causal", 4, 0), ("block", 4, 0), ("quadratic", 12, 4)]


def _step_inputs(m, cache, pattern, T, group):
    g = torch.Generator().manual_seed(T * 31 + group)
    ids = torch.randint(2, m.cfg.vocab_size, (1, T), generator=g)
    L = cache.length
    if pattern == "quadratic":   # groups [d_i, M x B] at positions L+i, L+i+1..L+i+B
        B = group - 1
        pos = [p for i in range(T // group) for p in [L + i] + list(range(L + i + 1, L + i + 1 + B))]
        lora = tuple(i % group != 0 for i in range(T))
        return ids, torch.tensor(pos), lora
    return ids, None, pattern == "block"


# -- the lean forward -----------------------------------------------------------------------------

@host_test
def test_rms_norm_is_bit_identical_to_torch():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for n in (1, 4, 33):
            x = (torch.randn(n, 96, generator=g) * 3).to(dtype)
            w = torch.randn(96, generator=g).to(dtype)
            assert torch.equal(rms_norm(x, w, 1e-5), F.rms_norm(x, (96,), w, 1e-5)), (dtype, n)


@host_test
def test_rope_table_rows_equal_rope_of_positions(ckpt):
    m = _model(ckpt)
    cos_t, sin_t, pos = m.rope_table(300)
    assert pos.numel() >= 300 and torch.equal(pos[:300], torch.arange(300))
    cos, sin = m.rope(torch.arange(300))
    torch.testing.assert_close(cos_t[:, :300], cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin_t[:, :300], sin, rtol=0, atol=1e-6)
    # the sign of rotate-half is folded into sin: first half negative of the second
    D = sin.shape[-1]
    assert torch.equal(sin[..., :D // 2], -sin[..., D // 2:])


@host_test
@pytest.mark.parametrize("pattern, T, group", STEPS)
def test_cached_forward_equals_cache_free_forward(ckpt, pattern, T, group):
    """The cached forward (one copy per layer into the cache, banded mask views, rope table rows)
    gives the logits of the cache-free masked forward over prefix + step (float64)."""
    m = _model(ckpt, "float64")
    cache = _prefill(m)
    P = cache.length
    ids, pos, lora = _step_inputs(m, cache, pattern, T, group)
    lora_t = torch.tensor(lora) if isinstance(lora, tuple) else lora
    with torch.inference_mode():
        got = m(ids, cache, pattern=pattern, write=False, positions=pos, group=group, lora=lora_t)[0]
        full = torch.cat([torch.tensor(cache.token_ids)[None], ids], dim=1)
        full_pos = torch.cat([torch.arange(P), pos if pos is not None else torch.arange(P, P + T)])
        mask = attention_mask(T, P, pattern, group)
        mask = torch.cat([torch.cat([torch.ones(P, P, dtype=torch.bool).tril(), torch.zeros(P, T, dtype=torch.bool)], 1),
                          mask])
        step_rows = lora_t if isinstance(lora, tuple) else torch.full((T,), bool(lora))
        rows = torch.cat([torch.zeros(P, dtype=torch.bool), step_rows])   # the prefix ran without LoRA
        want = m.forward_masked(full, full_pos, mask, lora=rows)[0, P:]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert cache.length == P


@host_test
def test_eager_runner_on_cpu_commits_and_rules_out_the_mask(ckpt):
    m = _model(ckpt)
    assert isinstance(runner_for(m), EagerRunner) and runner_for(m) is runner_for(m)
    cache = _prefill(m)
    (out,) = run_forwards(m, [Forward([5, 6, 7], cache, "causal", True)])
    assert out.shape == (3, m.cfg.vocab_size)
    assert cache.length == 26 and cache.token_ids[-3:] == [5, 6, 7]
    assert (out[:, m.cfg.mask_token_id] == float("-inf")).all()


# -- static_forward: what a CUDA graph captures, run eagerly -------------------------------------------

@kernel_test
@pytest.mark.parametrize("pattern, T, group", STEPS)
def test_static_forward_equals_eager_forward(ckpt, pattern, T, group):
    """Device-side lengths (start slot tensor, index_copy_ writes, attention_cached) give the eager
    forward's logits and K/V (fp32, to rounding)."""
    dev = "cuda" if CUDA else "cpu"
    m = _model(ckpt, "float32", dev)
    a, b = _prefill(m), _prefill(m)
    ids, pos, lora = _step_inputs(m, a, pattern, T, group)
    ids = ids.to(dev)
    lora_t = torch.tensor(lora, device=dev) if isinstance(lora, tuple) else lora
    write = pattern == "causal"
    with torch.inference_mode():
        want = m(ids, a, pattern=pattern, write=write, positions=None if pos is None else pos.to(dev),
                 group=group, lora=lora_t)
        want[..., m.cfg.mask_token_id] = float("-inf")
        start = torch.tensor([b.length], device=dev)
        positions = pos.to(dev) if pos is not None else start + torch.arange(T, device=dev)
        got = static_forward(m, b, ids, start, positions, pattern=pattern, group=group, lora=lora_t)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    n = a.length + (0 if write else T)
    torch.testing.assert_close(b.kv[..., :n, :], a.kv[..., :n, :], rtol=1e-5, atol=1e-5)


@host_test
@pytest.mark.skipif(KERNELS_HERE, reason="the kernel tests run in this process")
def test_runner_kernel_tests_under_interpreter():
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1", **{SUBPROCESS_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
           str(Path(__file__).resolve()), "-m", "not gpu"]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    summary = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    assert r.returncode == 0, f"runner tests under TRITON_INTERPRET=1 failed:\n{r.stdout[-12000:]}\n{r.stderr[-4000:]}"
    assert " passed" in summary and "failed" not in summary, summary


# -- CUDA-graph bookkeeping on the CPU (tests/graph_standin.py stands in for torch.cuda.graph) ------

def _standin_runner(m, **kw):
    from engine.runner import CudaGraphRunner
    from tests.graph_standin import RecordingGraphAPI
    api = RecordingGraphAPI()
    return CudaGraphRunner(m, api=api, **kw), api


def _step_forward(m, cache, pattern, T, group):
    ids, pos, lora = _step_inputs(m, cache, pattern, T, group)
    return Forward(ids[0].tolist(), cache, pattern, pattern == "causal", lora=lora,
                   positions=None if pos is None else tuple(pos.tolist()), group=group)


def _static_reference(m, cache, f):
    """static_forward on `cache` (not committed) for Forward f: what a replay must give."""
    T, dev = len(f.ids), m.head.weight.device
    with torch.inference_mode():
        start = torch.tensor([cache.length], device=dev)
        pos = torch.tensor(f.positions, device=dev) if f.positions else start + torch.arange(T, device=dev)
        lora = torch.tensor(f.lora, device=dev) if isinstance(f.lora, tuple) else f.lora
        return static_forward(m, cache, torch.tensor([f.ids], device=dev), start, pos, pattern=f.pattern,
                              group=f.group, lora=lora)[0]


@kernel_test
def test_graph_holds_every_tensor_its_step_reads(ckpt):
    """Every step shape is captured once and replayed at later lengths, with garbage collected and new
    small allocations (a decoder's argmax) in between: the stand-in finds every storage the capture
    read still alive at its address, the replays equal static_forward, and one graph per (cache,
    shape) stays while its cache lives (issue 25, items 1 and 3)."""
    m, ref_m = _model(ckpt, device=KDEV), _model(ckpt, device=KDEV)
    runner, api = _standin_runner(m, capture_after=1)
    caches = []
    for pattern, T, group in STEPS:
        a, b = _prefill(m), _prefill(ref_m)
        caches.append(a)
        for _ in range(3):
            f = _step_forward(m, a, pattern, T, group)
            want = _static_reference(ref_m, b, f)
            got = runner.run([f])[0]
            assert torch.equal(got, want), (pattern, T)
            if f.write:
                b.commit(list(f.ids))
            assert a.length == b.length
            junk = [got.argmax(-1) for _ in range(8)]       # new small allocations between replays
            del junk
    assert len(runner.graphs) == len(STEPS)
    assert len(api.graphs) == len(STEPS) and all(g.replays == 3 for g in api.graphs)   # a capture runs nothing: replayed at once
    for g in api.graphs:                                   # long after the captures, still alive
        g.check_inputs()
    del caches[:], a, f
    runner.run([_step_forward(m, _prefill(m), "causal", 1, 0)])     # the next capture drops the dead ones
    assert len(runner.graphs) == 1


@kernel_test
def test_captured_graph_keeps_its_rope_table(ckpt):
    """A larger RoPE table (a bigger cache's capture, a long eager prefill) replaces the model's table;
    a graph captured before keeps reading its own, which stays alive and gives the same logits
    (issue 25, item 2)."""
    m, ref_m = _model(ckpt, device=KDEV), _model(ckpt, device=KDEV)
    runner, api = _standin_runner(m, capture_after=1)
    a, b = _prefill(m), _prefill(ref_m)
    f = _step_forward(m, a, "causal", 1, 0)
    want = _static_reference(ref_m, b, f)              # writes b's slot as the graph writes a's
    assert torch.equal(runner.run([f])[0], want)
    b.commit(list(f.ids))
    old = m.rope_table(1)[0]
    big = m.new_cache(5000)
    with torch.inference_mode():
        m(torch.tensor([[3] * 1500], device=KDEV), big, pattern="causal", write=True)   # a longer eager prefill
    assert m.rope_table(1)[0] is not old and m.rope_table(1)[2].numel() >= 1500
    del old, big
    for _ in range(2):
        f = _step_forward(m, a, "causal", 1, 0)
        want = _static_reference(ref_m, b, f)
        got = runner.run([f])[0]
        assert torch.equal(got, want)
        b.commit(list(f.ids))
    assert api.graphs[0].replays == 3


@kernel_test
def test_failed_capture_falls_back_to_eager_once(ckpt, caplog):
    """A capture that raises: the forward runs eagerly, one warning is logged, and that step shape is
    never captured again (issue 25, item 4); other shapes still capture."""
    m = _model(ckpt, device=KDEV)
    runner, api = _standin_runner(m, capture_after=1)
    api.capture_fails = 1
    a, b = _prefill(m), _prefill(m)
    with caplog.at_level("WARNING", logger="engine.runner"):
        for _ in range(4):
            f = _step_forward(m, a, "causal", 1, 0)
            got = runner.run([f])[0]
            want = EagerRunner(m).run([Forward(f.ids, b, f.pattern, f.write)])[0]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert a.length == b.length
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "runs eagerly" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert api.captures_tried == 1 and not runner.graphs
    runner.run([_step_forward(m, a, "block", 4, 0)])       # another shape: captured
    assert api.captures_tried == 2 and len(runner.graphs) == 1


# -- CUDA graphs ------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_replay_equals_static_forward_and_eager(ckpt, dtype):
    """A captured step replays the eager static_forward bit for bit, at later lengths too, and agrees
    with the eager model forward to rounding; the runner commits like a write=True forward."""
    from engine.runner import CudaGraphRunner
    m = _model(ckpt, dtype, "cuda")
    runner = CudaGraphRunner(m, capture_after=1)
    ref_m = _model(ckpt, dtype, "cuda")
    tol = 1e-4 if dtype == "float32" else 3e-2
    caches = []                                  # a graph lives as long as its cache: keep them all
    for pattern, T, group in STEPS:
        a, b = _prefill(m), _prefill(ref_m)
        caches.append(a)
        for _ in range(3):                       # capture on the first use, replay on the later ones
            ids, pos, lora = _step_inputs(m, a, pattern, T, group)
            write = pattern == "causal"
            f = Forward(ids[0].tolist(), a, pattern, write, lora=lora,
                        positions=None if pos is None else tuple(pos.tolist()), group=group)
            got = runner.run([f])[0]
            g = Forward(ids[0].tolist(), b, pattern, write, lora=lora, positions=f.positions, group=group)
            with torch.inference_mode():
                start = torch.tensor([b.length], device="cuda")
                lora_t = torch.tensor(lora, device="cuda") if isinstance(lora, tuple) else lora
                positions = pos.cuda() if pos is not None else start + torch.arange(T, device="cuda")
                same = static_forward(ref_m, b, ids.cuda(), start, positions, pattern=pattern, group=group,
                                      lora=lora_t)[0]
            assert torch.equal(got, same), (pattern, T)
            if write:
                b.commit(g.ids)
            assert a.length == b.length
            eager = EagerRunner(ref_m).run([Forward(g.ids, _copy_cache(a, ref_m, write, T), pattern, write,
                                                    lora=lora, positions=g.positions, group=group)])[0]
            torch.testing.assert_close(got, eager, rtol=tol, atol=tol)
    assert len(runner.graphs) == len(STEPS)


def _copy_cache(cache, m, wrote: bool, T: int):
    """A fresh cache holding `cache`'s committed prefix (before the step just run)."""
    c = m.new_cache(cache.max_len)
    n = cache.length - (T if wrote else 0)
    c.kv[..., :n, :] = cache.kv[..., :n, :]
    c.length, c.token_ids = n, list(cache.token_ids[:n])
    return c


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["linear", "quadratic"])
def test_greedy_spec_equals_ar_with_cuda_graphs(tmp_path, variant):
    """The default CUDA runner (graphs) keeps greedy spec == ar token for token, and equals eager."""
    path = write_tiny_checkpoint(tmp_path / "c", seed=4, lora=True, hidden=128, heads=4, kv_heads=1)
    m = load_checkpoint(path, device="cuda", dtype="float32").model
    from engine.runner import CudaGraphRunner
    assert isinstance(runner_for(m), CudaGraphRunner)
    prompt = [0] + list(range(10, 50))
    cache_ar, cache_sp = m.new_cache(512), m.new_cache(512)
    for _ in range(3):      # the same caches again: the later decodes replay captured graphs
        ar = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=32), cache=cache_ar)
        sp = generate(m, prompt, DecodeParams(mode="spec", spec_variant=variant, max_new_tokens=32, block_size=4),
                      cache=cache_sp)
        assert sp.tokens == ar.tokens
    assert runner_for(m).graphs
    m.__dict__["_runner"] = EagerRunner(m)
    eager = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=32))
    assert eager.tokens == ar.tokens
