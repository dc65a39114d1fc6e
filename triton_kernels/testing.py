"""Test helpers shared by tests/test_kernels.py and scripts/gpu_check.py (not used by the engine).

- naive_*: slow float64 loops written straight from the rules in the module docstrings, independent
  of the references' vectorised code, so that the references themselves are checked.
- gpu_check_*: the GPU correctness checks at the real 8B shapes (Hq 32, Hkv 8, D 128, a 4k prefix,
  V = 131072). Plain functions that raise AssertionError on failure and return a short result
  dict, so that pytest (marked gpu) and the benchmark script (which may run without pytest) share
  them. They need CUDA.
"""

from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------------------------------
# Naive float64 definitions
# --------------------------------------------------------------------------------------------------


def naive_visible(t: int, s: int, prefix_len: int, pattern: str, group: int = 0) -> bool:
    if s < prefix_len:
        return True
    j = s - prefix_len
    if pattern == "causal":
        return j <= t
    if pattern == "block":
        return True
    if pattern == "quadratic":
        gq, oq = divmod(t, group)
        gk, ok = divmod(j, group)
        return (ok == 0 and gk <= gq) or (oq > 0 and ok > 0 and gk == gq)
    raise ValueError(pattern)


def naive_attention(q, k, v, *, prefix_len, pattern, group=0, scale=None):
    """float64, one query token at a time, keys picked by `naive_visible`."""
    q, k, v = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    B, Hq, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    kk = k.repeat_interleave(G, dim=1)
    vv = v.repeat_interleave(G, dim=1)
    out = torch.empty_like(q)
    for t in range(T):
        keys = [s for s in range(L) if naive_visible(t, s, prefix_len, pattern, group)]
        sc = torch.einsum("bhd,bhsd->bhs", q[:, :, t], kk[:, :, keys]) * scale
        w = torch.softmax(sc, dim=-1)
        out[:, :, t] = torch.einsum("bhs,bhsd->bhd", w, vv[:, :, keys])
    return out


def naive_verify_greedy(block_tokens, logits):
    toks = block_tokens.tolist()
    a = logits.double().argmax(-1).tolist()
    acc, bonus = [], []
    for row_t, row_a in zip(toks, a):
        c = 0
        while c + 1 < len(row_t) and row_a[c] == row_t[c + 1]:
            c += 1
        acc.append(c)
        bonus.append(row_a[c])
    return torch.tensor(acc), torch.tensor(bonus)


def naive_verify_sample(block_tokens, target_logits, *, temperature, draft_probs, uniforms):
    """Speculative sampling row by row in float64, inverse CDF with the given uniforms."""
    B, T, V = target_logits.shape
    p = torch.softmax(target_logits.double() / temperature, dim=-1)
    acc, nxt = [], []
    for b in range(B):
        c = 0
        rejected = False
        for i in range(1, T):
            d = int(block_tokens[b, i])
            q = 1.0 if draft_probs is None else float(draft_probs[b, i, d])
            if float(uniforms[b, i - 1]) * q < float(p[b, i - 1, d]):
                c += 1
            else:
                rejected = True
                break
        if rejected:
            if draft_probs is None:
                qv = torch.zeros(V, dtype=torch.float64)
                qv[int(block_tokens[b, c + 1])] = 1.0
            else:
                qv = draft_probs[b, c + 1].double()
            w = (p[b, c] - qv).clamp_min(0.0)
            if float(w.sum()) <= 0.0:
                w = p[b, c]
        else:
            w = p[b, c]
        target = float(uniforms[b, T - 1]) * float(w.sum())
        run, tok = 0.0, None
        for x in range(V):
            run += float(w[x])
            if w[x] > 0 and run > target:
                tok = x
                break
        if tok is None:
            tok = max(x for x in range(V) if w[x] > 0)
        acc.append(c)
        nxt.append(tok)
    return torch.tensor(acc), torch.tensor(nxt)


def naive_unmask_step(block_tokens, logits, *, mask_id, threshold):
    B, T, V = logits.shape
    new = block_tokens.clone()
    commit = torch.zeros(B, T, dtype=torch.bool)
    conf = torch.zeros(B, T, dtype=torch.float64)
    cand = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        for t in range(T):
            if int(block_tokens[b, t]) != mask_id:
                continue
            x = logits[b, t].double().clone()
            x[mask_id] = float("-inf")
            pr = torch.softmax(x, -1)
            cand[b, t] = int(x.argmax())
            conf[b, t] = float(pr[cand[b, t]])
            commit[b, t] = conf[b, t] >= threshold
        masked = [t for t in range(T) if int(block_tokens[b, t]) == mask_id]
        if masked and not commit[b].any():
            best = max(masked, key=lambda t: (float(conf[b, t]), -t))
            commit[b, best] = True
        for t in range(T):
            if commit[b, t]:
                new[b, t] = cand[b, t]
    return new, commit, conf


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN/inf anywhere gives inf (never passes)."""
    out = out.double()
    ref = ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-300))


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson statistic of observed counts against expected probabilities (cells with p > 0)."""
    n = float(counts.sum())
    exp = probs.double() * n
    keep = exp > 0
    assert int(counts[~keep].sum()) == 0, "a token with probability 0 was emitted"
    return float(((counts.double()[keep] - exp[keep]) ** 2 / exp[keep]).sum())


# Upper 0.1% points of the chi-square distribution, by degrees of freedom.
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12}


# --------------------------------------------------------------------------------------------------
# GPU checks at real shapes
# --------------------------------------------------------------------------------------------------

ATTN_TOL = {torch.bfloat16: 1e-2, torch.float16: 1e-3, torch.float32: 1e-5}

# (pattern, T, group) cases at the 8B attention shape
GPU_ATTN_CASES = [("causal", 1, 0), ("causal", 16, 0), ("causal", 32, 0), ("block", 32, 0),
                  ("quadratic", 33 * 32, 33), ("causal", 33, 0), ("block", 1, 0)]


def kv_cache_view(B, Hkv, L, D, dtype, device, gen, spare=64):
    """k, v as the first L positions of a longer cache buffer (strided, like the engine's cache)."""
    buf = torch.randn(2, B, Hkv, L + spare, D, generator=gen, device=device, dtype=torch.float32).to(dtype)
    return buf[0, :, :, :L], buf[1, :, :, :L]


def gpu_check_attention(dtype, pattern, T, group=0, *, B=1, Hq=32, Hkv=8, D=128, prefix_len=4096,
                        seed=0, device="cuda", **launch):
    from .attention import attention_reference, attention_triton

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=gen, device=dev, dtype=torch.float32).to(dtype)
    k, v = kv_cache_view(B, Hkv, prefix_len + T, D, dtype, dev, gen)
    out = torch.full_like(q, float("nan"))
    attention_triton(q, k, v, prefix_len=prefix_len, pattern=pattern, group=group, out=out, **launch)
    ref = attention_reference(q.double(), k.double(), v.double(), prefix_len=prefix_len, pattern=pattern,
                              group=group)
    err = rel_err(out, ref)
    sdpa_err = rel_err(attention_reference(q, k, v, prefix_len=prefix_len, pattern=pattern, group=group), ref)
    tol = ATTN_TOL[dtype]
    assert err < tol, (f"attention {pattern} T={T} {dtype}: rel err {err:.3g} >= {tol} "
                       f"(torch SDPA in the same dtype: {sdpa_err:.3g})")
    return {"pattern": pattern, "T": T, "dtype": str(dtype).replace("torch.", ""), "rel_err": err,
            "sdpa_rel_err": sdpa_err}


def gpu_check_verify_greedy(dtype=torch.bfloat16, *, B=8, T=32, V=131072, seed=0, device="cuda"):
    from .verify import verify_greedy_reference, verify_greedy_triton

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen, device=dev).to(dtype)
    a = logits.argmax(-1)
    tokens = torch.randint(0, V, (B, T), generator=gen, device=dev)
    # Row b agrees with the argmax for its first b*3 drafts (rows past T-1 accept everything).
    for b in range(B):
        n = min(T - 1, 3 * b)
        tokens[b, 1 : n + 1] = a[b, :n]
    acc_o = torch.full((B,), -7, dtype=torch.int64, device=dev)
    bon_o = torch.full((B,), -7, dtype=torch.int64, device=dev)
    acc, bonus = verify_greedy_triton(tokens, logits, accepted_out=acc_o, bonus_out=bon_o)
    racc, rbonus = verify_greedy_reference(tokens, logits)
    assert torch.equal(acc, racc), f"verify_greedy accepted {acc.tolist()} != reference {racc.tolist()}"
    assert torch.equal(bonus, rbonus), f"verify_greedy bonus {bonus.tolist()} != reference {rbonus.tolist()}"
    return {"accepted": acc.tolist()}


def gpu_check_verify_sample(dtype=torch.bfloat16, *, B=64, T=8, V=131072, N=200_000, seed=0, device="cuda"):
    """Same uniforms in both: accept decisions must agree (up to rare last-bit flips of p(d) against
    u); sampled tokens may differ where the CDF sums round differently (fast exp on the GPU), so only
    a small mismatch rate is allowed. The distributional guarantee is checked by chi-square."""
    from .verify import verify_sample_reference, verify_sample_triton

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    logits = (3.0 * torch.randn(B, T, V, generator=gen, device=dev)).to(dtype)
    tokens = torch.multinomial(torch.softmax(logits[:, :, :].float().view(-1, V), -1), 1,
                               generator=gen).view(B, T)
    tokens = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)  # draft i drawn from p_i: many accepts
    u = torch.rand(B, T, generator=gen, device=dev)
    res = {}
    for name, dp in (("onehot", None), ("probs", torch.softmax(logits.float() * 0.9, -1).to(dtype))):
        acc, tok = verify_sample_triton(tokens, logits, temperature=0.8, draft_probs=dp, uniforms=u)
        racc, rtok = verify_sample_reference(tokens, logits, temperature=0.8, draft_probs=dp, uniforms=u)
        acc_mis = int((acc != racc).sum())
        tok_mis = int((tok != rtok).sum())
        assert acc_mis <= max(1, B // 50), f"verify_sample({name}): {acc_mis}/{B} accepted counts differ"
        assert tok_mis <= max(2, B // 10), f"verify_sample({name}): {tok_mis}/{B} tokens differ"
        res[name] = {"accepted_mismatch": acc_mis, "token_mismatch": tok_mis, "mean_accepted": float(acc.float().mean())}
    # Distribution of the first emitted token at a tiny vocabulary, many rows.
    Vs = 5
    lg = torch.tensor([[1.0, 0.2, -0.5, 2.0, 0.0], [0.0, 0.5, 1.5, -1.0, 0.3]], device=dev)
    qd = torch.tensor([0.1, 0.5, 0.2, 0.1, 0.1], device=dev)
    logits_s = lg.unsqueeze(0).expand(N, 2, Vs).contiguous()
    dprobs = qd.expand(N, 2, Vs).contiguous()
    d1 = torch.multinomial(qd, N, replacement=True, generator=gen)
    toks = torch.stack([torch.zeros_like(d1), d1], 1)
    acc, tok = verify_sample_triton(toks, logits_s, temperature=1.0, draft_probs=dprobs, generator=gen)
    first = torch.where(acc >= 1, d1, tok)
    chi = chi_square(torch.bincount(first, minlength=Vs).cpu(), torch.softmax(lg[0], -1).cpu())
    assert chi < CHI2_999[Vs - 1], f"verify_sample first-token distribution: chi2 {chi:.2f}"
    res["chi2"] = chi
    return res


def gpu_check_unmask(dtype=torch.bfloat16, *, B=8, T=32, V=131072, mask_id=100, seed=0, device="cuda"):
    from .unmask import unmask_step_reference, unmask_step_triton

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(seed)
    # Peaky rows (x8) spread the confidences over (0, 1) so that the threshold matters.
    sharp = torch.rand(B, T, 1, generator=gen, device=dev) * 8.0
    logits = (torch.randn(B, T, V, generator=gen, device=dev) * sharp).to(dtype)
    logits[:, :, mask_id] = 50.0  # the mask id would win if it were not excluded
    tokens = torch.randint(0, V, (B, T), generator=gen, device=dev)
    masked = torch.rand(B, T, generator=gen, device=dev) < 0.6
    masked[0] = False  # a row with nothing to do
    masked[1] = True   # a row fully masked
    tokens = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    res = {}
    for thr in (0.3, 2.0):
        out = unmask_step_triton(tokens, logits, mask_id=mask_id, threshold=thr)
        ref = unmask_step_reference(tokens, logits, mask_id=mask_id, threshold=thr)
        assert torch.equal(out[0], ref[0]), f"unmask tokens differ at threshold {thr}"
        assert torch.equal(out[1], ref[1]), f"unmask commits differ at threshold {thr}"
        assert torch.allclose(out[2], ref[2], rtol=1e-4, atol=1e-7), f"unmask confidences differ at threshold {thr}"
        assert not (out[0] == mask_id)[out[1]].any(), "unmask emitted the mask id"
        res[f"commits@{thr}"] = int(out[1].sum())
    return res


def run_gpu_checks(log=print) -> list[tuple[str, bool, str]]:
    """Every GPU check; returns (name, passed, detail) rows and never raises."""
    rows = []

    def run(name, fn, *a, **kw):
        try:
            r = fn(*a, **kw)
            rows.append((name, True, str(r)))
        except Exception as e:  # noqa: BLE001 - reported, not raised
            rows.append((name, False, f"{type(e).__name__}: {e}"))
        log(f"{'PASS' if rows[-1][1] else 'FAIL'} {name}: {rows[-1][2]}")
        torch.cuda.empty_cache()

    for dtype in (torch.bfloat16, torch.float16):
        for pattern, T, group in GPU_ATTN_CASES:
            run(f"attention {pattern} T={T} {dtype}", gpu_check_attention, dtype, pattern, T, group)
    run("attention causal T=32 float32 (prefix 1024)", gpu_check_attention, torch.float32, "causal", 32, 0,
        prefix_len=1024)
    run("attention quadratic B=2 Hq=Hkv=8 D=64 bf16", gpu_check_attention, torch.bfloat16, "quadratic", 5 * 6, 5,
        B=2, Hq=8, Hkv=8, D=64, prefix_len=1000)
    for dtype in (torch.bfloat16, torch.float32):
        run(f"verify_greedy {dtype}", gpu_check_verify_greedy, dtype)
        run(f"unmask_step {dtype}", gpu_check_unmask, dtype)
    run("verify_sample bf16", gpu_check_verify_sample, torch.bfloat16)
    return rows
