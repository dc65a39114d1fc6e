"""Naive reference decoders: no KV cache, the whole sequence recomputed with an explicit mask each step.

Slow and obviously right; they exist to check generate.py (greedy only). The masks are built here from
the rules in DESIGN.md §3, independently of the kernels.
"""
from __future__ import annotations

import torch

from engine.generate import DEFAULT_THRESHOLD, DecodeParams, default_block_size
from engine.model import NLDModel


def _mask(prefix: int, new: int, pattern: str) -> torch.Tensor:
    """[P+T, P+T]: the prefix is causal; the new tokens are causal or see each other (block)."""
    n = prefix + new
    m = torch.ones(n, n, dtype=torch.bool).tril()
    if pattern == "block":
        m[prefix:, prefix:] = True
    return m


def _logits(model: NLDModel, ids: list[int], prefix: int, pattern: str, lora: bool = False) -> torch.Tensor:
    x = torch.tensor([ids], device=model.head.weight.device)
    pos = torch.arange(len(ids), device=x.device)
    mask = _mask(prefix, len(ids) - prefix, pattern).to(x.device)
    # the LoRA acts on the new rows only: the prefix stands for the cache, which LoRA-off passes wrote
    rows = pos >= prefix if lora else False
    logits = model.forward_masked(x, pos, mask, lora=rows)[0].clone()
    if model.cfg.mask_token_id is not None:
        logits[:, model.cfg.mask_token_id] = float("-inf")
    return logits


@torch.inference_mode()
def naive_generate(model: NLDModel, prompt_ids: list[int], params: DecodeParams) -> list[int]:
    assert params.temperature == 0, "the reference decoders are greedy"
    eos, M = {model.cfg.eos_token_id, *params.stop_token_ids}, model.cfg.mask_token_id
    B = params.block_size or default_block_size(model)
    seq, out = list(prompt_ids), []

    def emit(tokens) -> bool:
        for t in tokens:
            if t in eos or len(out) >= params.max_new_tokens:
                return True
            out.append(t)
        return len(out) >= params.max_new_tokens

    if params.max_new_tokens == 0:
        return out
    seed = int(_logits(model, seq, len(seq), "causal")[-1].argmax())
    if emit([seed]):
        return out
    while True:
        remaining = params.max_new_tokens - len(out)
        if params.mode == "ar":
            seq.append(seed)
            seed = int(_logits(model, seq, len(seq), "causal")[-1].argmax())
            if emit([seed]):
                return out
        elif params.mode == "diffusion":
            thr = params.threshold if params.threshold is not None else DEFAULT_THRESHOLD
            blk = [seed] + [M] * min(B - 1, remaining)
            while M in blk:
                probs = torch.softmax(_logits(model, seq + blk, len(seq), "block",
                                              lora=model.cfg.denoise_with_lora)[-len(blk):].double(), -1)
                conf, cand = probs.max(-1)
                masked = torch.tensor([t == M for t in blk])
                conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
                commit = (conf >= thr) & masked
                if not commit.any():
                    commit[int(conf.argmax())] = True
                blk = [int(c) if k else t for t, c, k in zip(blk, cand, commit)]
            if emit(blk[1:]):
                return out
            seq += blk
            seed = int(_logits(model, seq, len(seq), "causal")[-1].argmax())
            if emit([seed]):
                return out
        else:  # spec, linear
            n = min(B, remaining + 1)
            blk = [seed] + [M] * (n - 1)
            if n > 1:
                draft = _logits(model, seq + blk, len(seq), "block", lora=True)[-n:]
                blk = [seed] + draft[1:].argmax(-1).tolist()
            a = _logits(model, seq + blk, len(seq) + n, "causal")[-n:].argmax(-1).tolist()
            c = 0
            while c + 1 < n and a[c] == blk[c + 1]:
                c += 1
            seq += blk[:1 + c]
            seed = a[c]
            if emit(blk[1:1 + c] + [seed]):
                return out
