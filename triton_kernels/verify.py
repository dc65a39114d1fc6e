"""Verify/accept for linear self-speculation: how many drafts the target model accepts, and the token
that follows them.

Inputs: block_tokens [B, T] int64 = [seed, d_1 .. d_(T-1)] (the seed is already accepted) and the
logits [B, T, V] of the causal verify pass over that block, where the logit at position i predicts
token i + 1.

- `verify_greedy`: a = argmax(logits) (lowest index on ties, like torch.argmax). The accepted count c
  is the length of the longest prefix of drafts with a[i-1] == d_i; the bonus token is a[c].
- `verify_sample`: speculative sampling (Leviathan et al. 2023) at temperature > 0. The target
  distribution for position i is p_i = softmax(logits[:, i-1] / temperature); q_i is the drafter's
  distribution (draft_probs[:, i], or one-hot on d_i when the drafts were argmax). Walking i = 1, 2,
  ...: accept d_i iff u_i < min(1, p_i(d_i) / q_i(d_i)), computed as u_i * q_i(d_i) < p_i(d_i) (the
  same for u_i in [0, 1), and safe when q_i(d_i) = 0). At the first rejection emit a sample of
  normalize(max(0, p_i - q_i)); if every draft is accepted, emit a sample of p_T (from logits[:, T-1]).
  Either way the emitted distribution is exactly p: the output distribution equals AR sampling.
  In both cases the sampled row is logits[:, c], which is what lets the kernel treat them alike.

Randomness: `uniforms` [B, T] float32 in [0, 1), if given, fixes it: uniforms[:, i-1] decides draft
i (i = 1 .. T-1) and uniforms[:, T-1] drives the emitted sample by inverse CDF (first v whose
cumulative weight exceeds u * total). Without it the reference draws with `generator` (torch.rand for
the accept test, torch.multinomial for the sample) and the Triton path draws the uniforms with
torch.rand(generator=generator) and uses its inverse CDF.

Each Triton kernel is one launch over (batch row, vocabulary chunk) programs, so that a batch of
one row still spreads over the GPU. Each program sweeps its chunk in [all T positions x BLOCK_V] tiles
(argmax, or max and sum of exponentials) and writes its partials; the program of a row that finishes
last (an atomic ticket per row) merges the partials, does the accept walk on the T-vector in
registers and (sampling only) two more sweeps over the one logits row it samples from.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_impl, interpreted, next_pow2, require, require_triton_device, vocab_split

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _check_block(block_tokens, logits, name, floats=_FLOATS + (torch.float64,)):
    require(isinstance(block_tokens, torch.Tensor) and block_tokens.dim() == 2,
            f"{name}: block_tokens must be a [B, T] tensor")
    require(block_tokens.dtype == torch.int64, f"{name}: block_tokens must be int64, got {block_tokens.dtype}")
    require(isinstance(logits, torch.Tensor) and logits.dim() == 3, f"{name}: logits must be a [B, T, V] tensor")
    require(logits.shape[:2] == block_tokens.shape,
            f"{name}: logits {tuple(logits.shape)} do not match block_tokens {tuple(block_tokens.shape)}")
    require(logits.dtype in floats, f"{name}: logits dtype must be one of {floats}, got {logits.dtype}")
    require(logits.device == block_tokens.device,
            f"{name}: block_tokens on {block_tokens.device}, logits on {logits.device}")
    B, T, V = logits.shape
    require(B >= 1 and T >= 1 and V >= 1, f"{name}: empty input {tuple(logits.shape)}")
    return B, T, V


def _check_sample_args(block_tokens, target_logits, temperature, draft_probs, uniforms, name):
    B, T, V = _check_block(block_tokens, target_logits, name)
    require(float(temperature) > 0.0, f"{name}: temperature must be > 0 (use verify_greedy for 0), got {temperature}")
    if draft_probs is not None:
        require(draft_probs.shape == target_logits.shape,
                f"{name}: draft_probs {tuple(draft_probs.shape)} != logits {tuple(target_logits.shape)}")
        require(draft_probs.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                f"{name}: draft_probs must be floating point, got {draft_probs.dtype}")
        require(draft_probs.device == target_logits.device, f"{name}: draft_probs on another device")
    if uniforms is not None:
        require(uniforms.shape == (B, T), f"{name}: uniforms must be [B, T] = {(B, T)}, got {tuple(uniforms.shape)}")
        require(uniforms.dtype in (torch.float32, torch.float64), f"{name}: uniforms must be float32/64, got {uniforms.dtype}")
        require(uniforms.device == target_logits.device, f"{name}: uniforms on another device")
    return B, T, V


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


def verify_greedy_reference(block_tokens, logits):
    B, T, V = _check_block(block_tokens, logits, "verify_greedy_reference")
    a = logits.argmax(-1)
    match = a[:, :-1] == block_tokens[:, 1:]
    accepted = match.long().cumprod(-1).sum(-1)
    bonus = a.gather(1, accepted[:, None]).squeeze(1)
    return accepted, bonus


def _inverse_cdf(w, u):
    """First index whose cumulative weight exceeds u * total; rounding fallback: last positive index."""
    V = w.shape[-1]
    target = u * w.sum(-1)
    idx = (w.cumsum(-1) <= target[:, None]).sum(-1)
    ar = torch.arange(V, device=w.device)
    last_pos = torch.where(w > 0, ar, -1).max(-1).values
    return torch.where(idx < V, idx, last_pos)


def verify_sample_reference(block_tokens, target_logits, *, temperature, draft_probs=None, uniforms=None,
                            generator=None):
    B, T, V = _check_sample_args(block_tokens, target_logits, temperature, draft_probs, uniforms,
                                 "verify_sample_reference")
    dev = target_logits.device
    p = torch.softmax(target_logits.float() * (1.0 / float(temperature)), dim=-1)
    d = block_tokens[:, 1:]
    p_d = p[:, :-1].gather(-1, d[..., None]).squeeze(-1)
    if draft_probs is not None:
        q_d = draft_probs[:, 1:].float().gather(-1, d[..., None]).squeeze(-1)
    else:
        q_d = torch.ones_like(p_d)
    if uniforms is not None:
        u_acc = uniforms[:, : T - 1].float()
    else:
        u_acc = torch.rand(B, T - 1, generator=generator, device=dev)
    accept = u_acc * q_d < p_d
    accepted = accept.long().cumprod(-1).sum(-1)

    rows = torch.arange(B, device=dev)
    p_c = p[rows, accepted]
    rejected = accepted < T - 1
    nxt = (accepted + 1).clamp(max=T - 1)
    if draft_probs is not None:
        q_c = draft_probs[rows, nxt].float()
    else:
        q_c = torch.nn.functional.one_hot(block_tokens[rows, nxt], V).float()
    w = torch.where(rejected[:, None], (p_c - q_c).clamp_min(0.0), p_c)
    w = torch.where((w.sum(-1) > 0)[:, None], w, p_c)  # degenerate residual (p == q): sample p itself
    if uniforms is not None:
        token = _inverse_cdf(w, uniforms[:, T - 1].float())
    else:
        token = torch.multinomial(w, 1, generator=generator).squeeze(1)
    return accepted, token


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _last_program(Count, b):
    # Every chunk program of row b takes a ticket after writing its partials; the one that draws the
    # last ticket knows all partials are written (release/acquire on the counter) and merges them.
    tl.debug_barrier()
    return tl.atomic_add(Count + b, 1, sem="acq_rel")


@triton.jit
def _verify_greedy_kernel(Tok, Logits, Acc, Bonus, Pmax, Parg, Count,
                          stride_tb, stride_tt, stride_lb, stride_lt, T, V, n_chunks, tiles_per_chunk,
                          BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    t_ok = offs_t < T

    # This program's share of the vocabulary: running max and (lowest) argmax per position.
    best = tl.full([BLOCK_T], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK_T], tl.int32)
    for i in range(0, tiles_per_chunk):
        v0 = (chunk * tiles_per_chunk + i) * BLOCK_V
        offs_v = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + b * stride_lb + offs_t[:, None] * stride_lt + offs_v[None, :],
                    mask=t_ok[:, None] & (offs_v < V)[None, :], other=float("-inf")).to(tl.float32)
        tile_max, tile_arg = tl.max(x, 1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_max > best  # strict: an earlier tile keeps a tie (lowest index wins)
        best_i = tl.where(better, tile_arg + v0, best_i)
        best = tl.where(better, tile_max, best)
    part = (b * n_chunks + chunk) * BLOCK_T + offs_t
    tl.store(Pmax + part, best)
    tl.store(Parg + part, best_i)

    if _last_program(Count, b) == n_chunks - 1:
        offs_c = tl.arange(0, BLOCK_C)
        pp = (b * n_chunks + offs_c[:, None]) * BLOCK_T + offs_t[None, :]
        c_ok = (offs_c < n_chunks)[:, None]
        pmax = tl.load(Pmax + pp, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        parg = tl.load(Parg + pp, mask=c_ok, other=0, cache_modifier=".cg")
        _, win = tl.max(pmax, 0, return_indices=True, return_indices_tie_break_left=True)  # first chunk wins ties
        a = tl.sum(tl.where(offs_c[:, None] == win[None, :], parg, 0), 0)
        # Lane i compares a[i] with draft i + 1; the first mismatch (or the last lane) is the count.
        has_draft = offs_t < T - 1
        d = tl.load(Tok + b * stride_tb + (offs_t + 1) * stride_tt, mask=has_draft, other=-1)
        stop = (a.to(tl.int64) != d) | (~has_draft)
        c = tl.min(tl.where(stop, offs_t, BLOCK_T), 0)
        bonus = tl.sum(tl.where(offs_t == c, a, 0), 0)
        tl.store(Acc + b, c.to(tl.int64))
        tl.store(Bonus + b, bonus.to(tl.int64))


@triton.jit
def _verify_sample_kernel(Tok, Logits, Qp, U, Acc, Next, Pmax, Psum, Count,
                          stride_tb, stride_tt, stride_lb, stride_lt, stride_qb, stride_qt,
                          stride_ub, stride_ut, T, V, inv_temp, n_chunks, tiles_per_chunk,
                          HAS_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_V1: tl.constexpr):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    l_row = Logits + b * stride_lb

    # This program's share: max and sum of exp of logits / temperature, every position at once.
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    z = tl.zeros([BLOCK_T], tl.float32)
    for i in range(0, tiles_per_chunk):
        offs_v = (chunk * tiles_per_chunk + i) * BLOCK_V + tl.arange(0, BLOCK_V)
        x = tl.load(l_row + offs_t[:, None] * stride_lt + offs_v[None, :],
                    mask=t_ok[:, None] & (offs_v < V)[None, :], other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(x, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        z = z * tl.exp(m - m_use) + tl.sum(tl.exp(x - m_use[:, None]), 1)
        m = m_new
    part = (b * n_chunks + chunk) * BLOCK_T + offs_t
    tl.store(Pmax + part, m)
    tl.store(Psum + part, z)

    if _last_program(Count, b) == n_chunks - 1:
        offs_c = tl.arange(0, BLOCK_C)
        pp = (b * n_chunks + offs_c[:, None]) * BLOCK_T + offs_t[None, :]
        c_ok = (offs_c < n_chunks)[:, None]
        pm = tl.load(Pmax + pp, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        pz = tl.load(Psum + pp, mask=c_ok, other=0.0, cache_modifier=".cg")
        m = tl.max(pm, 0)
        m = tl.where(t_ok, m, 0.0)
        z = tl.sum(pz * tl.exp(pm - m[None, :]), 0)
        z = tl.where(t_ok, z, 1.0)

        # Accept walk. Lane i holds draft i + 1, judged by p from logits row i.
        has_draft = offs_t < T - 1
        d = tl.load(Tok + b * stride_tb + (offs_t + 1) * stride_tt, mask=has_draft, other=0)
        x_d = tl.load(l_row + offs_t * stride_lt + d, mask=has_draft, other=float("-inf")).to(tl.float32) * inv_temp
        p_d = tl.exp(x_d - m) / z
        if HAS_Q:
            q_d = tl.load(Qp + b * stride_qb + (offs_t + 1) * stride_qt + d, mask=has_draft, other=1.0).to(tl.float32)
        else:
            q_d = tl.full([BLOCK_T], 1.0, tl.float32)
        u = tl.load(U + b * stride_ub + offs_t * stride_ut, mask=has_draft, other=0.0).to(tl.float32)
        stop = ~(u * q_d < p_d) | (~has_draft)  # u < min(1, p/q)  <=>  u*q < p  for u in [0, 1)
        c = tl.min(tl.where(stop, offs_t, BLOCK_T), 0)

        # The emitted token is drawn from logits row c: the residual max(0, p - q_(c+1)) after a
        # rejection, p itself after accepting every draft (or if the residual is all zero).
        rejected = c < T - 1
        m_c = tl.sum(tl.where(offs_t == c, m, 0.0), 0)
        z_c = tl.sum(tl.where(offs_t == c, z, 0.0), 0)
        nxt = tl.minimum(c + 1, T - 1)
        d_rej = tl.load(Tok + b * stride_tb + nxt * stride_tt)
        u_s = tl.load(U + b * stride_ub + (T - 1) * stride_ut).to(tl.float32)
        c_row = l_row + c * stride_lt
        q_row = Qp + b * stride_qb + nxt * stride_qt

        w_res = 0.0
        w_p = 0.0
        for v0 in range(0, V, BLOCK_V1):
            offs_v = v0 + tl.arange(0, BLOCK_V1)
            v_ok = offs_v < V
            p = tl.exp(tl.load(c_row + offs_v, mask=v_ok, other=float("-inf")).to(tl.float32) * inv_temp - m_c) / z_c
            if HAS_Q:
                q = tl.load(q_row + offs_v, mask=v_ok, other=0.0).to(tl.float32)
            else:
                q = tl.where(offs_v == d_rej, 1.0, 0.0)
            w_res += tl.sum(tl.maximum(p - q, 0.0), 0)
            w_p += tl.sum(p, 0)
        use_p = (~rejected) | (w_res <= 0.0)
        target = u_s * tl.where(use_p, w_p, w_res)

        # Inverse CDF: the first v whose running weight exceeds the target, among v with weight > 0.
        carry = 0.0
        found = V
        last_pos = -1
        for v0 in range(0, V, BLOCK_V1):
            offs_v = v0 + tl.arange(0, BLOCK_V1)
            v_ok = offs_v < V
            p = tl.exp(tl.load(c_row + offs_v, mask=v_ok, other=float("-inf")).to(tl.float32) * inv_temp - m_c) / z_c
            if HAS_Q:
                q = tl.load(q_row + offs_v, mask=v_ok, other=0.0).to(tl.float32)
            else:
                q = tl.where(offs_v == d_rej, 1.0, 0.0)
            w = tl.where(use_p, p, tl.maximum(p - q, 0.0))
            cum = tl.cumsum(w, 0) + carry
            hit = (cum > target) & (w > 0.0)
            found = tl.minimum(found, tl.min(tl.where(hit, offs_v, V), 0))
            last_pos = tl.maximum(last_pos, tl.max(tl.where(w > 0.0, offs_v, -1), 0))
            carry += tl.sum(w, 0)
        token = tl.where(found < V, found, last_pos)
        tl.store(Acc + b, c.to(tl.int64))
        tl.store(Next + b, token.to(tl.int64))


def _scratch(B, n_chunks, block_t, device, *dtypes):
    """Per-chunk partials and the zeroed ticket counters of one launch."""
    parts = [torch.empty(B * n_chunks * block_t, dtype=dt, device=device) for dt in dtypes]
    return parts + [torch.zeros(B, dtype=torch.int32, device=device)]


def verify_greedy_triton(block_tokens, logits, *, accepted_out=None, bonus_out=None, num_chunks=None):
    B, T, V = _check_block(block_tokens, logits, "verify_greedy_triton", _FLOATS)
    require(logits.stride(-1) == 1, "verify_greedy_triton: logits must be contiguous in the vocab dim")
    require_triton_device(_verify_greedy_kernel, "verify_greedy", block_tokens, logits)
    acc = _out_vec(accepted_out, B, logits.device, "accepted_out")
    bonus = _out_vec(bonus_out, B, logits.device, "bonus_out")
    block_t, block_v, n_chunks, tpc, block_c = vocab_split(B, T, V, logits.device,
                                                           interpreted(_verify_greedy_kernel), num_chunks)
    pmax, parg, count = _scratch(B, n_chunks, block_t, logits.device, torch.float32, torch.int32)
    _verify_greedy_kernel[(B, n_chunks)](
        block_tokens, logits, acc, bonus, pmax, parg, count,
        block_tokens.stride(0), block_tokens.stride(1), logits.stride(0), logits.stride(1),
        T, V, n_chunks, tpc, BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_C=block_c, num_warps=8)
    return acc, bonus


def verify_sample_triton(block_tokens, target_logits, *, temperature, draft_probs=None, uniforms=None,
                         generator=None, accepted_out=None, token_out=None, num_chunks=None):
    B, T, V = _check_sample_args(block_tokens, target_logits, temperature, draft_probs, uniforms,
                                 "verify_sample_triton")
    require(target_logits.dtype in _FLOATS, f"verify_sample_triton: logits dtype {target_logits.dtype} not in {_FLOATS}")
    require(target_logits.stride(-1) == 1, "verify_sample_triton: logits must be contiguous in the vocab dim")
    if draft_probs is not None:
        require(draft_probs.dtype in _FLOATS, f"verify_sample_triton: draft_probs dtype {draft_probs.dtype} not in {_FLOATS}")
        require(draft_probs.stride(-1) == 1, "verify_sample_triton: draft_probs must be contiguous in the vocab dim")
    require_triton_device(_verify_sample_kernel, "verify_sample", block_tokens, target_logits)
    dev = target_logits.device
    if uniforms is None:
        uniforms = torch.rand(B, T, generator=generator, device=dev)
    uniforms = uniforms.float()
    acc = _out_vec(accepted_out, B, dev, "accepted_out")
    token = _out_vec(token_out, B, dev, "token_out")
    qp = draft_probs if draft_probs is not None else target_logits
    interp = interpreted(_verify_sample_kernel)
    block_t, block_v, n_chunks, tpc, block_c = vocab_split(B, T, V, dev, interp, num_chunks)
    block_v1 = max(16, min(next_pow2(V), 1024 if interp else 4096))
    pmax, psum, count = _scratch(B, n_chunks, block_t, dev, torch.float32, torch.float32)
    _verify_sample_kernel[(B, n_chunks)](
        block_tokens, target_logits, qp, uniforms, acc, token, pmax, psum, count,
        block_tokens.stride(0), block_tokens.stride(1), target_logits.stride(0), target_logits.stride(1),
        qp.stride(0), qp.stride(1), uniforms.stride(0), uniforms.stride(1),
        T, V, 1.0 / float(temperature), n_chunks, tpc,
        HAS_Q=draft_probs is not None, BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_C=block_c,
        BLOCK_V1=block_v1, num_warps=8)
    return acc, token


def _out_vec(out, B, device, name):
    if out is None:
        return torch.empty(B, dtype=torch.int64, device=device)
    require(out.shape == (B,) and out.dtype == torch.int64 and out.device == device and out.is_contiguous(),
            f"{name} must be a contiguous int64 [{B}] tensor on {device}")
    return out


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


def verify_greedy(block_tokens, logits, *, impl: str = "reference"):
    """(accepted [B] int64, bonus [B] int64) for greedy linear self-speculation."""
    check_impl(impl)
    if impl == "triton":
        return verify_greedy_triton(block_tokens, logits)
    return verify_greedy_reference(block_tokens, logits)


def verify_sample(block_tokens, target_logits, *, temperature: float, draft_probs=None, uniforms=None,
                  generator=None, impl: str = "reference"):
    """(accepted [B] int64, next token [B] int64) by speculative sampling at `temperature` > 0."""
    check_impl(impl)
    fn = verify_sample_triton if impl == "triton" else verify_sample_reference
    return fn(block_tokens, target_logits, temperature=temperature, draft_probs=draft_probs,
              uniforms=uniforms, generator=generator)
