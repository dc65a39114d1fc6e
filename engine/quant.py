"""Weight-only quantization: the packing format of a quantized checkpoint and the layer that runs it.

Format (round-to-nearest, written by `tricode quantize`, described by config.json's `quantization`):
  8 bits  symmetric, one scale per output row:  W[n, k] = qweight[n, k] * scales[n, 0]
          qweight int8 [N, K] in -127..127, scales [N, 1]
  4 bits  asymmetric, one scale and zero per group of G consecutive inputs of a row:
          W[n, k] = (code[n, k] - qzeros[n, k // G]) * scales[n, k // G]
          qweight uint8 [N, K/2] (two codes a byte, even k in the low nibble; triton_kernels/w4a16.py),
          scales [N, K/G], qzeros uint8 [N, K/G] in 0..15
Scales are stored in fp16 and the codes are rounded against the fp16 scale, so what is stored is
exactly what is meant. Each Hugging Face linear tensor `X.weight` becomes `X.qweight`, `X.scales`
and (4 bits) `X.qzeros`. Only the decoder layers' linears (q, k, v, o, gate, up, down) are quantized:
the embedding is a row gather (no matmul, its size costs memory but no time per token), the norms are
tiny, and the head decides every argmax (it is 7% of an 8B model; keeping it 16-bit is the usual
choice and keeps greedy decoding closest to the float model).

QuantLinear is the layer: the same `module(x)` call as nn.Linear. After its buffers are filled,
`prepare(dtype)` turns them into the form its matmul wants on their device:
  CUDA, 4 bits  the Triton w4a16 kernel on the packed bytes as stored
  CPU, 8 bits   torch._weight_int8pack_mm (int8 weight, per-row scale)
  CPU, 4 bits   torch._weight_int4pack_mm_for_cpu (weight repacked by _convert_weight_to_int4pack_for_cpu,
                scale and zero folded into its (scale, offset) pairs: W = (code - 8) * s + (8 - z) * s)
  otherwise     the weight dequantized once to the activation dtype and F.linear (CUDA 8 bits; CPU
                shapes PyTorch's int4 kernel does not take: N not a multiple of 16, G not 32..256)
On a CPU the weight-only kernels are used for calls of at most KERNEL_MAX_ROWS rows (decode steps,
verify blocks); a longer call (a prompt prefill) dequantizes the layer's weight for that call and runs
the float GEMM, which costs one pass over the weight against the rows' many: PyTorch's weight-only CPU
kernels are tuned for a few rows. The dequantized values are exactly the kernels' (code times an fp16
scale is exact in fp32; fp32 activations), so only the summation order differs, as it does between any two GEMM shapes.
Which CPUs get the kernels: PyTorch 2.13's int8/int4 weight-only CPU kernels measured 6-15x SLOWER than
the fp32 GEMM at the embedded model's shapes on an AVX2-only CPU (docs/quantization.md), so
by default they are used only where torch reports AVX512 (`TRICODE_CPU_QUANT=kernels` forces them,
`=dequantized` forces the float fallback); elsewhere a quantized checkpoint runs dequantized weights:
the quantized model's quality, the float model's speed and memory.
This module knows nothing of files; checkpoint.py reads the tensors into the buffers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from triton_kernels.w4a16 import dequantize_int4, pack_int4, unpack_int4, w4a16_matmul

log = logging.getLogger(__name__)

QUANT_METHOD = "tricode-rtn"
BITS = (4, 8)
CPU_INT4_GROUPS = (32, 64, 128, 256)      # what torch._weight_int4pack_mm_for_cpu accepts
KERNEL_MAX_ROWS = 32
SCALE_DTYPE = torch.float16               # how scales are stored, and kept whatever the model's dtype
# The Hugging Face linear tensors that get quantized (suffix after `encoder.layers.{i}.`).
QUANTIZED_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Our fused layer modules that hold them.
LAYER_LINEARS = ("qkv", "o", "gate_up", "down")


class QuantError(ValueError):
    """A quantization request or quantization section that cannot be served; the message says why."""


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    group_size: int | None      # None: one scale per output row (8 bits)

    def __post_init__(self):
        if self.bits not in BITS:
            raise QuantError(f"bits must be one of {BITS}, got {self.bits!r}")
        if self.bits == 8 and self.group_size is not None:
            raise QuantError("8-bit weights use one scale per output row; --group-size applies to 4 bits only")
        if self.bits == 4 and (not isinstance(self.group_size, int) or self.group_size < 2 or self.group_size % 2):
            raise QuantError(f"4-bit group size must be an even integer >= 2, got {self.group_size!r}")

    def groups(self, k: int) -> int:
        return 1 if self.group_size is None else k // self.group_size

    def tensor_names(self) -> tuple[str, ...]:
        return ("qweight", "scales", "qzeros") if self.bits == 4 else ("qweight", "scales")

    def to_config(self) -> dict:
        return {"quant_method": QUANT_METHOD, "bits": self.bits, "group_size": self.group_size,
                "symmetric": self.bits == 8, "scale_dtype": "float16",
                "modules": list(QUANTIZED_LINEARS), "unquantized": ["embed_tokens", "norms", "diffusion_head",
                                                                     "linear_spec_lora"]}

    @classmethod
    def from_config(cls, section) -> "QuantSpec":
        if not isinstance(section, dict):
            raise QuantError(f"'quantization' must be an object, got {type(section).__name__}")
        method = section.get("quant_method")
        if method != QUANT_METHOD:
            raise QuantError(f"quant_method {method!r} is not supported (tricode reads {QUANT_METHOD!r}, "
                             f"written by `tricode quantize`)")
        return cls(bits=section.get("bits"), group_size=section.get("group_size"))


def cpu_kernels_wanted() -> bool:
    """Whether CPU QuantLinear layers use PyTorch's weight-only kernels (module doc)."""
    import os
    choice = os.environ.get("TRICODE_CPU_QUANT", "auto")
    if choice in ("kernels", "dequantized"):
        return choice == "kernels"
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def check_shape(spec: QuantSpec, name: str, n: int, k: int) -> None:
    """A weight [n, k] this spec can pack, or QuantError naming the tensor."""
    if spec.group_size is not None and k % spec.group_size:
        raise QuantError(f"{name}: group size {spec.group_size} does not divide its {k} input features; "
                         f"pick a --group-size that divides {k} (e.g. {_divisor_hint(k)})")


def _divisor_hint(k: int) -> int:
    return next((g for g in (128, 64, 32, 16, 8, 4, 2) if k % g == 0), 2)


# --------------------------------------------------------------------------------------------------
# Round-to-nearest quantization and its inverse
# --------------------------------------------------------------------------------------------------


def quantize_weight(w: torch.Tensor, spec: QuantSpec) -> dict[str, torch.Tensor]:
    """w [N, K] float -> {"qweight", "scales"(fp16)[, "qzeros"]} (the stored tensors, on w's device)."""
    w = w.float()
    n, k = w.shape
    tiny = torch.finfo(torch.float16).tiny
    if spec.bits == 8:
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=tiny).half()
        q = torch.round(w / scale.float()).clamp(-127, 127).to(torch.int8)
        return {"qweight": q, "scales": scale}
    g = w.view(n, k // spec.group_size, spec.group_size)
    lo = g.amin(-1).clamp(max=0)       # the range always holds 0, so a zero weight stays exactly 0
    hi = g.amax(-1).clamp(min=0)
    scale = ((hi - lo) / 15).clamp(min=tiny).half()
    s = scale.float()
    zero = torch.round(-lo / s).clamp(0, 15)
    codes = torch.round(g / s[..., None] + zero[..., None]).clamp(0, 15).view(n, k)
    return {"qweight": pack_int4(codes), "scales": scale, "qzeros": zero.to(torch.uint8)}


def dequantize(t: dict[str, torch.Tensor], spec: QuantSpec) -> torch.Tensor:
    """The stored tensors -> the weight [N, K] in fp32 (what the quantized model computes with)."""
    if spec.bits == 8:
        return t["qweight"].float() * t["scales"].float()
    return dequantize_int4(t["qweight"], t["scales"], t["qzeros"], spec.group_size)


# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------


class QuantLinear(nn.Module):
    """A bias-free linear layer with quantized weights; `prepare` picks the matmul (module doc)."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec):
        super().__init__()
        self.in_features, self.out_features, self.spec = in_features, out_features, spec
        n, k, groups = out_features, in_features, spec.groups(in_features)
        if spec.bits == 8:
            self.register_buffer("qweight", torch.zeros(n, k, dtype=torch.int8))
        else:
            self.register_buffer("qweight", torch.zeros(n, k // 2, dtype=torch.uint8))
            self.register_buffer("qzeros", torch.zeros(n, groups, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(n, groups, dtype=SCALE_DTYPE))
        self.backend = "unprepared"

    def _apply(self, fn, recurse=True):
        """Module.to / .half() / .bfloat16() move the stored scales but keep their dtype: a cast of the
        model to its activation dtype (checkpoint.py: model.to(bf16) before the file's fp16 scales are
        copied in) would otherwise round every scale to bf16, and the GPU model would differ from the
        file and from the CPU path (up to ~0.4% per group). The kernels compute in fp32 anyway."""
        kept = self._buffers.get("scales")
        super()._apply(fn, recurse)
        new = self._buffers.get("scales")
        if kept is not None and new is not None and new.dtype != kept.dtype:
            self._buffers["scales"] = kept.to(new.device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.spec.bits}, "
                f"group_size={self.spec.group_size}, backend={self.backend}")

    def stored(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.spec.tensor_names()}

    def prepare(self, dtype: torch.dtype) -> str:
        """Turn the stored buffers into the runtime form for their device and the activation `dtype`;
        returns the backend name. Buffers the backend does not read are dropped."""
        dev, spec = self.qweight.device, self.spec
        if (dev.type == "cuda" and spec.bits == 4 and spec.group_size >= 16 and not spec.group_size & (spec.group_size - 1)
                and self.in_features % 32 == 0):
            self.backend = "triton-w4a16"       # the stored fp16 scales as they are (read in fp32)
        elif dev.type == "cpu" and spec.bits == 8 and cpu_kernels_wanted():
            self.register_buffer("row_scales", self.scales.view(-1).to(dtype).contiguous())
            del self.scales
            self.backend = "cpu-int8"
        elif (dev.type == "cpu" and spec.bits == 4 and spec.group_size in CPU_INT4_GROUPS
              and self.out_features % 16 == 0 and cpu_kernels_wanted()):
            codes = unpack_int4(self.qweight).to(torch.int32)
            s = self.scales.float()
            offset = (8 - self.qzeros.float()) * s
            # [K/G, N, 2] (scale, offset) pairs: W = (code - 8) * scale + offset
            self.register_buffer("scale_offset", torch.stack((s.T, offset.T), dim=-1).to(dtype).contiguous())
            self.register_buffer("int4pack", torch._convert_weight_to_int4pack_for_cpu(codes, 2))
            self.backend = "cpu-int4"
        else:
            weight = dequantize(self.stored(), spec).to(dtype)
            for name in spec.tensor_names():
                delattr(self, name)
            self.register_buffer("weight", weight)
            self.backend = "dequantized"
        return self.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.backend == "cpu-int8":
            if x2.shape[0] <= KERNEL_MAX_ROWS:
                y = torch._weight_int8pack_mm(x2.contiguous(), self.qweight, self.row_scales)
            else:
                y = F.linear(x2, self.qweight.to(x.dtype) * self.row_scales[:, None])
        elif self.backend == "cpu-int4":
            if x2.shape[0] <= KERNEL_MAX_ROWS:
                y = torch._weight_int4pack_mm_for_cpu(x2.contiguous(), self.int4pack, self.spec.group_size,
                                                      self.scale_offset)
            else:   # the stored form is kept for this (the kernel's packed layout is PyTorch's own)
                y = F.linear(x2, dequantize(self.stored(), self.spec).to(x.dtype))
        elif self.backend == "triton-w4a16":
            y = w4a16_matmul(x2.contiguous(), self.qweight, self.scales, self.qzeros, self.spec.group_size,
                             impl="triton")
        elif self.backend == "dequantized":
            y = F.linear(x2, self.weight)
        else:
            raise RuntimeError("QuantLinear.prepare() was not called after its buffers were filled")
        return y.view(*shape[:-1], self.out_features)


def quantize_layers(model, spec: QuantSpec) -> None:
    """Replace every decoder layer's linears by empty QuantLinear modules of the same shape (on the
    device the model is on: the loader calls this on the meta device and fills the buffers)."""
    for layer in model.layers:
        for name in LAYER_LINEARS:
            lin = getattr(layer, name)
            check_shape(spec, name, lin.out_features, lin.in_features)
            q = QuantLinear(lin.in_features, lin.out_features, spec)
            setattr(layer, name, q.to(lin.weight.device))


def prepare_layers(model, dtype: torch.dtype) -> dict[str, int]:
    """prepare() every QuantLinear; returns how many layers got each backend (for the log)."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            b = m.prepare(dtype)
            counts[b] = counts.get(b, 0) + 1
    return counts


def quantized_spec(model) -> QuantSpec | None:
    m = next((m for m in model.modules() if isinstance(m, QuantLinear)), None)
    return None if m is None else m.spec


def memory_bytes(model) -> int:
    """Bytes held by the model's parameters and buffers (its twin, if any, not counted)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
