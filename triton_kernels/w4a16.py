"""w4a16 matmul: y = x @ dequant(W).T with 4-bit weights and 16-bit (or fp32) activations.

Operands (the layout of a 4-bit checkpoint, engine/quant.py):
  x        [M, K] float16 / bfloat16 / float32, rows contiguous
  qweight  [N, K/2] uint8: two 4-bit codes per byte, column 2j in the low nibble, 2j+1 in the high one
  scales   [N, K/G] float (any float dtype; used in fp32)
  zeros    [N, K/G] uint8 codes in 0..15
  W[n, k] = (code[n, k] - zeros[n, k // G]) * scales[n, k // G]     (G = group_size)
The result is [M, N] in x's dtype, accumulated in fp32.

The Triton kernel tiles [BLOCK_M x BLOCK_N] outputs and walks K in BLOCK_K steps; each step loads
the packed bytes of its [BLOCK_K x BLOCK_N] weight tile (each byte serves two k), picks the nibble
by k's parity, dequantizes with the group's scale and zero (BLOCK_K divides G, so one group per
step) and feeds tl.dot in x's dtype with an fp32 accumulator. The weight bytes are read once per
BLOCK_M rows: at decode (1..32 rows) one M tile covers every row, so each weight byte is read once,
which is the whole point at batch 1. fp32 inputs use IEEE dot products (tests, the interpreter).
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
                  PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)          # K % BLOCK_K == 0 (the launcher checks)
        x = tl.load(X + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        # [BLOCK_K, BLOCK_N] weight tile: byte k//2 of row n holds columns k and k^1.
        b = tl.load(W + offs_n[None, :] * stride_wn + (offs_k // 2)[:, None], mask=n_ok[None, :], other=0)
        code = (b.to(tl.int32) >> ((offs_k % 2) * 4)[:, None]) & 0xF
        g = k0 // group_size
        s = tl.load(S + offs_n * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)
        z = tl.load(Z + offs_n * stride_zn + g, mask=n_ok, other=0).to(tl.float32)
        w = ((code.to(tl.float32) - z[None, :]) * s[None, :]).to(x.dtype)
        acc += tl.dot(x, w, input_precision=PRECISION)
    tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def _tiles(M: int, N: int, group_size: int):
    """Tile shape by row count: decode (<= 32 rows) one M tile and narrow N tiles so that a single row
    still spreads over the GPU; prefill 64-row tiles."""
    block_m = max(16, min(64, next_pow2(M)))
    block_n = 32 if M <= 32 else 64
    block_k = min(64, group_size)
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
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _w4a16_kernel[grid](x, qweight, scales, zeros, out, M, N, K, x.stride(0), qweight.stride(0),
                        scales.stride(0), zeros.stride(0), out.stride(0), group_size,
                        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", num_warps=4)
    return out


def w4a16_matmul(x, qweight, scales, zeros, group_size: int, *, impl: str = "reference"):
    """x [M, K] @ dequant(qweight, scales, zeros).T -> [M, N] in x's dtype; see the module doc."""
    check_impl(impl)
    if impl == "triton":
        return w4a16_matmul_triton(x, qweight, scales, zeros, group_size)
    return w4a16_matmul_reference(x, qweight, scales, zeros, group_size)
