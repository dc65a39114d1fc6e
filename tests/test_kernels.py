"""Tests of triton_kernels: every Triton kernel against its PyTorch reference, every reference
against a naive float64 loop, and (marked gpu) the real 8B shapes on CUDA.

Where the Triton kernels run. On CUDA they run in this process. Without CUDA they need Triton's CPU
interpreter, which is chosen when the kernels are *defined*, i.e. TRITON_INTERPRET=1 must be in the
environment before `triton_kernels` is first imported. In a `make test` run the engine's tests may
import it first (and setting the variable here would silently change the package for every later
test), so this module does not touch the environment. Instead:

- if the kernels already run here (CUDA, or the whole pytest run was started with
  TRITON_INTERPRET=1), the kernel tests run in this process;
- otherwise they are skipped here, and `test_kernels_under_interpreter` runs this same file in a
  fresh `python -m pytest` subprocess with TRITON_INTERPRET=1 set from the start; there only the
  kernel tests run (the reference tests already ran in the parent), and any failure is reported
  with the subprocess's output.

Inputs are drawn per test from a generator seeded by the test's parameters; outputs are poisoned
(NaN / sentinels) before each launch so that an element the kernel never writes fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import triton_kernels
from triton_kernels import attention, attention_mask, unmask_step, verify_greedy, verify_sample
from triton_kernels._common import interpreted
from triton_kernels.attention import (
    _attn_fwd_kernel,
    attention_cached,
    attention_cached_reference,
    attention_reference,
    attention_triton,
)
from triton_kernels.testing import (
    CHI2_999,
    chi_square,
    naive_attention,
    naive_unmask_step,
    naive_verify_greedy,
    naive_verify_sample,
    naive_visible,
    rel_err,
)
from triton_kernels.unmask import unmask_step_reference, unmask_step_triton
from triton_kernels.verify import (
    verify_greedy_reference,
    verify_greedy_triton,
    verify_sample_reference,
    verify_sample_triton,
)

CUDA = torch.cuda.is_available()
INTERPRETED = interpreted(_attn_fwd_kernel)
KERNELS_HERE = CUDA or INTERPRETED
CPU = torch.device("cpu")
DEV = CPU if INTERPRETED or not CUDA else torch.device("cuda")  # where the kernel tests run
SUBPROCESS_ENV = "TRICODE_KERNEL_TESTS_SUBPROCESS"
IN_SUBPROCESS = os.environ.get(SUBPROCESS_ENV) == "1"

kernel_test = pytest.mark.skipif(
    not KERNELS_HERE, reason="no CUDA and no TRITON_INTERPRET: run by test_kernels_under_interpreter")
host_test = pytest.mark.skipif(IN_SUBPROCESS, reason="ran in the parent pytest process")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA or INTERPRETED, reason="needs CUDA (compiled Triton)")

TOL = {torch.float32: 1e-4, torch.float16: 2e-3}


def gen_for(*params) -> torch.Generator:
    """A CPU generator seeded by the test's parameters (stable across runs and processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(params).encode()))


def randn(gen, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEV)


# --------------------------------------------------------------------------------------------------
# The subprocess that runs the kernel tests under the interpreter
# --------------------------------------------------------------------------------------------------


@host_test
@pytest.mark.skipif(KERNELS_HERE, reason="the kernel tests run in this process")
def test_kernels_under_interpreter():
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1", **{SUBPROCESS_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
           str(Path(__file__).resolve()), "-m", "not gpu"]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    summary = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"interpreter subprocess: {summary}")
    assert r.returncode == 0, f"kernel tests under TRITON_INTERPRET=1 failed:\n{r.stdout[-12000:]}\n{r.stderr[-4000:]}"
    assert " passed" in summary and "failed" not in summary, summary


# --------------------------------------------------------------------------------------------------
# Package surface
# --------------------------------------------------------------------------------------------------


@host_test
def test_public_api():
    assert set(triton_kernels.__all__) == {"attention", "attention_mask", "verify_greedy", "verify_sample",
                                           "unmask_step"}
    q = torch.zeros(1, 1, 1, 16)
    k = torch.zeros(1, 1, 1, 16)
    with pytest.raises(ValueError, match="impl"):
        attention(q, k, k, prefix_len=0, pattern="causal", impl="cuda")
    with pytest.raises(ValueError, match="impl"):
        verify_greedy(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), impl="fast")
    with pytest.raises(ValueError, match="impl"):
        unmask_step(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), mask_id=0, threshold=0.5, impl="")
    with pytest.raises(ValueError, match="impl"):
        verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), temperature=1.0, impl="x")


@host_test
@pytest.mark.skipif(INTERPRETED, reason="the interpreter accepts CPU tensors")
def test_triton_on_cpu_without_interpreter_is_an_error():
    q = torch.zeros(1, 2, 3, 16)
    k = torch.zeros(1, 1, 3, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        attention(q, k, k, prefix_len=0, pattern="causal", impl="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        verify_greedy(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), impl="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), temperature=1.0, impl="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        unmask_step(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), mask_id=0, threshold=0.5,
                    impl="triton")


@host_test
@pytest.mark.parametrize("kwargs, match", [
    (dict(pattern="diagonal"), "pattern"),
    (dict(pattern="quadratic", group=0), "group"),
    (dict(pattern="quadratic", group=4), "multiple of group"),
    (dict(prefix_len=3), "prefix_len"),
])
def test_attention_argument_errors(kwargs, match):
    q = torch.zeros(1, 4, 6, 16)
    k = torch.zeros(1, 2, 6, 16)
    args = dict(prefix_len=0, pattern="causal") | kwargs
    for impl in ("reference", "triton"):
        with pytest.raises(ValueError, match=match):
            attention(q, k, k, impl=impl, **args)


@host_test
def test_attention_launcher_checks():
    q = torch.zeros(1, 4, 6, 16)
    k = torch.zeros(1, 3, 6, 16)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        attention_triton(q, k, k, prefix_len=0, pattern="causal")
    with pytest.raises(ValueError, match="one dtype"):
        attention_triton(q, torch.zeros(1, 2, 6, 16, dtype=torch.float16), torch.zeros(1, 2, 6, 16),
                         prefix_len=0, pattern="causal")
    with pytest.raises(ValueError, match="head_dim"):
        attention_triton(torch.zeros(1, 2, 6, 24), torch.zeros(1, 2, 6, 24), torch.zeros(1, 2, 6, 24),
                         prefix_len=0, pattern="block")
    with pytest.raises(ValueError, match="last dim"):
        kt = torch.zeros(1, 2, 16, 6).transpose(2, 3)
        attention_triton(torch.zeros(1, 2, 6, 16), kt, kt, prefix_len=0, pattern="block")
    with pytest.raises(ValueError, match="int64"):
        verify_greedy(torch.zeros(1, 2, dtype=torch.int32), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="temperature"):
        verify_sample(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="mask_id"):
        unmask_step(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, 3), mask_id=3, threshold=0.5)


# --------------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------------


@host_test
def test_quadratic_mask_by_hand():
    # prefix 1, two groups of width 3: [d0 M M | d1 M M]
    X, o = True, False
    expected = torch.tensor([
        # p   d0 M  M  d1 M  M
        [X,  X, o, o, o, o, o],  # d0: prefix, itself
        [X,  X, X, X, o, o, o],  # M of group 0: d0 and own masks
        [X,  X, X, X, o, o, o],
        [X,  X, o, o, X, o, o],  # d1: d0, d1 (causal over d tokens only)
        [X,  X, o, o, X, X, X],  # M of group 1: d0, d1 and own masks
        [X,  X, o, o, X, X, X],
    ])
    assert torch.equal(attention_mask(6, 1, "quadratic", 3), expected)


@host_test
@pytest.mark.parametrize("pattern, group", [("causal", 0), ("block", 0), ("quadratic", 1), ("quadratic", 3),
                                            ("quadratic", 5)])
@pytest.mark.parametrize("prefix_len", [0, 4])
def test_attention_mask_matches_rule(pattern, group, prefix_len):
    T = 15
    m = attention_mask(T, prefix_len, pattern, group)
    assert m.shape == (T, prefix_len + T) and m.dtype == torch.bool
    for t in range(T):
        for s in range(prefix_len + T):
            assert bool(m[t, s]) == naive_visible(t, s, prefix_len, pattern, group), (t, s)
    if pattern == "quadratic" and group == 1:
        assert torch.equal(m, attention_mask(T, prefix_len, "causal"))


# --------------------------------------------------------------------------------------------------
# Attention: reference vs naive float64
# --------------------------------------------------------------------------------------------------

PATTERN_CASES = [("causal", 0), ("block", 0), ("quadratic", 3), ("quadratic", 5)]


def _T_for(pattern, group, T):
    """Quadratic needs whole groups: round T up to a multiple of the group."""
    return -(-T // group) * group if pattern == "quadratic" else T


@host_test
@pytest.mark.parametrize("pattern, group", PATTERN_CASES)
@pytest.mark.parametrize("B, Hq, Hkv, P, T, D", [(1, 4, 4, 0, 1, 16), (2, 8, 2, 9, 6, 32), (1, 4, 1, 5, 15, 16)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_attention_reference_vs_naive(pattern, group, B, Hq, Hkv, P, T, D, dtype):
    T = _T_for(pattern, group, T)
    g = gen_for("ref", pattern, group, B, Hq, Hkv, P, T, D, dtype)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, P + T, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, P + T, D, generator=g).to(dtype)
    ref = attention(q, k, v, prefix_len=P, pattern=pattern, group=group)
    assert ref.dtype == dtype and ref.shape == q.shape
    naive = naive_attention(q, k, v, prefix_len=P, pattern=pattern, group=group)
    assert rel_err(ref, naive) < (1e-12 if dtype == torch.float64 else 1e-5)


@host_test
def test_attention_reference_scale_and_fp16():
    g = gen_for("scale")
    q, k, v = (torch.randn(1, 4, 7, 32, generator=g) for _ in range(3))
    k, v = k[:, :2].repeat(1, 1, 2, 1)[:, :, :10], v[:, :2].repeat(1, 1, 2, 1)[:, :, :10]
    naive = naive_attention(q, k, v, prefix_len=3, pattern="causal", scale=0.3)
    assert rel_err(attention(q, k, v, prefix_len=3, pattern="causal", scale=0.3), naive) < 1e-5
    half = attention(q.half(), k.half(), v.half(), prefix_len=3, pattern="causal", scale=0.3)
    assert half.dtype == torch.float16 and rel_err(half, naive) < 2e-3


# --------------------------------------------------------------------------------------------------
# Attention: Triton kernel vs reference
# --------------------------------------------------------------------------------------------------

# (B, Hq, Hkv, prefix_len, T, D, num_splits, strided k/v)
ATTN_SHAPES = [
    (1, 4, 4, 0, 1, 32, None, False),    # nothing cached, one token, GQA 1
    (1, 8, 2, 37, 1, 64, 3, True),       # decode step over a cache view, GQA 4, key splits
    (1, 4, 1, 0, 15, 32, None, False),   # prefill with T not a multiple of the tile, GQA 4
    (2, 4, 4, 21, 30, 64, None, True),   # GQA 1, two batch rows
    (1, 8, 2, 50, 15, 32, 4, False),     # splits over keys with a partial last tile
]


def _attn_inputs(gen, B, Hq, Hkv, P, T, D, dtype, strided):
    q = randn(gen, B, Hq, T, D, dtype=dtype)
    if strided:  # k/v as views of a longer cache buffer, like the engine's KV cache
        buf = randn(gen, 2, B, Hkv, P + T + 5, D, dtype=dtype)
        return q, buf[0, :, :, : P + T], buf[1, :, :, : P + T]
    return q, randn(gen, B, Hkv, P + T, D, dtype=dtype), randn(gen, B, Hkv, P + T, D, dtype=dtype)


def _check_attention_kernel(q, k, v, P, pattern, group, dtype, **launch):
    out = torch.full_like(q, float("nan"))
    res = attention_triton(q, k, v, prefix_len=P, pattern=pattern, group=group, out=out, **launch)
    assert res is out
    ref = attention_reference(q.double(), k.double(), v.double(), prefix_len=P, pattern=pattern, group=group)
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"rel err {err:.3g}"
    # The dtype reference (what the engine runs on CPU) agrees as well.
    err_ref = rel_err(out, attention_reference(q, k, v, prefix_len=P, pattern=pattern, group=group))
    assert err_ref < 2 * TOL[dtype], f"rel err vs same-dtype reference {err_ref:.3g}"


@kernel_test
@pytest.mark.parametrize("pattern, group", PATTERN_CASES)
@pytest.mark.parametrize("B, Hq, Hkv, P, T, D, splits, strided", ATTN_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_kernel(pattern, group, B, Hq, Hkv, P, T, D, splits, strided, dtype):
    T = _T_for(pattern, group, T)
    g = gen_for("attn", pattern, group, B, Hq, Hkv, P, T, D, splits, strided, dtype)
    q, k, v = _attn_inputs(g, B, Hq, Hkv, P, T, D, dtype, strided)
    _check_attention_kernel(q, k, v, P, pattern, group, dtype, num_splits=splits)


@kernel_test
@pytest.mark.parametrize("pattern, group", PATTERN_CASES)
@pytest.mark.parametrize("T, splits", [(1, None), (1, 5), (4, 3), (7, 1)])
def test_attention_cached_kernel(pattern, group, T, splits):
    """The cached form (lengths on the device, the whole cache passed) equals its reference, per row
    of a batch whose rows have different lengths, for any number of key splits."""
    T = _T_for(pattern, group, T)
    B, Hq, Hkv, S, D = 2, 8, 2, 90, 32
    g = gen_for("cached", pattern, group, T, splits)
    q = randn(g, B, Hq, T, D)
    kv = randn(g, 2, B, Hkv, S, D)                  # k and v as views of one buffer, like the KV cache
    lengths = torch.tensor([T + 41, T + 2], device=DEV)
    out = torch.full_like(q, float("nan"))
    got = attention_cached(q, kv[0], kv[1], lengths, pattern=pattern, group=group, num_splits=splits, out=out)
    assert got is out
    ref = attention_cached_reference(q.double(), kv[0].double(), kv[1].double(), lengths, pattern=pattern,
                                     group=group)
    assert rel_err(out, ref) < TOL[torch.float32]


@host_test
def test_attention_cached_argument_errors():
    q, k = torch.zeros(1, 4, 2, 16), torch.zeros(1, 2, 8, 16)
    with pytest.raises(ValueError, match="lengths must be a 1-D integer tensor"):
        attention_cached_reference(q, k, k, torch.tensor([3.0]), pattern="causal")
    with pytest.raises(ValueError, match="do not fit"):
        attention_cached_reference(torch.zeros(1, 4, 9, 16), k, k, torch.tensor([9]), pattern="causal")
    with pytest.raises(ValueError, match="outside"):
        attention_cached_reference(q, k, k, torch.tensor([9]), pattern="causal")


@kernel_test
@pytest.mark.parametrize("block_m, block_n, splits", [(32, 16, 1), (16, 32, 2), (64, 64, None)])
@pytest.mark.parametrize("pattern, group", PATTERN_CASES)
def test_attention_kernel_tiles(block_m, block_n, splits, pattern, group):
    B, Hq, Hkv, P, T, D = 1, 8, 2, 19, _T_for(pattern, group, 20), 16
    g = gen_for("tiles", block_m, block_n, splits, pattern, group)
    q, k, v = _attn_inputs(g, B, Hq, Hkv, P, T, D, torch.float32, False)
    _check_attention_kernel(q, k, v, P, pattern, group, torch.float32, block_m=block_m, block_n=block_n,
                            num_splits=splits)


@kernel_test
def test_attention_public_triton_and_scale():
    g = gen_for("public")
    q, k, v = _attn_inputs(g, 1, 4, 2, 6, 5, 32, torch.float32, False)
    out = attention(q, k, v, prefix_len=6, pattern="causal", impl="triton", scale=0.2)
    ref = attention(q, k, v, prefix_len=6, pattern="causal", impl="reference", scale=0.2)
    assert out.dtype == q.dtype and rel_err(out, ref) < 1e-4


@kernel_test
def test_attention_kernel_peaky_scores():
    """Large logits (one key dominates) stress the running max of the online softmax."""
    g = gen_for("peaky")
    q, k, v = _attn_inputs(g, 1, 4, 1, 40, 12, 32, torch.float32, False)
    q = q * 12.0
    _check_attention_kernel(q, k, v, 40, "causal", 0, torch.float32, num_splits=3)


# --------------------------------------------------------------------------------------------------
# Verify (greedy)
# --------------------------------------------------------------------------------------------------


def _greedy_case(gen, B, T, V, dtype, ties, dev=DEV):
    if ties:  # few distinct values: argmax ties everywhere, lowest index must win
        logits = torch.randint(0, 3, (B, T, V), generator=gen).to(dtype)
    else:
        logits = torch.randn(B, T, V, generator=gen).to(dtype)
    a = logits.argmax(-1)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    for b in range(B):  # row b copies the argmax for its first b drafts, then maybe diverges
        n = min(T - 1, b)
        tokens[b, 1 : n + 1] = a[b, :n]
        if n + 1 < T:
            tokens[b, n + 1] = (a[b, n] + 1) % V
    return tokens.to(dev), logits.to(dev)


@host_test
@pytest.mark.parametrize("B, T, V, ties", [(5, 4, 11, False), (6, 6, 7, True), (2, 1, 5, False)])
def test_verify_greedy_reference_vs_naive(B, T, V, ties):
    tokens, logits = _greedy_case(gen_for("vg-ref", B, T, V, ties), B, T, V, torch.float32, ties, CPU)
    acc, bonus = verify_greedy(tokens, logits)
    nacc, nbonus = naive_verify_greedy(tokens, logits)
    assert acc.dtype == torch.int64 and bonus.dtype == torch.int64
    assert torch.equal(acc.cpu(), nacc) and torch.equal(bonus.cpu(), nbonus)


@kernel_test
@pytest.mark.parametrize("B, T, V, ties", [(5, 4, 11, False), (6, 6, 300, True), (3, 1, 50, False),
                                           (9, 8, 1000, False), (4, 3, 70, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunks", [None, 3])
def test_verify_greedy_kernel(B, T, V, ties, dtype, chunks):
    tokens, logits = _greedy_case(gen_for("vg", B, T, V, ties, dtype), B, T, V, dtype, ties)
    acc_o = torch.full((B,), -7, dtype=torch.int64, device=DEV)
    bonus_o = torch.full((B,), -7, dtype=torch.int64, device=DEV)
    acc, bonus = verify_greedy_triton(tokens, logits, accepted_out=acc_o, bonus_out=bonus_o, num_chunks=chunks)
    racc, rbonus = verify_greedy_reference(tokens, logits)
    assert torch.equal(acc, racc), (acc, racc)
    assert torch.equal(bonus, rbonus), (bonus, rbonus)
    assert torch.equal(verify_greedy(tokens, logits, impl="triton")[0], racc)


# --------------------------------------------------------------------------------------------------
# Verify (speculative sampling)
# --------------------------------------------------------------------------------------------------


def _sample_case(gen, B, T, V, dtype, with_q, dev=DEV):
    logits = (torch.randn(B, T, V, generator=gen) * 2.0).to(dtype)
    q = torch.softmax(torch.randn(B, T, V, generator=gen) * 2.0, -1)
    # Drafts from the target itself (many accepts) in even rows, from q in odd rows.
    p = torch.softmax(logits.float(), -1)
    src = torch.where((torch.arange(B) % 2 == 0)[:, None, None], p, q)
    d = torch.multinomial(src.view(-1, V), 1, generator=gen).view(B, T)
    tokens = torch.cat([d[:, :1], d[:, :-1]], dim=1)  # draft i ~ distribution of row i - 1
    u = torch.rand(B, T, generator=gen)
    qp = q.to(dtype).to(dev) if with_q else None
    return tokens.to(dev), logits.to(dev), qp, u.to(dev)


@host_test
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("B, T, V", [(8, 5, 7), (4, 1, 6), (6, 3, 40)])
def test_verify_sample_reference_vs_naive(with_q, B, T, V):
    tokens, logits, qp, u = _sample_case(gen_for("vs-ref", with_q, B, T, V), B, T, V, torch.float32, with_q, CPU)
    acc, tok = verify_sample(tokens, logits, temperature=0.7, draft_probs=qp, uniforms=u)
    nacc, ntok = naive_verify_sample(tokens.cpu(), logits.cpu(), temperature=0.7,
                                     draft_probs=None if qp is None else qp.cpu(), uniforms=u.cpu())
    assert torch.equal(acc.cpu(), nacc) and torch.equal(tok.cpu(), ntok)


@kernel_test
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("B, T, V", [(8, 5, 7), (4, 1, 6), (6, 3, 300), (3, 8, 2000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunks", [None, 3])
def test_verify_sample_kernel(with_q, B, T, V, dtype, chunks):
    tokens, logits, qp, u = _sample_case(gen_for("vs", with_q, B, T, V, dtype), B, T, V, dtype, with_q)
    acc_o = torch.full((B,), -7, dtype=torch.int64, device=DEV)
    tok_o = torch.full((B,), -7, dtype=torch.int64, device=DEV)
    acc, tok = verify_sample_triton(tokens, logits, temperature=0.7, draft_probs=qp, uniforms=u,
                                    accepted_out=acc_o, token_out=tok_o, num_chunks=chunks)
    racc, rtok = verify_sample_reference(tokens, logits, temperature=0.7, draft_probs=qp, uniforms=u)
    assert torch.equal(acc, racc), (acc, racc)
    assert torch.equal(tok, rtok), (tok, rtok)


@kernel_test
def test_verify_sample_kernel_degenerate_residual():
    """q >= p everywhere (here q = 2p, not normalised): the rejection's residual max(0, p - q) is all
    zero, and both implementations fall back to sampling p itself."""
    logits = torch.tensor([[[0.5, 1.0, -1.0, 0.0, 2.0, 0.3]] * 2], device=DEV)
    q = 2.0 * torch.softmax(logits, -1)
    tokens = torch.tensor([[0, 4]], device=DEV)
    for u_s in (0.05, 0.5, 0.97):
        u = torch.tensor([[0.6, u_s]], device=DEV)  # 0.6 * 2p(d) >= p(d): rejected
        results = [verify_sample(tokens, logits, temperature=1.0, draft_probs=q, uniforms=u, impl=impl)
                   for impl in ("triton", "reference")]
        assert results[0][0].item() == results[1][0].item() == 0
        assert results[0][1].item() == results[1][1].item()


SAMPLE_P_LOGITS = [1.0, 0.2, -0.5, 2.0, 0.0]


def _first_token_counts(impl, N, with_q, seed, dev):
    """Emit one step for N identical rows; count the first emitted token (d_1 if accepted)."""
    gen = torch.Generator().manual_seed(seed)
    V = len(SAMPLE_P_LOGITS)
    logits = torch.tensor([SAMPLE_P_LOGITS, [0.0, 0.5, 1.5, -1.0, 0.3], [0.3, 0.0, 0.0, 1.0, -2.0]])
    qd = torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1])
    if with_q:
        d = torch.multinomial(qd, 2 * N, replacement=True, generator=gen).view(N, 2)
        draft_probs = qd.expand(N, 3, V).contiguous().to(dev)
    else:
        d = torch.full((N, 2), 1)  # argmax drafts: q is one-hot on d (token 1 is not p's mode)
        draft_probs = None
    tokens = torch.cat([torch.zeros(N, 1, dtype=torch.long), d], 1).to(dev)
    logits = logits.expand(N, 3, V).contiguous().to(dev)
    u = torch.rand(N, 3, generator=gen).to(dev) if impl == "triton" else None
    acc, tok = verify_sample(tokens, logits, temperature=1.0, draft_probs=draft_probs, uniforms=u,
                             generator=gen if u is None else None, impl=impl)
    first = torch.where(acc >= 1, tokens[:, 1], tok).cpu()
    return torch.bincount(first, minlength=V), acc.cpu()


@host_test
@pytest.mark.parametrize("with_q", [False, True])
def test_verify_sample_reference_distribution(with_q):
    """The first emitted token is distributed as p = softmax(logits[0]) (chi-square, 0.1% level)."""
    counts, acc = _first_token_counts("reference", 40_000, with_q, seed=11 + with_q, dev=CPU)
    p = torch.softmax(torch.tensor(SAMPLE_P_LOGITS), -1)
    chi = chi_square(counts, p)
    assert chi < CHI2_999[len(p) - 1], f"chi2 {chi:.2f}, counts {counts.tolist()}, expected {(p * 40_000).tolist()}"
    assert 0 < int((acc >= 1).sum()) < 40_000  # both branches (accept, residual) were exercised


@kernel_test
@pytest.mark.parametrize("with_q", [False, True])
def test_verify_sample_kernel_distribution(with_q):
    """Same, for the kernel, with uniforms from torch.rand (few rows under the interpreter)."""
    N = 300 if INTERPRETED else 100_000
    counts, acc = _first_token_counts("triton", N, with_q, seed=21 + with_q, dev=DEV)
    p = torch.softmax(torch.tensor(SAMPLE_P_LOGITS), -1)
    chi = chi_square(counts, p)
    assert chi < CHI2_999[len(p) - 1], f"chi2 {chi:.2f}, counts {counts.tolist()}"


# --------------------------------------------------------------------------------------------------
# Unmask step
# --------------------------------------------------------------------------------------------------


def _unmask_case(gen, B, T, V, mask_id, dtype, ties, dev=DEV):
    sharp = torch.rand(B, T, 1, generator=gen) * 6.0
    logits = torch.randn(B, T, V, generator=gen) * sharp
    if ties:  # identical rows in batch row 2: equal confidences, lowest index must win
        logits[min(2, B - 1)] = logits[min(2, B - 1), :1].clone()
        logits[..., 3 % V] = logits.max(-1).values  # argmax ties inside a row too
    logits[..., mask_id] = logits.abs().max() + 5.0  # the mask id would win if it were not excluded
    tokens = torch.randint(0, V, (B, T), generator=gen)
    tokens = torch.where(tokens == mask_id, (tokens + 1) % V, tokens)
    masked = torch.rand(B, T, generator=gen) < 0.5
    masked[0] = False  # a row with nothing masked
    if B > 1:
        masked[1] = True  # a fully masked row
    tokens = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    return tokens.to(dev), logits.to(dtype).to(dev)


UNMASK_CASES = [(4, 8, 13, 0, False), (5, 6, 40, 39, True), (3, 1, 9, 4, False), (6, 16, 1000, 100, False),
                (3, 5, 300, 7, True)]


@host_test
@pytest.mark.parametrize("B, T, V, mask_id, ties", UNMASK_CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.4, 1.5])
def test_unmask_reference_vs_naive(B, T, V, mask_id, ties, threshold):
    tokens, logits = _unmask_case(gen_for("um-ref", B, T, V, mask_id, ties), B, T, V, mask_id, torch.float32, ties,
                                  CPU)
    new, commit, conf = unmask_step(tokens, logits, mask_id=mask_id, threshold=threshold)
    nnew, ncommit, nconf = naive_unmask_step(tokens, logits, mask_id=mask_id, threshold=threshold)
    assert torch.equal(new, nnew) and torch.equal(commit, ncommit)
    assert conf.dtype == torch.float32 and torch.allclose(conf.double(), nconf, rtol=1e-5, atol=1e-7)
    assert not (new == mask_id)[commit].any()
    masked = tokens == mask_id
    assert torch.equal(new[~masked], tokens[~masked]) and not commit[~masked].any()
    assert torch.equal(commit.any(-1), masked.any(-1))  # every row with masks makes progress


@kernel_test
@pytest.mark.parametrize("B, T, V, mask_id, ties", UNMASK_CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.4, 1.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunks", [None, 3])
def test_unmask_kernel(B, T, V, mask_id, ties, threshold, dtype, chunks):
    tokens, logits = _unmask_case(gen_for("um", B, T, V, mask_id, ties, dtype), B, T, V, mask_id, dtype, ties)
    new_o = torch.full((B, T), -7, dtype=torch.int64, device=DEV)
    commit_o = torch.ones(B, T, dtype=torch.bool, device=DEV)
    conf_o = torch.full((B, T), float("nan"), device=DEV)
    new, commit, conf = unmask_step_triton(tokens, logits, mask_id=mask_id, threshold=threshold,
                                           tokens_out=new_o, committed_out=commit_o, confidence_out=conf_o,
                                           num_chunks=chunks)
    rnew, rcommit, rconf = unmask_step_reference(tokens, logits, mask_id=mask_id, threshold=threshold)
    assert torch.equal(new, rnew)
    assert torch.equal(commit, rcommit)
    assert torch.allclose(conf, rconf, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# GPU: real shapes (the same functions scripts/gpu_check.py runs)
# --------------------------------------------------------------------------------------------------

from triton_kernels import testing as _T  # noqa: E402


@gpu
@needs_cuda
@pytest.mark.parametrize("pattern, T, group", _T.GPU_ATTN_CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_attention_real_shapes(pattern, T, group, dtype):
    _T.gpu_check_attention(dtype, pattern, T, group)


@gpu
@needs_cuda
def test_gpu_attention_fp32_and_small_heads():
    _T.gpu_check_attention(torch.float32, "causal", 32, 0, prefix_len=1024)
    _T.gpu_check_attention(torch.bfloat16, "quadratic", 30, 5, B=2, Hq=8, Hkv=8, D=64, prefix_len=1000)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_verify_greedy_real_vocab(dtype):
    _T.gpu_check_verify_greedy(dtype)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_unmask_real_vocab(dtype):
    _T.gpu_check_unmask(dtype)


@gpu
@needs_cuda
def test_gpu_verify_sample_real_vocab():
    _T.gpu_check_verify_sample(torch.bfloat16)


@kernel_test
def test_gpu_check_functions_at_toy_shapes():
    """The GPU checks' own code (inputs, poisoning, comparisons), run at toy shapes wherever the
    kernels run, so that a lent GPU's minutes are not spent finding a bug in the test."""
    dev = str(DEV)
    for dtype in (torch.float32, torch.float16):
        _T.gpu_check_attention(dtype, "quadratic", 6, 3, Hq=4, Hkv=2, D=16, prefix_len=9, device=dev)
        _T.gpu_check_attention(dtype, "causal", 1, 0, Hq=8, Hkv=2, D=32, prefix_len=40, device=dev)
        _T.gpu_check_unmask(dtype, B=3, T=4, V=300, mask_id=7, device=dev)
        _T.gpu_check_verify_greedy(dtype, B=3, T=4, V=300, device=dev)
    _T.gpu_check_verify_sample(torch.float32, B=4, T=3, V=64, N=300, device=dev)
