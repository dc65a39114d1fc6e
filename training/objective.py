"""The joint AR + masked-diffusion training objective (DESIGN.md §4), on token ids.

One sequence of 2L tokens, [x_t || x_0], both halves at positions 0..L-1:
  x_0  the clean tokens, plain causal among themselves, never seeing x_t: next-token loss (AR);
  x_t  the same tokens, each masked with probability p = (1-eps)*t + eps, t ~ U(0,1) per sequence;
       a noisy token sees its own block bidirectionally and the clean tokens of strictly earlier
       blocks: at a masked position the logit predicts the clean token itself (diffusion loss, 1/p
       weighted).
One deviation from the published recipe: the first token of every block is never masked. At
inference a diffusion block or a draft always opens with a known seed token, so the model is trained
on exactly that situation and never wastes capacity guessing a token the AR pass already gives.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-3


def training_mask(L: int, block: int, device=None) -> torch.Tensor:
    """[2L, 2L] bool, True = query row may attend to key column. Rows/cols 0..L-1 noisy, L..2L-1 clean."""
    i = torch.arange(L, device=device)
    blk = i // block
    noisy_noisy = blk[:, None] == blk[None, :]
    noisy_clean = blk[None, :] < blk[:, None]
    clean_clean = i[None, :] <= i[:, None]
    top = torch.cat([noisy_noisy, noisy_clean], dim=1)
    bottom = torch.cat([torch.zeros_like(clean_clean), clean_clean], dim=1)
    return torch.cat([top, bottom], dim=0)


def noise(x0: torch.Tensor, mask_id: int, block: int, generator: torch.Generator | None = None,
          p_fixed: float | None = None):
    """x_t, the boolean mask of masked positions, and p per sequence (p_fixed: the same p for all)."""
    B, L = x0.shape
    if p_fixed is None:
        t = torch.rand(B, 1, device=x0.device, generator=generator)
        p = (1 - EPS) * t + EPS
    else:
        p = torch.full((B, 1), p_fixed, device=x0.device)
    masked = torch.rand(B, L, device=x0.device, generator=generator) < p
    masked[:, ::block] = False  # block openers stay clean (see module docstring)
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    return xt, masked, p


def loss(model, x0: torch.Tensor, *, mask_id: int, block: int, w_dlm: float = 0.3, w_ar: float = 1.0,
         attn_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
         drafter: bool = False):
    """Returns (total loss, {"ar": ..., "dlm": ...}) for a batch of clean sequences x0 [B, L].

    drafter=True trains the o_proj LoRA for self-speculative drafts: the LoRA acts on the noisy rows
    only (the clean rows stand for the verify passes that fill the cache, LoRA off), and every
    non-opener token of a block is masked, which is exactly what a draft pass sees.
    """
    B, L = x0.shape
    xt, masked, p = noise(x0, mask_id, block, generator, p_fixed=1.0 if drafter else None)
    if attn_mask is None:
        attn_mask = training_mask(L, block, x0.device)
    pos = torch.arange(L, device=x0.device).repeat(2)
    lora_rows = (torch.arange(2 * L, device=x0.device) < L) if drafter else False
    h = model.hidden_masked(torch.cat([xt, x0], dim=1), pos, attn_mask, lora=lora_rows)
    # AR: clean position i predicts x0[i+1] (skipped when it has no weight: the drafter's case)
    if w_ar:
        ar_logits = model.head(h[:, L:-1])
        ar = F.cross_entropy(ar_logits.flatten(0, 1).float(), x0[:, 1:].flatten())
    else:
        ar = h.new_zeros((), dtype=torch.float32)
    # diffusion: the head only on masked rows; each weighted 1/p, normalised by the token count
    rows = masked.nonzero(as_tuple=True)
    dlm_logits = model.head(h[:, :L][rows])
    ce = F.cross_entropy(dlm_logits.float(), x0[rows], reduction="none")
    dlm = (ce / p.expand(B, L)[rows]).sum() / (B * L)
    return w_dlm * dlm + w_ar * ar, {"ar": ar.detach(), "dlm": dlm.detach(),
                                     "dlm_ce": ce.mean().detach() if ce.numel() else ce.sum().detach()}
