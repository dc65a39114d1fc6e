"""Helpers shared by the three kernel modules: the `impl` switch and the launchers' input checks.

Whether Triton kernels run compiled (CUDA) or under Triton's CPU interpreter is fixed when the
kernels are defined, i.e. when `triton_kernels` is first imported: TRITON_INTERPRET=1 must be in the
environment by then. `interpreted(kernel)` reads the answer off the kernel object itself, so it stays
right even if the variable is changed later.
"""

from __future__ import annotations

import torch

IMPLS = ("triton", "reference")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def interpreted(kernel) -> bool:
    """True when `kernel` (a @triton.jit function) was defined under TRITON_INTERPRET=1."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return type(kernel).__name__ == "InterpretedFunction"
    return isinstance(kernel, InterpretedFunction)


def require(cond: bool, msg: str) -> None:
    """The launchers' assertion: a ValueError with a message that names the bad argument."""
    if not cond:
        raise ValueError(msg)


def require_triton_device(kernel, name: str, *tensors: torch.Tensor) -> None:
    """Compiled kernels need CUDA tensors; the interpreter runs on CPU tensors."""
    devices = {t.device for t in tensors}
    require(len(devices) == 1, f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    dev = next(iter(devices))
    if dev.type == "cuda" or interpreted(kernel):
        return
    raise RuntimeError(
        f"{name}(impl='triton') got tensors on {dev}: the Triton kernels need CUDA tensors, or "
        "TRITON_INTERPRET=1 set in the environment before `triton_kernels` is first imported "
        "(CPU interpreter, for tests). Use impl='reference' on CPU."
    )


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


MAX_VOCAB_CHUNKS = 128


def vocab_split(B: int, T: int, V: int, device: torch.device, interp: bool, num_chunks: int | None):
    """Tiling of the verify/unmask kernels: [BLOCK_T x BLOCK_V] tiles, the vocabulary cut into
    `n_chunks` chunks of `tiles_per_chunk` tiles (one program each, so that a batch of one row still
    spreads over the GPU), and BLOCK_C >= n_chunks for the final merge of the per-chunk partials."""
    block_t = max(2, next_pow2(T))
    budget = 1024 if interp else 8192  # elements of one tile
    block_v = max(16, min(next_pow2(V), budget // block_t))
    n_tiles = -(-V // block_v)
    if num_chunks is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        num_chunks = max(1, -(-sms // B))
    num_chunks = max(1, min(int(num_chunks), n_tiles, MAX_VOCAB_CHUNKS, max(1, 8192 // block_t)))
    tiles_per_chunk = -(-n_tiles // num_chunks)
    n_chunks = -(-n_tiles // tiles_per_chunk)
    return block_t, block_v, n_chunks, tiles_per_chunk, max(2, next_pow2(n_chunks))
