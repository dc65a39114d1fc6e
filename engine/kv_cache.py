"""The KV cache: preallocated per-layer key/value buffers plus the ids of the tokens they hold.

Cache rules (DESIGN.md §2):
- an appending pass (prefill, AR step, verify, diffusion commit) writes its K/V at
  [length, length+T) and advances `length`;
- a read-only pass (diffusion step, draft) writes its K/V into the same slots as scratch, so that its
  own queries can attend to them, but leaves `length` where it was: the next pass overwrites them;
- `crop(n)` forgets everything after the first n tokens (rejected drafts, prefix reuse).
`token_ids` mirrors what the committed slots hold, so a later prompt can reuse the common prefix.
Batch 1 is what the decoders use; the buffers carry a batch dimension for the kernels' benefit.
"""
from __future__ import annotations

import torch


class CacheFullError(RuntimeError):
    pass


class TokenLedger:
    """Which tokens a cache holds, whatever holds their K/V: `length` committed slots and their ids.
    The decoders reserve, commit and crop through it; KVCache adds torch buffers, and
    engine/llama_runner.py's LlamaCache a llama.cpp sequence."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.token_ids: list[int] = []

    def reserve(self, n_new: int) -> None:
        if self.length + n_new > self.max_len:
            raise CacheFullError(f"KV cache holds {self.max_len} tokens; {self.length} used, {n_new} more requested")

    def commit(self, token_ids: list[int]) -> None:
        self.length += len(token_ids)
        self.token_ids.extend(token_ids)

    def crop(self, n: int) -> None:
        assert 0 <= n <= self.length, (n, self.length)
        self.length = n
        del self.token_ids[n:]

    def common_prefix(self, ids: list[int]) -> int:
        n = 0
        for a, b in zip(self.token_ids, ids):
            if a != b:
                break
            n += 1
        return n


class KVCache(TokenLedger):
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_len: int, *,
                 batch: int = 1, device=None, dtype=torch.float32):
        super().__init__(max_len)
        # One buffer [layer, k|v, batch, kv head, slot, dim]: a forward writes a layer's new K and V
        # with one copy (model.py); k and v are views of it.
        self.kv = torch.zeros((n_layers, 2, batch, n_kv_heads, max_len, head_dim), device=device, dtype=dtype)
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]

    def move(self, src: torch.Tensor, dst_start: int) -> None:
        """Copy the K/V at absolute slots `src` (ascending, all >= dst_start) to dst_start.. in order."""
        n = src.numel()
        self.kv[..., dst_start:dst_start + n, :] = self.kv[..., src, :]
