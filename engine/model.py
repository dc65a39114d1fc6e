"""The NLD network: a Llama/Mistral-style decoder whose attention pattern is chosen per forward.

One set of weights, three ways to attend (DESIGN.md §2-3), selected by `pattern`:
  "causal"     each new token sees the cached prefix and the new tokens up to itself (AR, verify)
  "block"      each new token sees the cached prefix and every new token (diffusion steps, drafts)
  "quadratic"  groups [d_i, M x B]: d tokens causal over d tokens, masks of group i see d_0..d_i and
               their own group (one-forward self-speculation)
`write` says whether this pass's K/V stay in the cache (see kv_cache.py). Nothing is reloaded
between modes. The optional o_proj LoRA (the drafter adapter) is applied only when asked: `lora=True`
for a whole draft pass, or a boolean row mask [T] when draft and verify rows share one forward
(quadratic self-speculation, drafter training).

q/k/v and gate/up are held fused (one matmul each) for speed; checkpoint.py maps the Hugging Face
tensor names onto them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig, query_scale, rope_inv_freq
from engine.kv_cache import KVCache
from triton_kernels.attention import attention

log = logging.getLogger(__name__)


class LoRA(nn.Module):
    def __init__(self, d_in: int, d_out: int, r: int, alpha: float):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(r, d_in))
        self.B = nn.Parameter(torch.zeros(d_out, r))
        self.scale = alpha / r

    def forward(self, x):
        return F.linear(F.linear(x, self.A), self.B) * self.scale


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.n_q, self.n_kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.eps = cfg.rms_norm_eps
        self.input_norm = nn.Parameter(torch.ones(h))
        self.qkv = nn.Linear(h, (self.n_q + 2 * self.n_kv) * d, bias=False)
        self.o = nn.Linear(self.n_q * d, h, bias=False)
        self.o_lora: LoRA | None = None
        self.post_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)

    def forward(self, x, cos, sin, qscale, attend, lora):
        """attend(q [B,Hq,T,D], k [B,Hkv,T,D], v) -> [B,Hq,T,D]: where the K/V go and which mask applies."""
        B, T, _ = x.shape
        hn = F.rms_norm(x, (x.shape[-1],), self.input_norm, self.eps)
        q, k, v = self.qkv(hn).view(B, T, -1, self.d).split([self.n_q, self.n_kv, self.n_kv], dim=2)
        q = rotate(q, cos, sin).transpose(1, 2)
        if qscale is not None:
            q = q * qscale.view(-1, 1, T, 1).to(q.dtype)
        a = attend(q, rotate(k, cos, sin).transpose(1, 2), v.transpose(1, 2))
        a = a.transpose(1, 2).reshape(B, T, -1)
        out = self.o(a)
        if self.o_lora is not None:
            if isinstance(lora, torch.Tensor):
                out = out + self.o_lora(a) * lora.view(1, -1, 1).to(out.dtype)
            elif lora:
                out = out + self.o_lora(a)
        x = x + out
        hn = F.rms_norm(x, (x.shape[-1],), self.post_norm, self.eps)
        gate, up = self.gate_up(hn).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rotate(x, cos, sin):
    """RoPE in the half-split convention of Hugging Face Llama checkpoints. x: [B, T, H, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class NLDModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        inv_freq, self.rope_magnitude = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._impl: str | None = None
        self._twin: list[NLDModel] = []     # a list keeps the twin out of this module's parameters

    @property
    def prefill_twin(self) -> "NLDModel | None":
        """A lower-precision copy (without LoRA) that runs prompt prefills into this model's cache.

        On a CPU with native bf16 a bf16 prefill is ~1.6x faster than fp32 (900 tokens: 267 -> 171 ms,
        one thread), while one-token steps gain little and their exactness matters: greedy spec equals
        greedy ar only when both decode with the same arithmetic. Every decoder shares the prefill, so
        decoding in fp32 after a bf16 prefill keeps spec == ar token for token."""
        return self._twin[0] if self._twin else None

    def add_prefill_twin(self, dtype: torch.dtype) -> None:
        twin = NLDModel(self.cfg).to(self.head.weight.device)
        state = {k: v for k, v in self.state_dict().items() if "o_lora" not in k}
        twin.load_state_dict(state)
        twin.to(dtype).eval().requires_grad_(False)
        twin.inv_freq = self.inv_freq
        self._twin = [twin]

    @property
    def has_lora(self) -> bool:
        return self.layers[0].o_lora is not None

    def add_lora(self, r: int, alpha: float) -> None:
        p = self.head.weight
        for layer in self.layers:
            layer.o_lora = LoRA(layer.o.in_features, layer.o.out_features, r, alpha).to(p.device, p.dtype)

    @property
    def cache_dtype(self) -> torch.dtype:
        """bf16 weights on a CPU keep K/V (and run attention) in fp32: the CPU attention kernel is
        several times slower in bf16 for a few queries over a long cache (docs/benchmarks.md)."""
        p = self.head.weight
        return torch.float32 if (p.dtype == torch.bfloat16 and not p.is_cuda) else p.dtype

    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        p = self.head.weight
        cfg = self.cfg
        return KVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, max_len,
                       batch=batch, device=p.device, dtype=self.cache_dtype)

    @property
    def kernel_impl(self) -> str:
        """Triton kernels on CUDA, the PyTorch references elsewhere; said once in the log."""
        if self._impl is None:
            self._impl = "triton" if self.head.weight.is_cuda else "reference"
            log.info("attention/verify/unmask ops: %s implementation on %s", self._impl, self.head.weight.device)
        return self._impl

    def rope(self, positions: torch.Tensor):
        """positions [T] or [B, T] -> cos, sin [1 or B, T, 1, D]."""
        angles = positions.float().reshape(-1, positions.shape[-1], 1) * self.inv_freq.float()
        angles = torch.cat((angles, angles), dim=-1)
        dtype = self.head.weight.dtype
        cos = (angles.cos() * self.rope_magnitude).to(dtype)[:, :, None, :]
        sin = (angles.sin() * self.rope_magnitude).to(dtype)[:, :, None, :]
        return cos, sin

    def forward(self, input_ids: torch.Tensor, cache: KVCache | Sequence[KVCache], *, pattern: str = "causal",
                write: bool = True, positions: torch.Tensor | None = None, group: int = 0,
                lora: bool | torch.Tensor = False, last_only: bool = False) -> torch.Tensor:
        """input_ids [B, T] -> logits [B, T, V] (or [B, 1, V] with last_only).

        `cache` is one KVCache whose batch rows share one length, or a list of B single-row caches
        of any lengths (requests batched together: every row reads and writes its own cache, so only
        the attention runs per row; the matmuls run once for the batch). New tokens sit at each
        cache's slots [length, length+T); their RoPE positions default to those slots (the
        quadratic pattern passes its own, [T] or [B, T]). With write=True the slots are committed.
        """
        B, T = input_ids.shape
        caches = [cache] if isinstance(cache, KVCache) else list(cache)
        assert len(caches) in (1, B), f"{len(caches)} caches for a batch of {B}"
        rows = B if len(caches) == 1 else 1        # batch rows held by each cache
        starts = [c.length for c in caches]
        for c in caches:
            c.reserve(T)
        if positions is None:
            positions = torch.arange(T, device=input_ids.device) + torch.tensor(
                starts, device=input_ids.device)[:, None]
        cos, sin = self.rope(positions)
        qscale = query_scale(self.cfg, positions)
        x = self.embed(input_ids)
        impl = self.kernel_impl
        for i, layer in enumerate(self.layers):
            def attend(q, k, v, i=i):
                out = []
                for r, (c, s) in enumerate(zip(caches, starts)):
                    sl = slice(r * rows, (r + 1) * rows)
                    c.k[i, :rows, :, s:s + T] = k[sl]
                    c.v[i, :rows, :, s:s + T] = v[sl]
                    out.append(attention(q[sl].to(c.k.dtype), c.k[i, :rows, :, :s + T], c.v[i, :rows, :, :s + T],
                                         prefix_len=s, pattern=pattern, group=group, impl=impl))
                return (out[0] if len(out) == 1 else torch.cat(out)).to(q.dtype)
            x = layer(x, cos, sin, qscale, attend, lora)
        if last_only:
            x = x[:, -1:]
        logits = self.head(F.rms_norm(x, (x.shape[-1],), self.norm, self.cfg.rms_norm_eps))
        if write:
            for r, c in enumerate(caches):
                c.commit(input_ids[r * rows].tolist())
        return logits

    def hidden_masked(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                      lora: bool | torch.Tensor = False) -> torch.Tensor:
        """Cache-free pass with an explicit boolean mask [T, T] (True = may attend) -> final normed hidden
        states. Training computes the head on the rows it scores; the reference decoders use all."""
        cos, sin = self.rope(positions)
        qscale = query_scale(self.cfg, positions)

        def attend(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, qscale, attend, lora)
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.cfg.rms_norm_eps)

    def forward_masked(self, input_ids, positions, mask, lora: bool = False) -> torch.Tensor:
        return self.head(self.hidden_masked(input_ids, positions, mask, lora))
