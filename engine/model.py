"""The NLD network: a Llama/Mistral-style decoder whose attention pattern is chosen per forward.

The same module serves pretrained autoregressive checkpoints of the Qwen2/Llama/Mistral families
(config.py `model_type`): q/k/v bias when `attention_bias`, the head tied to the embedding when
`tie_word_embeddings`; they only ever run the "causal" pattern (they have no mask token).

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

The forward is kept lean because on a CPU a small model's step costs its op count (each aten op is
microseconds of dispatch; the matmuls are tiny): the hidden state stays 2-D [B*T, h] (a linear layer
on it is one matmul, no reshapes), `rms_norm` is F.rms_norm's arithmetic in a third of the ops, RoPE
rows come from a table computed once per model and rotate q and k in place in one pass without a
cat, a layer's new K and V reach the cache with one copy, the masks are slices of banded masks built
once per step width (triton_kernels/attention.py), and no-op dtype casts are skipped. It stays the
eager reference: engine/runner.py runs the same layers from CUDA graphs on a GPU.
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
        self.qkv = nn.Linear(h, (self.n_q + 2 * self.n_kv) * d, bias=cfg.attention_bias)
        self.o = nn.Linear(self.n_q * d, h, bias=False)
        self.o_lora: LoRA | None = None
        self.post_norm = nn.Parameter(torch.ones(h))
        self.gate_up = nn.Linear(h, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, h, bias=False)

    def forward(self, x, cos, sin, qscale, attend, lora):
        """x [B*T, h] -> [B*T, h] (rows batch-major); cos, sin [1 or B, T, 1, D] from `NLDModel.rope`.

        attend(q [B, Hq, T, D], kv [B, T, 2, Hkv, D]) -> [B, Hq, T, D]: where the K/V go and which mask
        applies. kv holds the rotated keys ([..., 0, :, :]) and the values side by side, as the fused
        projection wrote them, so that a cache takes both with one copy.
        The hidden state stays 2-D: a linear layer on [N, h] is one matmul, on [B, T, h] a reshape
        around it."""
        T = cos.shape[1]
        B = x.shape[0] // T
        hn = rms_norm(x, self.input_norm, self.eps)
        y = self.qkv(hn).view(B, T, self.n_q + 2 * self.n_kv, self.d)
        rotate_(y[:, :, :self.n_q + self.n_kv], cos, sin)      # q and k heads in one pass, in place
        q = y[:, :, :self.n_q].transpose(1, 2)
        if qscale is not None:
            q = q * qscale.view(-1, 1, T, 1).to(q.dtype)
        a = attend(q, y[:, :, self.n_q:].view(B, T, 2, self.n_kv, self.d))
        a = a.transpose(1, 2).reshape(B * T, self.n_q * self.d)
        out = self.o(a)
        if self.o_lora is not None:
            if isinstance(lora, torch.Tensor):
                out = out + self.o_lora(a) * lora.repeat(B).view(-1, 1).to(out.dtype)
            elif lora:
                out = out + self.o_lora(a)
        x = x + out
        hn = rms_norm(x, self.post_norm, self.eps)
        gu = self.gate_up(hn)
        i = gu.shape[-1] // 2
        return x + self.down(F.silu(gu[:, :i]) * gu[:, i:])


def rms_norm(x, weight, eps: float):
    """F.rms_norm, in the same arithmetic (fp32 and fp64: pow, mean, + eps, rsqrt, x * r, * weight, in
    that order), in a third of its ops: the composite F.rms_norm dispatches ~24 aten ops on a CPU,
    mostly no-op dtype casts, and a forward runs 2 per layer. Half precision keeps F.rms_norm (it
    computes in fp32)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    # x*x is pow(x, 2) and sum / n is mean, bit for bit; the scalars are tensors of x's dtype, which
    # spares the cast of a wrapped Python number in every op that takes one
    n, e = _scalar(x.shape[-1], x), _scalar(eps, x)
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True).div_(n).add_(e)) * weight


_SCALARS: dict = {}


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-dim tensor of `like`'s dtype and device holding `value`, made once."""
    key = (value, like.dtype, like.device)
    t = _SCALARS.get(key)
    if t is None:
        with torch.inference_mode(False):   # made once, used by decoding and by training's autograd alike
            t = _SCALARS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


def rotate_(x, cos, sin):
    """RoPE in place, in the half-split convention of Hugging Face Llama checkpoints. x: [B, T, H, D].

    `sin` carries the sign of rotate-half (its first half negated, see NLDModel.rope), so
    rotate_half(x) * sin == swap_halves(x) * sin_signed exactly (negation is exact), and swapping the
    halves is one flip of a [.., 2, D/2] view: no cat, no neg."""
    B, T, H, d = x.shape
    swapped = x.view(B, T, H, 2, d // 2).flip(-2).view(B, T, H, d)
    swapped.mul_(sin)
    x.mul_(cos).add_(swapped)


def _rope_tables(inv_freq: torch.Tensor, magnitude: float, positions: torch.Tensor, dtype: torch.dtype):
    """cos, sign-folded sin [..., D] for float positions [...]: the one definition of the rope values."""
    angles = positions.float()[..., None] * inv_freq.float()
    cos, sin = angles.cos() * magnitude, angles.sin() * magnitude
    return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


class NLDModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.source = ""                    # where the weights came from (a path), for messages
        inv_freq, self.rope_magnitude = rope_inv_freq(cfg)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._impl: str | None = None
        self._twin: list[NLDModel] = []     # a list keeps the twin out of this module's parameters
        self._table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None   # see rope_at

    def tie_weights(self) -> None:
        """With `tie_word_embeddings`, the head is the embedding matrix (one tensor). Call again after
        anything that replaces parameters (`to_empty`)."""
        if self.cfg.tie_word_embeddings:
            self.head.weight = self.embed.weight

    @property
    def prefill_twin(self) -> "NLDModel | None":
        """A lower-precision copy (without LoRA) that runs prompt prefills into this model's cache.

        On a CPU with native bf16 a bf16 prefill is ~1.6x faster than fp32 (900 tokens: 267 -> 171 ms,
        one thread), while one-token steps gain little and their exactness matters: greedy spec equals
        greedy ar only when both decode with the same arithmetic. Every decoder shares the prefill, so
        decoding in fp32 after a bf16 prefill keeps spec == ar token for token."""
        return self._twin[0] if self._twin else None

    def add_prefill_twin(self, dtype: torch.dtype) -> None:
        # built on the meta device and allocated in `dtype`: a randomly initialised float32 copy
        # first would cost the model's size again (2.5 GB for a 0.5B model) and seconds of init
        with torch.device("meta"):
            twin = NLDModel(self.cfg).to(dtype)
        twin.to_empty(device=self.head.weight.device)
        twin.tie_weights()
        state = {k: v for k, v in self.state_dict().items() if "o_lora" not in k}
        twin.load_state_dict(state)     # copy_ rounds to `dtype` exactly as .to(dtype) does
        twin.eval().requires_grad_(False)
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
        """positions [T] or [B, T] -> cos, sign-folded sin [1 or B, T, 1, D] (see `rotate_`)."""
        cos, sin = _rope_tables(self.inv_freq, self.rope_magnitude, positions.reshape(-1, positions.shape[-1]),
                                self.head.weight.dtype)
        return cos[:, :, None, :], sin[:, :, None, :]

    def rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cos, sin, positions) for positions 0..n-1 at least: cos/sin [1, N, 1, D], positions [N].
        Computed once per model (grown in powers of two), so a cached forward slices rows instead of
        computing trig and building position tensors."""
        p = self.head.weight
        t = self._table
        if t is None or t[2].numel() < n or t[0].device != p.device or t[0].dtype != p.dtype:  # grown, moved, cast
            with torch.inference_mode(False):   # a cached table must stay usable outside inference mode
                positions = torch.arange(max(1024, 1 << max(0, n - 1).bit_length()), device=p.device)
                cos, sin = _rope_tables(self.inv_freq, self.rope_magnitude, positions, p.dtype)
                self._table = (cos[None, :, None, :], sin[None, :, None, :], positions)
        return self._table

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
        if positions is None and len(caches) == 1:
            # the common case: rows of the model's rope table, no trig and no position tensor
            cos, sin, pos = self.rope_table(starts[0] + T)
            cos, sin = cos[:, starts[0]:starts[0] + T], sin[:, starts[0]:starts[0] + T]
            last = starts[0] + T - 1
        else:
            if positions is None:
                positions = torch.arange(T, device=input_ids.device) + torch.tensor(
                    starts, device=input_ids.device)[:, None]
            cos, sin = self.rope(positions)
            pos, last = positions, None
        qscale = None
        r = self.cfg.rope_scaling
        if r is not None and r.query_scale_beta and (last is None or last >= r.original_max_position_embeddings):
            qscale = query_scale(self.cfg, pos if positions is not None else pos[starts[0]:starts[0] + T])
        x = self.embed(input_ids).view(B * T, -1)
        impl = self.kernel_impl
        # per-forward views of every cache: the slots this pass writes and the keys it reads
        slots = [c.kv[:, :, :rows, :, s:s + T] for c, s in zip(caches, starts)]
        keys = [(c.k[:, :rows, :, :s + T], c.v[:, :rows, :, :s + T]) for c, s in zip(caches, starts)]
        for i, layer in enumerate(self.layers):
            def attend(q, kv, i=i):
                out = []
                kv = kv.permute(2, 0, 3, 1, 4)               # [2, B, Hkv, T, D], as a cache slot holds it
                for r, (slot, (k, v), s) in enumerate(zip(slots, keys, starts)):
                    slot[i].copy_(kv[:, r * rows:(r + 1) * rows] if len(slots) > 1 else kv)
                    qr = q[r * rows:(r + 1) * rows] if len(slots) > 1 else q
                    if qr.dtype != k.dtype:
                        qr = qr.to(k.dtype)
                    out.append(attention(qr, k[i], v[i], prefix_len=s, pattern=pattern, group=group, impl=impl))
                a = out[0] if len(out) == 1 else torch.cat(out)
                return a if a.dtype == q.dtype else a.to(q.dtype)
            x = layer(x, cos, sin, qscale, attend, lora)
        if last_only:
            x = x.view(B, T, -1)[:, -1]
        logits = self.head(rms_norm(x, self.norm, self.cfg.rms_norm_eps))
        if write:
            for r, c in enumerate(caches):
                c.commit(input_ids[r * rows].tolist())
        return logits.view(B, 1 if last_only else T, -1)

    def hidden_masked(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                      lora: bool | torch.Tensor = False) -> torch.Tensor:
        """Cache-free pass with an explicit boolean mask [T, T] (True = may attend) -> final normed hidden
        states. Training computes the head on the rows it scores; the reference decoders use all."""
        cos, sin = self.rope(positions)
        qscale = query_scale(self.cfg, positions)

        def attend(q, kv):
            k, v = kv.transpose(1, 3).unbind(2)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        B, T = input_ids.shape
        x = self.embed(input_ids).view(B * T, -1)
        for layer in self.layers:
            x = layer(x, cos, sin, qscale, attend, lora)
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.cfg.rms_norm_eps).view(B, T, -1)

    def forward_masked(self, input_ids, positions, mask, lora: bool = False) -> torch.Tensor:
        return self.head(self.hidden_masked(input_ids, positions, mask, lora))
