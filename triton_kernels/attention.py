"""Attention over a cached prefix plus a block of new queries, for every mask the decoders use.

Shapes: q [B, Hq, T, D] are the T new query tokens of this forward; k, v [B, Hkv, P + T, D] hold the
cached prefix (P = prefix_len keys) followed by this forward's own T keys. Query head h reads kv head
h // (Hq // Hkv) (GQA). Prefix keys are visible to every query under every pattern; among the new
keys (j = s - P, query t, both 0-based over the new tokens) the pattern decides:

- "causal":    j <= t                           (prefill, AR step, verify, diffusion commit)
- "block":     every j                          (diffusion steps and drafts: bidirectional block)
- "quadratic": TiDAR-style self-speculation (DESIGN.md section 3). The T new tokens are groups of
               width `group`, each [d_g, M, ..., M]. With (gq, oq) = divmod(t, group) and
               (gk, ok) = divmod(j, group): visible iff (ok == 0 and gk <= gq) or
               (oq > 0 and ok > 0 and gk == gq). The d tokens are causal over d tokens only (they are
               the AR verifier); the masks of group g see d_0..d_g and every mask of their own group.

`attention_mask` is the one definition of that rule as a dense boolean [T, P + T] tensor; the
reference (`impl="reference"`, dense SDPA, the CPU path) uses it. The Triton kernel never builds a
mask: it evaluates the same rule from indices on the key tiles that need it.

The Triton kernel is flash-attention style (online softmax in fp32 over key tiles, exp2 with the
scale folded in). What it knows beyond the textbook version:

- GQA by packing: one program serves one kv head, and its M rows are (query token, query head of
  that kv head) pairs, row = t * G + head_in_group with G = Hq // Hkv. K/V tiles are loaded once for
  all G heads, and a one-token decode step still fills G rows of the tile.
- Key ranges from the pattern: a row tile stops at its last visible key (causal, quadratic), and the
  key tiles that every row of the tile sees in full (the prefix, plus for "causal" the new keys up to
  the tile's first query) run without any mask arithmetic; only the remaining tiles evaluate the
  index rule.
- Split over keys (flash-decoding) when there are too few row tiles to fill the GPU (decode-like
  shapes: T small, prefix long): each split writes an unnormalised fp32 partial (acc, max, sum) and
  a second small kernel merges the splits in log-sum-exp fashion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import check_impl, interpreted, next_pow2, require, require_triton_device

PATTERNS = ("causal", "block", "quadratic")
_PATTERN_ID = {"causal": 0, "block": 1, "quadratic": 2}
_LOG2E = 1.0 / math.log(2.0)


# --------------------------------------------------------------------------------------------------
# The rule, dense (reference) form
# --------------------------------------------------------------------------------------------------


def _check_pattern(T: int, prefix_len: int, pattern: str, group: int) -> None:
    require(pattern in PATTERNS, f"pattern must be one of {PATTERNS}, got {pattern!r}")
    require(int(prefix_len) >= 0, f"prefix_len must be >= 0, got {prefix_len}")
    if pattern == "quadratic":
        require(int(group) >= 1, f"pattern 'quadratic' needs group >= 1, got group={group}")
        require(T % group == 0, f"pattern 'quadratic': T={T} is not a multiple of group={group}")


_BANDS: dict = {}


def _cached_mask(T: int, prefix_len: int, pattern: str, group: int, device: torch.device,
                 dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """`attention_mask(T, prefix_len, ...)` as a read-only view of a band built once per (T, pattern).

    The band is [T, K + T]: K all-visible columns (the longest prefix seen so far, grown in powers of
    two) followed by the pattern's T x T rule among new keys; the mask for a prefix of P <= K keys is
    its last P + T columns. A decode step (P grows by one every step) then costs one slice instead
    of building a mask. A floating `dtype` gives SDPA's additive form (0 visible, -inf hidden): what
    SDPA would convert a boolean mask into on every call, per layer.
    """
    key = (T, pattern, group, device, dtype)
    band = _BANDS.get(key)
    if band is None or band.shape[1] - T < prefix_len:
        k = max(256, next_pow2(prefix_len))
        band = attention_mask(T, k, pattern, group, device=device)
        if dtype != torch.bool:
            band = torch.zeros(band.shape, dtype=dtype, device=device).masked_fill_(~band, float("-inf"))
        if len(_BANDS) >= 64:
            _BANDS.clear()
        _BANDS[key] = band
    return band[:, band.shape[1] - T - prefix_len:]


def attention_mask(T: int, prefix_len: int, pattern: str, group: int = 0, device=None) -> torch.Tensor:
    """Boolean [T, prefix_len + T] visibility (True = query t may attend to key s)."""
    _check_pattern(T, prefix_len, pattern, group)
    t = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(prefix_len + T, device=device).unsqueeze(0) - prefix_len
    if pattern == "causal":
        new = j <= t
    elif pattern == "block":
        new = torch.ones(T, prefix_len + T, dtype=torch.bool, device=device)
    else:
        gq, oq = t // group, t % group
        gk, ok = j // group, j % group
        new = ((ok == 0) & (gk <= gq)) | ((oq > 0) & (ok > 0) & (gk == gq))
    return (j < 0) | new


# --------------------------------------------------------------------------------------------------
# Argument checks shared by both implementations
# --------------------------------------------------------------------------------------------------


def _check_qkv(q, k, v, prefix_len, pattern, group, dtypes, name):
    for n, x in (("q", q), ("k", k), ("v", v)):
        require(isinstance(x, torch.Tensor), f"{name}: {n} must be a torch.Tensor")
        require(x.dim() == 4, f"{name}: {n} must be 4-D ([B, H, len, D]), got shape {tuple(x.shape)}")
    require(q.dtype in dtypes, f"{name}: dtype must be one of {dtypes}, got {q.dtype}")
    require(k.dtype == q.dtype and v.dtype == q.dtype,
            f"{name}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    require(k.device == q.device and v.device == q.device,
            f"{name}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, T, D = q.shape
    require(k.shape == v.shape, f"{name}: k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    Bk, Hkv, L, Dk = k.shape
    require(Bk == B, f"{name}: batch of q ({B}) and k/v ({Bk}) differ")
    require(Dk == D, f"{name}: head_dim of q ({D}) and k/v ({Dk}) differ")
    require(T >= 1, f"{name}: q has no query tokens (T = 0)")
    require(Hkv >= 1 and Hq % Hkv == 0, f"{name}: Hq={Hq} is not a multiple of Hkv={Hkv}")
    require(L == prefix_len + T,
            f"{name}: k/v length {L} != prefix_len + T = {prefix_len} + {T}; k/v must hold the cached "
            "prefix followed by the new tokens' own keys")
    _check_pattern(T, prefix_len, pattern, group)
    return B, Hq, Hkv, T, L, D


# --------------------------------------------------------------------------------------------------
# Reference: dense SDPA (the CPU path of the engine, and the definition of correctness)
# --------------------------------------------------------------------------------------------------

_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def attention_reference(q, k, v, *, prefix_len: int, pattern: str, group: int = 0,
                        scale: float | None = None) -> torch.Tensor:
    """Dense torch SDPA with the mask of `attention_mask` (none for "block": everything is visible)."""
    _, Hq, Hkv, T, L, D = _check_qkv(q, k, v, prefix_len, pattern, group,
                                     (torch.float16, torch.bfloat16, torch.float32, torch.float64),
                                     "attention_reference")
    mask, is_causal = None, False
    # the additive form of the mask (what SDPA would turn a boolean mask into, per call)
    if pattern == "causal" and T > 1:
        if prefix_len == 0:
            is_causal = True  # square causal: SDPA's own (top-left aligned) mask is the rule
        else:
            mask = _cached_mask(T, prefix_len, pattern, group, q.device, q.dtype)
    elif pattern == "quadratic":
        mask = _cached_mask(T, prefix_len, pattern, group, q.device, q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if Hq != Hkv:
        if _HAS_ENABLE_GQA:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                  scale=scale, enable_gqa=True)
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


# --------------------------------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------------------------------


@triton.jit
def _visible_new(t, j, group, PATTERN: tl.constexpr):
    # The pattern's rule for new keys only (j >= 0); t is [BLOCK_M, 1], j is [1, BLOCK_N].
    if PATTERN == 0:
        vis = j <= t
    elif PATTERN == 1:
        vis = (j >= 0) & (t >= 0)
    else:
        gq = t // group
        oq = t % group
        gk = j // group
        ok = j % group
        vis = ((ok == 0) & (gk <= gq)) | ((oq > 0) & (ok > 0) & (gk == gq))
    return vis


@triton.jit
def _attn_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, t, tile_lo, tile_hi,
                P, L, group, qk_scale,
                MASKED: tl.constexpr, PATTERN: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for tile in range(tile_lo, tile_hi):
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
        if MASKED:
            in_range = offs_n < L
            k = tl.load(k_ptrs, mask=in_range[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            # Prefix keys (j < 0) are always visible; new keys follow the pattern's index rule.
            j = offs_n[None, :] - P
            vis = (j < 0) | _visible_new(t[:, None], j, group, PATTERN)
            qk = tl.where(vis & in_range[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:
            # A row may have seen no visible key yet (its max is still -inf): subtract 0 instead,
            # so that exp2(-inf - (-inf)) never produces NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_use = m_new
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, Out, Opart, Mpart, Lpart, Lens,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs,
    stride_ob, stride_oh, stride_ot,
    H_KV, T, P_arg, group, qk_scale, tiles_arg, n_splits,
    G: tl.constexpr, PATTERN: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DYN_LEN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV
    if DYN_LEN:
        # Cached form: the keys a row sees (prefix + new) come from a device tensor, so that one
        # launch (or one captured CUDA graph) serves every step; the split covers a share of them.
        L = tl.load(Lens + b).to(tl.int32)
        P = L - T
        tiles_per_split = tl.cdiv(tl.cdiv(L, BLOCK_N), n_splits)
    else:
        P = P_arg
        L = P_arg + T
        tiles_per_split = tiles_arg
    R = T * G

    # Row r of the tile is query token r // G of query head kvh * G + r % G (GQA packing).
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    t = rows // G
    head = kvh * G + rows % G
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b * stride_qb + head[:, None] * stride_qh + t[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)

    # Keys [0, k_all) are visible to every row of this tile; keys >= k_end to none of them.
    t_first = (pid_m * BLOCK_M) // G
    t_last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // G, T - 1)
    if PATTERN == 0:
        k_end = P + t_last + 1
        k_all = P + t_first + 1
    elif PATTERN == 1:
        k_end = L
        k_all = L
    else:
        k_end = P + tl.minimum(T, (t_last // group + 1) * group)
        k_all = P
    n_tiles = tl.cdiv(k_end, BLOCK_N)
    n_full = k_all // BLOCK_N
    lo = pid_s * tiles_per_split
    hi = tl.minimum(lo + tiles_per_split, n_tiles)
    mid = tl.maximum(lo, tl.minimum(hi, n_full))

    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, t, lo, mid,
                                P, L, group, qk_scale, False, PATTERN, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    acc, m_i, l_i = _attn_tiles(acc, m_i, l_i, q, k_base, v_base, stride_ks, stride_vs, t, mid, hi,
                                P, L, group, qk_scale, True, PATTERN, HEAD_DIM, BLOCK_N, DOT_PRECISION)

    if SPLIT:
        part = (pid_bh * n_splits + pid_s) * R + rows
        tl.store(Opart + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(Mpart + part, m_i, mask=row_ok)
        tl.store(Lpart + part, l_i, mask=row_ok)
    else:
        out = acc / tl.where(row_ok, l_i, 1.0)[:, None]  # padding rows would divide 0 by 0
        o_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + t[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_combine_kernel(
    Opart, Mpart, Lpart, Out,
    stride_ob, stride_oh, stride_ot,
    H_KV, T, n_splits,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H_KV
    kvh = pid_bh % H_KV
    R = T * G
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    offs_d = tl.arange(0, HEAD_DIM)

    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(0, n_splits):
        part = (pid_bh * n_splits + s) * R + rows
        m = tl.maximum(m, tl.load(Mpart + part, mask=row_ok, other=float("-inf")))
    m_use = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    l_sum = tl.zeros([BLOCK_R], tl.float32)
    for s in range(0, n_splits):
        part = (pid_bh * n_splits + s) * R + rows
        w = tl.math.exp2(tl.load(Mpart + part, mask=row_ok, other=float("-inf")) - m_use)
        l_sum += w * tl.load(Lpart + part, mask=row_ok, other=0.0)
        o = tl.load(Opart + part[:, None] * HEAD_DIM + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        acc += w[:, None] * o
    out = acc / tl.where(row_ok, l_sum, 1.0)[:, None]
    t = rows // G
    head = kvh * G + rows % G
    o_ptrs = Out + b * stride_ob + head[:, None] * stride_oh + t[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


_SM_COUNT: dict = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 8
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def attention_triton(q, k, v, *, prefix_len: int, pattern: str, group: int = 0,
                     scale: float | None = None, out: torch.Tensor | None = None,
                     num_splits: int | None = None, block_m: int | None = None,
                     block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None) -> torch.Tensor:
    """Launch the Triton kernel. `out` (optional) receives the result; the tile sizes and the number
    of key splits can be forced (tests, benchmarks); by default they are chosen from the shape."""
    B, Hq, Hkv, T, L, D = _check_qkv(q, k, v, prefix_len, pattern, group,
                                     (torch.float16, torch.bfloat16, torch.float32), "attention_triton")
    require(D in (16, 32, 64, 128), f"attention_triton: head_dim must be 16, 32, 64 or 128, got {D}")
    for n, x in (("q", q), ("k", k), ("v", v)):
        require(x.stride(-1) == 1, f"attention_triton: {n} must be contiguous in its last dim "
                                   f"(strides {tuple(x.stride())})")
    require_triton_device(_attn_fwd_kernel, "attention", q, k, v)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    else:
        require(out.shape == q.shape, f"attention_triton: out shape {tuple(out.shape)} != q shape {tuple(q.shape)}")
        require(out.dtype == q.dtype, f"attention_triton: out dtype {out.dtype} != q dtype {q.dtype}")
        require(out.device == q.device, f"attention_triton: out is on {out.device}, q on {q.device}")
        require(out.stride(-1) == 1, "attention_triton: out must be contiguous in its last dim")
    if scale is None:
        scale = 1.0 / math.sqrt(D)

    G = Hq // Hkv
    R = T * G
    interp = interpreted(_attn_fwd_kernel)
    # Tile defaults (H100/H200 oriented; see scripts/gpu_check.py for a sweep). fp32 operands use
    # exact (ieee) dots, which need far more registers: small tiles there. The interpreter gets
    # small tiles so that CPU tests stay fast and cover several tiles.
    fp32 = q.dtype == torch.float32
    if block_m is None:
        block_m = 16 if interp else min(32 if fp32 else 128, max(16, next_pow2(R)))
    if block_n is None:
        block_n = 16 if interp else (32 if fp32 else 64)
    require(block_m >= 16 and block_n >= 16 and block_m == next_pow2(block_m) and block_n == next_pow2(block_n),
            f"attention_triton: block sizes must be powers of two >= 16, got {block_m}, {block_n}")
    if num_warps is None:
        num_warps = 8 if (block_m >= 128 or fp32) else 4
    if num_stages is None:
        num_stages = 3 if block_m <= 32 else 2
    n_m = triton.cdiv(R, block_m)
    max_tiles = triton.cdiv(L, block_n)
    if num_splits is None:
        programs = n_m * B * Hkv
        sms = _sm_count(q.device)
        num_splits = 1 if programs >= sms else min(triton.cdiv(2 * sms, programs), triton.cdiv(max_tiles, 4))
    require(num_splits >= 1, f"attention_triton: num_splits must be >= 1, got {num_splits}")
    tiles_per_split = triton.cdiv(max_tiles, num_splits)
    num_splits = triton.cdiv(max_tiles, tiles_per_split)

    split = num_splits > 1
    if split:
        opart = torch.empty((B * Hkv, num_splits, R, D), device=q.device, dtype=torch.float32)
        mpart = torch.empty((B * Hkv, num_splits, R), device=q.device, dtype=torch.float32)
        lpart = torch.empty_like(mpart)
    else:
        opart = mpart = lpart = out  # unused
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _attn_fwd_kernel[(n_m, B * Hkv, num_splits)](
        q, k, v, out, opart, mpart, lpart, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        Hkv, T, prefix_len, max(int(group), 1), scale * _LOG2E, tiles_per_split, num_splits,
        G=G, PATTERN=_PATTERN_ID[pattern], HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
        SPLIT=split, DOT_PRECISION=precision, DYN_LEN=False, num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _combine_splits(opart, mpart, lpart, out, R, B, Hkv, T, num_splits, G, D, interp)
    return out


def _combine_splits(opart, mpart, lpart, out, R, B, Hkv, T, num_splits, G, D, interp) -> None:
    """Merge the per-split partial outputs (split-K over the keys) into `out`."""
    block_r = 16 if interp else 32
    _attn_combine_kernel[(triton.cdiv(R, block_r), B * Hkv)](
        opart, mpart, lpart, out,
        out.stride(0), out.stride(1), out.stride(2),
        Hkv, T, num_splits,
        G=G, HEAD_DIM=D, BLOCK_R=block_r, num_warps=4,
    )


# --------------------------------------------------------------------------------------------------
# Cached form: lengths on the device (CUDA-graph steps)
# --------------------------------------------------------------------------------------------------

# Launch settings for the cached form, per shape class (see scripts/gpu_check.py's sweep): the decode
# shapes (R = T * G rows <= 64) take one row tile and split the keys so that about two programs run
# per SM; a wide step (the quadratic one) splits only when its row tiles leave the GPU idle.
DECODE_BLOCK_N = 64
DECODE_WAVES = 2


def _check_cached(q, k_cache, v_cache, lengths, pattern, group, name):
    for n, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        require(isinstance(x, torch.Tensor) and x.dim() == 4, f"{name}: {n} must be a 4-D tensor ([B, H, len, D])")
    require(isinstance(lengths, torch.Tensor) and lengths.dim() == 1 and not lengths.dtype.is_floating_point,
            f"{name}: lengths must be a 1-D integer tensor [B] (keys each row sees: prefix + new tokens)")
    B, Hq, T, D = q.shape
    require(k_cache.shape == v_cache.shape, f"{name}: k_cache and v_cache shapes differ")
    Bk, Hkv, S, Dk = k_cache.shape
    require(Bk == B and Dk == D and lengths.shape[0] == B,
            f"{name}: batch/head_dim mismatch: q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, "
            f"lengths {tuple(lengths.shape)}")
    require(Hkv >= 1 and Hq % Hkv == 0, f"{name}: Hq={Hq} is not a multiple of Hkv={Hkv}")
    require(1 <= T <= S, f"{name}: T={T} new tokens do not fit a cache of {S} slots")
    require(q.dtype == k_cache.dtype == v_cache.dtype, f"{name}: q, k_cache, v_cache must share one dtype")
    _check_pattern(T, 0, pattern, group)
    return B, Hq, Hkv, T, S, D


def attention_cached_reference(q, k_cache, v_cache, lengths, *, pattern: str, group: int = 0,
                               scale: float | None = None) -> torch.Tensor:
    """`attention_cached` by definition: row b is `attention_reference` over the first lengths[b]
    slots of its cache (reads the lengths on the host: a test reference, not a graph step)."""
    _check_cached(q, k_cache, v_cache, lengths, pattern, group, "attention_cached_reference")
    T = q.shape[2]
    outs = []
    for b, n in enumerate(lengths.tolist()):
        require(T <= n <= k_cache.shape[2], f"attention_cached_reference: lengths[{b}]={n} outside [{T}, {k_cache.shape[2]}]")
        outs.append(attention_reference(q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n],
                                        prefix_len=n - T, pattern=pattern, group=group, scale=scale))
    return torch.cat(outs)


def attention_cached(q, k_cache, v_cache, lengths, *, pattern: str, group: int = 0, scale: float | None = None,
                     out: torch.Tensor | None = None, num_splits: int | None = None, block_m: int | None = None,
                     block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, T, D] over a whole cache k_cache, v_cache [B, Hkv, S, D] (slots beyond
    each row's length are ignored) where row b's new tokens sit at slots [lengths[b] - T, lengths[b]).

    The lengths stay on the device and the launch grid depends only on shapes (S, not the lengths),
    so a step that calls this can be captured once as a CUDA graph and replayed at every length.
    The key range splits into `num_splits` shares computed in the kernel from the length
    (flash-decoding); the same kernel as `attention_triton` otherwise (mask rule, GQA packing)."""
    B, Hq, Hkv, T, S, D = _check_cached(q, k_cache, v_cache, lengths, pattern, group, "attention_cached")
    require(q.dtype in (torch.float16, torch.bfloat16, torch.float32),
            f"attention_cached: dtype must be fp16, bf16 or fp32, got {q.dtype}")
    require(D in (16, 32, 64, 128), f"attention_cached: head_dim must be 16, 32, 64 or 128, got {D}")
    for n, x in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        require(x.stride(-1) == 1, f"attention_cached: {n} must be contiguous in its last dim")
    require_triton_device(_attn_fwd_kernel, "attention_cached", q, k_cache, v_cache, lengths)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    G = Hq // Hkv
    R = T * G
    interp = interpreted(_attn_fwd_kernel)
    fp32 = q.dtype == torch.float32
    if block_m is None:
        block_m = 16 if interp else min(32 if fp32 else 128, max(16, next_pow2(R)))
    if block_n is None:
        block_n = 16 if interp else (32 if fp32 else DECODE_BLOCK_N)
    if num_warps is None:
        num_warps = 8 if (block_m >= 128 or fp32) else 4
    if num_stages is None:
        num_stages = 3 if block_m <= 32 else 2
    n_m = triton.cdiv(R, block_m)
    max_tiles = triton.cdiv(S, block_n)
    if num_splits is None:
        programs = n_m * B * Hkv
        sms = _sm_count(q.device)
        num_splits = 1 if programs >= sms else min(triton.cdiv(DECODE_WAVES * sms, programs), max(1, max_tiles // 2))
    require(num_splits >= 1, f"attention_cached: num_splits must be >= 1, got {num_splits}")
    split = num_splits > 1
    if split:
        opart = torch.empty((B * Hkv, num_splits, R, D), device=q.device, dtype=torch.float32)
        mpart = torch.empty((B * Hkv, num_splits, R), device=q.device, dtype=torch.float32)
        lpart = torch.empty_like(mpart)
    else:
        opart = mpart = lpart = out
    _attn_fwd_kernel[(n_m, B * Hkv, num_splits)](
        q, k_cache, v_cache, out, opart, mpart, lpart, lengths,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        Hkv, T, 0, max(int(group), 1), scale * _LOG2E, 0, num_splits,
        G=G, PATTERN=_PATTERN_ID[pattern], HEAD_DIM=D, BLOCK_M=block_m, BLOCK_N=block_n,
        SPLIT=split, DOT_PRECISION="ieee" if fp32 else "tf32", DYN_LEN=True,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _combine_splits(opart, mpart, lpart, out, R, B, Hkv, T, num_splits, G, D, interp)
    return out


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def attention(q, k, v, *, prefix_len: int, pattern: str, group: int = 0, impl: str = "reference",
              scale: float | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, T, D] over k, v [B, Hkv, prefix_len + T, D] under `pattern`.

    impl="reference": dense torch SDPA (any device); impl="triton": the Triton kernel (CUDA, or CPU
    under TRITON_INTERPRET=1). Returns [B, Hq, T, D] in q's dtype; softmax accumulates in fp32.
    """
    check_impl(impl)
    if impl == "triton":
        return attention_triton(q, k, v, prefix_len=prefix_len, pattern=pattern, group=group, scale=scale)
    return attention_reference(q, k, v, prefix_len=prefix_len, pattern=pattern, group=group, scale=scale)
