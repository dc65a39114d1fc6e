"""Model configuration: a checkpoint's `config.json` as a frozen dataclass.

Knows the keys a Nemotron-Labs-Diffusion checkpoint carries (Llama/Mistral keys plus `mask_token_id`,
`block_size`, `dlm_paradigm`), how RoPE is scaled, and the pretrained autoregressive families that share
the network (Qwen2, Llama, Mistral: `model_type`), which differ from NLD in q/k/v bias, tied embeddings
and having no mask token, hence no drafter. An AR checkpoint gains one with a trained drafter
(engine/drafter.py): its config then carries the drafter's mask token and block size, and what a
checkpoint can decode (`modes`) follows from having a mask token. Knows nothing of weights or files
beyond the one JSON object it is given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters (DESIGN.md §2); `None` in ModelConfig means plain RoPE."""
    factor: float = 16.0
    original_max_position_embeddings: int = 16384
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    # Post-RoPE query scale 1 + beta * log(1 + floor(pos / original_max)); 0 disables it.
    query_scale_beta: float = 0.1


NLD_MODEL_TYPE = "nemotron_labs_diffusion"
# Pretrained autoregressive families served by the same network (plain RoPE, RMSNorm, SwiGLU, GQA).
AR_MODEL_TYPES = ("qwen2", "llama", "mistral")
ALL_MODES = ("ar", "diffusion", "spec")
# A checkpoint without a drafter: `spec` drafts from the context only (prompt lookup), never a forward.
AR_MODES = ("ar", "spec")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 131072
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 34
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    rope_scaling: RopeScaling | None = field(default_factory=RopeScaling)
    max_position_embeddings: int = 262144
    mask_token_id: int | None = 100      # None: an AR checkpoint, which has no mask token
    eos_token_id: int = 11
    bos_token_id: int = 1
    block_size: int = 32
    dlm_paradigm: str = "bidirectional"
    torch_dtype: str = "bfloat16"
    model_type: str = NLD_MODEL_TYPE
    attention_bias: bool = False         # q/k/v projections carry a bias (Qwen2)
    tie_word_embeddings: bool = False    # the output head is the embedding matrix

    def __post_init__(self):
        problems = []
        if self.model_type not in (NLD_MODEL_TYPE, *AR_MODEL_TYPES):
            problems.append(f"model_type {self.model_type!r} is not served (tricode serves {NLD_MODEL_TYPE} "
                            f"and the autoregressive {', '.join(AR_MODEL_TYPES)})")
        elif self.model_type == NLD_MODEL_TYPE and self.mask_token_id is None:
            problems.append("an NLD checkpoint needs mask_token_id")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                            f"num_key_value_heads ({self.num_key_value_heads})")
        for name in ("mask_token_id", "eos_token_id", "bos_token_id"):
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < self.vocab_size:
                problems.append(f"{name} ({getattr(self, name)}) is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.block_size < 1:
            problems.append(f"block_size ({self.block_size}) must be at least 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def has_drafter(self) -> bool:
        """Can draft by block diffusion: an NLD checkpoint (mask tokens are native to it), or an AR
        checkpoint with a drafter attached (engine/drafter.py sets its mask token); a plain AR one cannot."""
        return self.mask_token_id is not None

    @property
    def denoise_with_lora(self) -> bool:
        """Diffusion steps run with the o_proj LoRA on: an AR checkpoint denoises only through its
        drafter; NLD weights denoise by themselves (their LoRA is for spec drafts only)."""
        return self.model_type != NLD_MODEL_TYPE and self.has_drafter

    @property
    def family(self) -> str:
        return "nld" if self.model_type == NLD_MODEL_TYPE else self.model_type

    @property
    def modes(self) -> tuple[str, ...]:
        """The decoding modes this checkpoint serves (`spec` without a drafter: context drafts only)."""
        return ALL_MODES if self.has_drafter else AR_MODES

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a Hugging Face style config dict. Raises KeyError/ValueError naming the key."""
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for key in required:
            if key not in d:
                raise KeyError(key)
        known = {f.name for f in fields(cls)} - {"rope_scaling", "eos_token_id", "head_dim", "num_key_value_heads"}
        kwargs = {k: d[k] for k in known if k in d and d[k] is not None}
        kwargs["num_key_value_heads"] = d.get("num_key_value_heads") or d["num_attention_heads"]
        kwargs["head_dim"] = d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]
        eos = d.get("eos_token_id", cls.eos_token_id)
        kwargs["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
        if kwargs.get("model_type") in AR_MODEL_TYPES:
            kwargs["mask_token_id"] = None       # AR checkpoints have no mask token, whatever the dict says
        rope = d.get("rope_parameters") or d.get("rope_scaling")
        if rope and rope.get("rope_theta") and "rope_theta" not in d:
            kwargs["rope_theta"] = rope["rope_theta"]
        kind = (rope or {}).get("rope_type", (rope or {}).get("type"))
        if kind in (None, "default"):
            kwargs["rope_scaling"] = None
        elif kind == "yarn":
            kwargs["rope_scaling"] = RopeScaling(
                factor=float(rope.get("factor", 16.0)),
                original_max_position_embeddings=int(rope.get("original_max_position_embeddings", 16384)),
                beta_fast=float(rope.get("beta_fast") or 32.0),
                beta_slow=float(rope.get("beta_slow") or 1.0),
                mscale=rope.get("mscale"),
                mscale_all_dim=rope.get("mscale_all_dim"),
                query_scale_beta=float(rope.get("llama_4_scaling_beta", 0.1)),
            )
        else:
            raise ValueError(f"rope_scaling type {kind!r} is not supported (tricode serves plain RoPE and YaRN)")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rope_scaling"}
        d["architectures"] = ["NemotronLabsDiffusionModel"]
        d["tie_word_embeddings"] = False
        d["num_key_value_heads"] = self.num_key_value_heads
        if self.rope_scaling is not None:
            r = self.rope_scaling
            d["rope_scaling"] = {
                "rope_type": "yarn", "factor": r.factor,
                "original_max_position_embeddings": r.original_max_position_embeddings,
                "beta_fast": r.beta_fast, "beta_slow": r.beta_slow,
                "mscale": r.mscale, "mscale_all_dim": r.mscale_all_dim,
                "llama_4_scaling_beta": r.query_scale_beta,
            }
        else:
            d["rope_scaling"] = None
        return d

    @property
    def num_parameters(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        if self.attention_bias:
            attn += d * (self.num_attention_heads + 2 * self.num_key_value_heads)
        layer = attn + 3 * h * i + 2 * h
        heads = 1 if self.tie_word_embeddings else 2
        return self.num_hidden_layers * layer + heads * self.vocab_size * h + h


def rope_inv_freq(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the cos/sin magnitude ("attention factor").

    YaRN blends interpolated and extrapolated frequencies: dimensions that rotate many times within
    the original context keep their frequency, slow ones are divided by `factor`, a linear ramp in
    between (the ramp ends are the dims that turn beta_fast and beta_slow times over the original
    context).
    """
    dim, base = cfg.head_dim, cfg.rope_theta
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolated = 1.0 / pos_freqs
    r = cfg.rope_scaling
    if r is None:
        return extrapolated.float(), 1.0

    def mscale(scale, m=1.0):
        return 0.1 * m * math.log(scale) + 1.0 if scale > 1 else 1.0

    if r.mscale and r.mscale_all_dim:
        attention_factor = mscale(r.factor, r.mscale) / mscale(r.factor, r.mscale_all_dim)
    else:
        attention_factor = mscale(r.factor)

    def correction_dim(rotations):
        return dim * math.log(r.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(r.beta_fast)), 0)
    high = min(math.ceil(correction_dim(r.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 where the dimension keeps its original (extrapolated) frequency
    inv_freq = (extrapolated / r.factor) * (1 - keep) + extrapolated * keep
    return inv_freq.float(), attention_factor


def query_scale(cfg: ModelConfig, positions: torch.Tensor) -> torch.Tensor | None:
    """Post-RoPE query multiplier 1 + beta*log(1 + floor(pos/orig)); None when it is 1 everywhere."""
    r = cfg.rope_scaling
    if r is None or not r.query_scale_beta:
        return None
    if int(positions.max()) < r.original_max_position_embeddings:
        return None
    return 1.0 + r.query_scale_beta * torch.log1p(torch.floor(positions.float() / r.original_max_position_embeddings))
