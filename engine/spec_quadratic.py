"""Quadratic self-speculation (TiDAR-style): draft and verify fused into one forward per step.

Step input, for block size B and seed s = d_0 with drafts d_1..d_(B-1) from the previous step:
    B groups [d_i, M x B], i = 0..B-1, T = B*(B+1) query tokens.
    d_i sits at position L+i and attends causally to the prefix and d_0..d_i: its logit is a[i], the
    AR prediction for position L+i+1 (so the d's verify exactly as in the linear variant).
    The masks of group i sit at positions L+i+1 .. L+i+B and see the prefix, d_0..d_i and each other:
    a diffusion pre-draft of the block that follows if d_0..d_i are accepted.
Accept the longest c with a[i-1] == d_i (1 <= i <= c); emit d_1..d_c and the bonus a[c]. Keep only
the K/V of d_0..d_c (moved down to contiguous slots); the bonus is the next seed, and the pre-draft of
group c, masks 2..B (mask 1 guessed the bonus position, which AR has now fixed), the next drafts.
The first step has no drafts yet: its d_1.. are masks, so it accepts nothing and yields the bonus and
the first pre-draft. Greedy output equals AR token for token.
With `lookup`, drafts found in the context (lookup.py) take the place of the pre-draft.
"""
from __future__ import annotations

import torch

from engine.kv_cache import KVCache


def decode_quadratic(run, cache: KVCache, seed: int, block: int):
    M, W = run.mask_id, block + 1
    drafts = [M] * (block - 1)
    while not run.done:
        n = min(block, run.remaining + 1)
        found = run.context_draft() if n > 1 else []
        if found:
            drafts = found + drafts[len(found):]
            n = max(n, 1 + len(found))     # a longer context draft gets as many groups
        ds = [seed] + drafts[:n - 1]
        ids, positions = [], []
        L = cache.length
        for i, d in enumerate(ds):
            ids += [d] + [M] * block
            positions += [L + i] + list(range(L + i + 1, L + i + 1 + block))
        if run.interrupted():
            return
        # the drafter LoRA acts on the mask rows only; the d rows are the verifier (LoRA off)
        draft_rows = tuple(i % W != 0 for i in range(len(ids)))
        logits = yield from run.forward(ids, cache, pattern="quadratic", group=W, write=False, lora=draft_rows,
                                        positions=tuple(positions))
        c, seed = run.verify(ds, logits[0::W])  # the d rows hold a[0..n-1]
        cache.move(torch.arange(c + 1, device=run.device) * W + L, L)
        cache.commit(ds[:c + 1])
        drafts = logits[c * W + 2:(c + 1) * W].argmax(-1).tolist()
        run.result.accept_lengths.append(c + 1)
        if run.push(ds[1:1 + c] + [seed]):
            return
