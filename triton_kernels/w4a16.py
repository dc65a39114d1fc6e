"""w4a16 matmul: y = x @ dequant(W).T with 4-bit weights and 16-bit (or fp32) activations.

Operands (the layout of a 4-bit checkpoint, engine/quant.py):
  x        [M, K] float16 / bfloat16 / float32, rows contiguous
  qweight  [N, K/2] uint8: two 4-bit codes per byte, column 2j in the low nibble, 2j+1 in the high one
  scales   [N, K/G] float (any float dtype; used in fp32)
  zeros    [N, K/G] uint8 codes in 0..15
  W[n, k] = (code[n, k] - zeros[n, k // G]) * scales[n, k // G]     (G = group_size)
The result is [M, N] in x's dtype, accumulated in fp32.

The Triton kernel tiles [BLOCK_M x BLOCK_N] outputs and walks K in BLOCK_K steps; each step loads
the packed tile [BLOCK_K/2 x BLOCK_N] (every byte once), splits each byte into its two codes in
registers (low nibble: even column, high: odd), dequantizes both halves with their group's scale and
zero (one group per step when BLOCK_K divides G; per byte row for groups of 16) and multiplies them by
the even and odd columns of x (two tl.dot, fp32 accumulator): reordering the small activation tile
instead of interleaving the codes back. The weight bytes are read once per BLOCK_M rows: at decode
(1..32 rows) one M tile covers every row, so each weight byte is read once, which is the whole point
at batch 1. fp32 inputs use IEEE dot products (tests, the interpreter). x's rows may be strided
(stride(1) == 1 is all it needs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_impl, next_pow2, require, require_triton_device

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """[N, K/2] uint8 -> [N, K] uint8 codes in 0..15 (low nibble first)."""
    lo = qweight & 0xF
    hi = qweight >> 4
    return torch.stack((lo, hi), dim=-1).reshape(qweight.shape[0], -1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] integer codes in 0..15 (K even) -> [N, K/2] uint8, the inverse of unpack_int4."""
    c = codes.to(torch.uint8)
    return c[:, 0::2] | (c[:, 1::2] << 4)


def dequantize_int4(qweight, scales, zeros, group_size: int) -> torch.Tensor:
    """The weight [N, K] in fp32."""
    codes = unpack_int4(qweight).float()
    s = scales.float().repeat_interleave(group_size, dim=1)
    z = zeros.float().repeat_interleave(group_size, dim=1)
    return (codes - z) * s


def _check(x, qweight, scales, zeros, group_size, name, floats=_FLOATS + (torch.float64,)):
    require(isinstance(x, torch.Tensor) and x.dim() == 2, f"{name}: x must be a [M, K] tensor")
    require(x.dtype in floats, f"{name}: x dtype must be one of {floats}, got {x.dtype}")
    require(qweight.dim() == 2 and qweight.dtype == torch.uint8,
            f"{name}: qweight must be a [N, K/2] uint8 tensor, got {qweight.dtype} {list(qweight.shape)}")
    M, K = x.shape
    N = qweight.shape[0]
    require(qweight.shape[1] * 2 == K, f"{name}: qweight {list(qweight.shape)} does not hold K={K} columns")
    require(group_size > 0 and K % group_size == 0, f"{name}: group_size {group_size} must divide K={K}")
    shape = (N, K // group_size)
    require(tuple(scales.shape) == shape and scales.is_floating_point(),
            f"{name}: scales must be a float {list(shape)} tensor, got {scales.dtype} {list(scales.shape)}")
    require(tuple(zeros.shape) == shape and zeros.dtype == torch.uint8,
            f"{name}: zeros must be a uint8 {list(shape)} tensor, got {zeros.dtype} {list(zeros.shape)}")
    devices = {t.device for t in (x, qweight, scales, zeros)}
    require(len(devices) == 1, f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    return M, N, K


def w4a16_matmul_reference(x, qweight, scales, zeros, group_size: int):
    _check(x, qweight, scales, zeros, group_size, "w4a16_matmul_reference")
    w = dequantize_int4(qweight, scales, zeros, group_size)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (x.to(acc) @ w.to(acc).T).to(x.dtype)


@triton.jit
def _w4a16_kernel(X, W, S, Z, Y, M, N, K, stride_xm, stride_wn, stride_sn, stride_zn, stride_ym, group_size,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  ONE_GROUP: tl.constexpr, PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_K // 2)              # byte j of the step holds columns 2j and 2j + 1
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):                  # K % BLOCK_K == 0 (the launcher checks)
        j = k0 // 2 + offs_j
        # the packed tile [BLOCK_K/2, BLOCK_N]: every weight byte is loaded once, its two codes are
        # taken apart in registers; the activations are read as their even and odd columns instead
        # of interleaving the codes back
        b = tl.load(W + offs_n[None, :] * stride_wn + j[:, None], mask=n_ok[None, :], other=0).to(tl.int32)
        lo = (b & 0xF).to(tl.float32)
        hi = (b >> 4).to(tl.float32)
        x_row = X + offs_m[:, None] * stride_xm
        x_even = tl.load(x_row + (2 * j)[None, :], mask=m_ok[:, None], other=0.0)
        x_odd = tl.load(x_row + (2 * j + 1)[None, :], mask=m_ok[:, None], other=0.0)
        if ONE_GROUP:                                # BLOCK_K divides the group: one scale/zero per column
            g = k0 // group_size
            s = tl.load(S + offs_n * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            z = tl.load(Z + offs_n * stride_zn + g, mask=n_ok, other=0).to(tl.float32)[None, :]
            w_even = ((lo - z) * s).to(x_even.dtype)
            w_odd = ((hi - z) * s).to(x_even.dtype)
        else:                                        # several groups per step (groups of 16): per byte row
            g = (2 * j) // group_size                # columns 2j and 2j + 1 share a group (G is even)
            sz = offs_n[None, :] * stride_sn + g[:, None]
            s = tl.load(S + sz, mask=n_ok[None, :], other=0.0).to(tl.float32)
            z = tl.load(Z + offs_n[None, :] * stride_zn + g[:, None], mask=n_ok[None, :], other=0).to(tl.float32)
            w_even = ((lo - z) * s).to(x_even.dtype)
            w_odd = ((hi - z) * s).to(x_even.dtype)
        acc += tl.dot(x_even, w_even, input_precision=PRECISION)
        acc += tl.dot(x_odd, w_odd, input_precision=PRECISION)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _tiles(M: int, N: int, group_size: int):
    """Tile shape by row count: decode (<= 32 rows) one M tile and narrow N tiles so that a single row
    still spreads over the GPU; prefill 64-row tiles. A step covers 64 columns of K (32 bytes a row:
    tl.dot needs an inner size of 16 for each of the even and odd halves), one group or several."""
    block_m = max(16, min(64, next_pow2(M)))
    block_n = 32 if M <= 32 else 64
    block_k = 64 if group_size >= 64 else 32
    return block_m, block_n, block_k


def w4a16_matmul_triton(x, qweight, scales, zeros, group_size: int, out=None):
    M, N, K = _check(x, qweight, scales, zeros, group_size, "w4a16_matmul_triton", _FLOATS)
    require(x.stride(1) == 1 and qweight.stride(1) == 1, "w4a16_matmul_triton: x and qweight need contiguous rows")
    require(scales.stride(1) == 1 and zeros.stride(1) == 1, "w4a16_matmul_triton: scales/zeros need contiguous rows")
    require(group_size >= 16 and group_size & (group_size - 1) == 0,
            f"w4a16_matmul_triton: group_size must be a power of two >= 16, got {group_size}")
    require_triton_device(_w4a16_kernel, "w4a16_matmul", x, qweight, scales, zeros)
    if out is None:
        out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    require(tuple(out.shape) == (M, N) and out.dtype == x.dtype and out.stride(1) == 1,
            f"w4a16_matmul_triton: out must be a {x.dtype} [{M}, {N}] tensor with contiguous rows")
    block_m, block_n, block_k = _tiles(M, N, group_size)
    require(K % block_k == 0, f"w4a16_matmul_triton: K={K} must be a multiple of {block_k}")
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _w4a16_kernel[grid](x, qweight, scales, zeros, out, M, N, K, x.stride(0), qweight.stride(0),
                        scales.stride(0), zeros.stride(0), out.stride(0), group_size,
                        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, ONE_GROUP=group_size >= block_k,
                        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=4)
    return out


def w4a16_matmul(x, qweight, scales, zeros, group_size: int, *, impl: str = "reference"):
    """x [M, K] @ dequant(qweight, scales, zeros).T -> [M, N] in x's dtype; see the module doc."""
    check_impl(impl)
    if impl == "triton":
        return w4a16_matmul_triton(x, qweight, scales, zeros, group_size)
    return w4a16_matmul_reference(x, qweight, scales, zeros, group_size)
