"""One diffusion unmask step over a block: argmax, confidence, threshold and the at-least-one rule.

Inputs: block_tokens [B, T] int64 with `mask_id` at the still-masked positions, and the logits
[B, T, V] of the bidirectional pass over that block (the logit at position i predicts token i itself).

At every masked position the candidate is the argmax over the vocabulary with `mask_id` excluded (its
logit counts as -inf, so the mask id is never emitted), and the confidence is the candidate's
probability under that same softmax, i.e. 1 / sum_v exp(l_v - max_v l_v). Every masked position with
confidence >= threshold is committed; a row that still has masked positions but commits none by the
threshold commits its single most confident masked position (lowest index on ties), so each step
makes progress. Committed tokens are never re-masked (unmasked positions pass through unchanged).

Returns (new_tokens [B, T] int64, committed [B, T] bool, confidence [B, T] float32 with 0 at
positions that were not masked).

The Triton kernel is one launch over (batch row, vocabulary chunk) programs, so that a batch of one
row still spreads over the GPU: each program sweeps its chunk in [T x BLOCK_V] tiles keeping a
running max, its index and a rescaled sum of exponentials for every position, and writes them as
partials; the row's program that finishes last (an atomic ticket per row) merges them and applies the
threshold and at-least-one rules on the T-vector in registers. One kernel, no second launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_impl, interpreted, require, require_triton_device, vocab_split

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _check(block_tokens, logits, mask_id, name, floats=_FLOATS + (torch.float64,)):
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
    require(V >= 2, f"{name}: the vocabulary needs at least one token besides the mask id (V={V})")
    require(0 <= int(mask_id) < V, f"{name}: mask_id {mask_id} outside the vocabulary [0, {V})")
    return B, T, V


def unmask_step_reference(block_tokens, logits, *, mask_id: int, threshold: float):
    B, T, V = _check(block_tokens, logits, mask_id, "unmask_step_reference")
    x = logits.float().clone()
    x[..., mask_id] = float("-inf")
    cand = x.argmax(-1)
    mx = x.max(-1).values
    conf = 1.0 / torch.exp(x - mx[..., None]).sum(-1)  # probability of the argmax
    masked = block_tokens == mask_id
    conf = torch.where(masked, conf, torch.zeros_like(conf))
    commit = masked & (conf >= threshold)
    need = masked.any(-1) & ~commit.any(-1)
    best = torch.where(masked, conf, torch.full_like(conf, -1.0)).argmax(-1)
    commit[need, best[need]] = True
    new_tokens = torch.where(commit, cand, block_tokens)
    return new_tokens, commit, conf


@triton.jit
def _unmask_kernel(Tok, Logits, NewTok, Commit, Conf, Pmax, Psum, Parg, Count,
                   stride_tb, stride_tt, stride_lb, stride_lt, stride_nb, stride_nt,
                   stride_cb, stride_ct, stride_fb, stride_ft,
                   T, V, mask_id, threshold, n_chunks, tiles_per_chunk,
                   BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    chunk = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    t_ok = offs_t < T

    # This program's share of the vocabulary: running max, its lowest index, and the sum of
    # exp(x - max), for every position at once.
    m = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_T], tl.float32)
    arg = tl.zeros([BLOCK_T], tl.int32)
    for i in range(0, tiles_per_chunk):
        v0 = (chunk * tiles_per_chunk + i) * BLOCK_V
        offs_v = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + b * stride_lb + offs_t[:, None] * stride_lt + offs_v[None, :],
                    mask=t_ok[:, None] & (offs_v < V)[None, :], other=float("-inf")).to(tl.float32)
        x = tl.where((offs_v == mask_id)[None, :], float("-inf"), x)  # the mask id is never a candidate
        tile_max, tile_arg = tl.max(x, 1, return_indices=True, return_indices_tie_break_left=True)
        arg = tl.where(tile_max > m, tile_arg + v0, arg)
        m_new = tl.maximum(m, tile_max)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_use) + tl.sum(tl.exp(x - m_use[:, None]), 1)
        m = m_new
    part = (b * n_chunks + chunk) * BLOCK_T + offs_t
    tl.store(Pmax + part, m)
    tl.store(Psum + part, s)
    tl.store(Parg + part, arg)

    # The row's last chunk program to finish (atomic ticket, release/acquire) merges the partials.
    tl.debug_barrier()
    if tl.atomic_add(Count + b, 1, sem="acq_rel") == n_chunks - 1:
        offs_c = tl.arange(0, BLOCK_C)
        pp = (b * n_chunks + offs_c[:, None]) * BLOCK_T + offs_t[None, :]
        c_ok = (offs_c < n_chunks)[:, None]
        pm = tl.load(Pmax + pp, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        ps = tl.load(Psum + pp, mask=c_ok, other=0.0, cache_modifier=".cg")
        pa = tl.load(Parg + pp, mask=c_ok, other=0, cache_modifier=".cg")
        m, win = tl.max(pm, 0, return_indices=True, return_indices_tie_break_left=True)  # first chunk wins ties
        cand = tl.sum(tl.where(offs_c[:, None] == win[None, :], pa, 0), 0)
        m_use = tl.where(m == float("-inf"), 0.0, m)
        s = tl.sum(ps * tl.exp(pm - m_use[None, :]), 0)

        tok = tl.load(Tok + b * stride_tb + offs_t * stride_tt, mask=t_ok, other=0)
        masked = t_ok & (tok == mask_id)
        conf = tl.where(masked, 1.0 / tl.where(masked, s, 1.0), 0.0)  # p(argmax) = 1 / sum exp(x - max)
        commit = masked & (conf >= threshold)
        # At least one commit per row that still has masks: the most confident, lowest index on ties.
        n_masked = tl.sum(masked.to(tl.int32), 0)
        n_commit = tl.sum(commit.to(tl.int32), 0)
        _, best = tl.max(tl.where(masked, conf, -1.0), 0, return_indices=True, return_indices_tie_break_left=True)
        commit = commit | ((n_masked > 0) & (n_commit == 0) & (offs_t == best))

        new_tok = tl.where(commit, cand.to(tl.int64), tok)
        tl.store(NewTok + b * stride_nb + offs_t * stride_nt, new_tok, mask=t_ok)
        tl.store(Commit + b * stride_cb + offs_t * stride_ct, commit.to(tl.int8), mask=t_ok)
        tl.store(Conf + b * stride_fb + offs_t * stride_ft, conf, mask=t_ok)


def unmask_step_triton(block_tokens, logits, *, mask_id: int, threshold: float,
                       tokens_out=None, committed_out=None, confidence_out=None, num_chunks=None):
    B, T, V = _check(block_tokens, logits, mask_id, "unmask_step_triton", _FLOATS)
    require(logits.stride(-1) == 1, "unmask_step_triton: logits must be contiguous in the vocab dim")
    require_triton_device(_unmask_kernel, "unmask_step", block_tokens, logits)
    dev = logits.device
    new_tok = _out(tokens_out, (B, T), torch.int64, dev, "tokens_out")
    commit = _out(committed_out, (B, T), torch.bool, dev, "committed_out")
    conf = _out(confidence_out, (B, T), torch.float32, dev, "confidence_out")
    block_t, block_v, n_chunks, tpc, block_c = vocab_split(B, T, V, dev, interpreted(_unmask_kernel), num_chunks)
    size = B * n_chunks * block_t
    pmax = torch.empty(size, dtype=torch.float32, device=dev)
    psum = torch.empty(size, dtype=torch.float32, device=dev)
    parg = torch.empty(size, dtype=torch.int32, device=dev)
    count = torch.zeros(B, dtype=torch.int32, device=dev)
    commit_i8 = commit.view(torch.int8)
    _unmask_kernel[(B, n_chunks)](
        block_tokens, logits, new_tok, commit_i8, conf, pmax, psum, parg, count,
        block_tokens.stride(0), block_tokens.stride(1), logits.stride(0), logits.stride(1),
        new_tok.stride(0), new_tok.stride(1), commit_i8.stride(0), commit_i8.stride(1),
        conf.stride(0), conf.stride(1),
        T, V, int(mask_id), float(threshold), n_chunks, tpc,
        BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_C=block_c, num_warps=8)
    return new_tok, commit, conf


def _out(out, shape, dtype, device, name):
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    require(tuple(out.shape) == shape and out.dtype == dtype and out.device == device,
            f"{name} must be a {dtype} {list(shape)} tensor on {device}, got {out.dtype} {list(out.shape)} on {out.device}")
    return out


def unmask_step(block_tokens, logits, *, mask_id: int, threshold: float, impl: str = "reference"):
    """(new_tokens [B, T] int64, committed [B, T] bool, confidence [B, T] float32); see module doc."""
    check_impl(impl)
    if impl == "triton":
        return unmask_step_triton(block_tokens, logits, mask_id=mask_id, threshold=threshold)
    return unmask_step_reference(block_tokens, logits, mask_id=mask_id, threshold=threshold)
