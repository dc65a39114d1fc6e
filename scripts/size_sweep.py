"""Size sweep for the embedded model v2: CPU cost of candidate shapes with random weights.

For each candidate shape (wider before deeper) this measures, on this CPU, with the engine's own
forward (engine.model.NLDModel and its KV cache):

* `step fp32`: one AR step (one token) after a 900-token prompt, fp32 weights (today's decode path);
* `step int8`: the same with every linear layer (qkv, o, gate_up, down, head) replaced by an int8
  weight-only matmul (torch._weight_int8pack_mm, one scale per output channel, bf16 activations in
  the matmul, fp32 everywhere else);
* `step int4`: the same with int4 weights (torch._weight_int4pack_mm_for_cpu, groups of 32 along the
  input, asymmetric: a scale and an offset per group, bf16 activations);
* `prefill fp32` / `prefill bf16`: a 900-token prompt into an empty cache, fp32 weights, and on a
  bf16 copy of the weights (what the engine's prefill twin does);
* `prefill +256 fp32`: 256 new tokens on top of a cached prefix (644 tokens) (a new place in a file
  whose far text is already in the cache).

The quantized layers here are a measurement helper only (the real quantized layer and its packing
format belong in engine/). Shapes are measured round-robin (every shape once per round, rounds
repeated) and each figure is the median over rounds of per-round medians, so that load from other
processes on a shared machine hits every shape alike; ratios against the first shape (today's) are
the robust figures.

    PYTHONPATH=. nice python scripts/size_sweep.py [--rounds 5] [--json out.json]

The default clock is the calling thread's CPU time with one torch thread: on a machine shared with
other jobs, wall-clock medians of a one-token step swing by 10x+, CPU time hardly (cache and memory
contention still leak in, hence rounds and ratios). `--threads 2 --clock wall` for an idle machine.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.config import ModelConfig  # noqa: E402
from engine.model import NLDModel  # noqa: E402


@dataclass(frozen=True)
class Shape:
    hidden: int
    mlp: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def name(self) -> str:
        return f"{self.hidden}x{self.layers} mlp {self.mlp}"

    def config(self, vocab: int = 8192) -> ModelConfig:
        return ModelConfig(vocab_size=vocab, hidden_size=self.hidden, intermediate_size=self.mlp,
                           num_hidden_layers=self.layers, num_attention_heads=self.heads,
                           num_key_value_heads=self.kv_heads, head_dim=64, rope_theta=10000.0,
                           rope_scaling=None, max_position_embeddings=4096, mask_token_id=1,
                           eos_token_id=0, bos_token_id=0, block_size=8, torch_dtype="float32")


SHAPES = (
    Shape(384, 1024, 6, 6, 2),     # today's embedded model (the reference row)
    Shape(512, 1408, 6, 8, 2),
    Shape(512, 1408, 8, 8, 2),
    Shape(640, 1728, 6, 10, 2),
    Shape(640, 1728, 8, 10, 2),
    Shape(768, 2048, 6, 12, 4),
    Shape(768, 2048, 8, 12, 4),
    Shape(1024, 2752, 6, 16, 4),
)


class Int8Linear(nn.Module):
    """y = x @ (q * s).T with q int8 [N, K] and one fp32 scale per output channel."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        s = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("q", (w / s[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("s_bf16", s.to(torch.bfloat16))
        self.out_features = lin.out_features
        self.register_buffer("weight", torch.empty(0))  # the model asks its head for dtype and device

    def forward(self, x):
        # bf16 activations: on an AVX2 CPU the kernel's fp32-activation path is not vectorised
        # (3-4x slower than an fp32 matmul), its bf16 path is (3x faster than one)
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.q, self.s_bf16)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


class Int4Linear(nn.Module):
    """Asymmetric int4 weights in groups of `group` along the input, packed for the CPU kernel."""

    def __init__(self, lin: nn.Linear, group: int = 32):
        super().__init__()
        w = lin.weight.detach().float()
        n, k = w.shape
        g = w.reshape(n, k // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-8) / 15.0
        q = ((g - lo) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(q, 1))
        # the kernel computes (q - 8) * scale + zero: shift the offset by 8 steps
        sz = torch.stack([scale.reshape(n, -1).t(), (lo + 8 * scale).reshape(n, -1).t()], -1)
        self.register_buffer("sz", sz.contiguous().to(torch.bfloat16))
        self.group, self.out_features = group, n
        self.register_buffer("weight", torch.empty(0))

    def forward(self, x):
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]).to(torch.bfloat16), self.packed,
                                              self.group, self.sz)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


def quantized(model: NLDModel, layer_type) -> NLDModel:
    q = copy.deepcopy(model)
    for parent in [q] + list(q.layers):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, layer_type(child))
    return q


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())
               ) - model.inv_freq.numel() * 4


CLOCK = time.perf_counter


def time_step(model: NLDModel, cache, n: int) -> float:
    """Median ms of a one-token causal step appended at the cache's end (then cropped back)."""
    base = cache.length
    x = torch.tensor([[7]])
    out = []
    for _ in range(n + 3):
        t0 = CLOCK()
        model(x, cache, last_only=True)
        out.append((CLOCK() - t0) * 1e3)
        cache.crop(base)
    return statistics.median(out[3:])


def time_prefill(model: NLDModel, cache_of, ids: list[int], start: int, n: int) -> float:
    """Median ms of prefilling ids[start:] into a cache that already holds ids[:start]."""
    out = []
    for _ in range(n):
        cache = cache_of()
        if start:
            model(torch.tensor([ids[:start]]), cache, last_only=True)
        x = torch.tensor([ids[start:]])
        t0 = CLOCK()
        model(x, cache, last_only=True)
        out.append((CLOCK() - t0) * 1e3)
    return statistics.median(out)


class Candidate:
    def __init__(self, shape: Shape, prompt: list[int]):
        torch.manual_seed(0)
        self.shape = shape
        self.fp32 = NLDModel(shape.config()).eval().requires_grad_(False)
        with torch.no_grad():
            for p in self.fp32.parameters():   # trained-like magnitudes; timings do not depend on them
                if p.dim() >= 2:
                    p.normal_(0, p.shape[-1] ** -0.5)
        self.bf16 = copy.deepcopy(self.fp32).to(torch.bfloat16)
        self.bf16.inv_freq = self.fp32.inv_freq
        self.int8 = quantized(self.fp32, Int8Linear)
        self.int4 = quantized(self.fp32, Int4Linear)
        self.params = sum(p.numel() for p in self.fp32.parameters())
        self.prompt = prompt
        self.caches = {}
        with torch.inference_mode():
            for kind in ("fp32", "int8", "int4"):
                c = self.fp32.new_cache(1024)
                getattr(self, kind)(torch.tensor([prompt]), c, last_only=True)
                self.caches[kind] = c
        self.samples: dict[str, list[float]] = {}

    def measure(self, steps: int) -> None:
        new = self.fp32.new_cache
        with torch.inference_mode():
            got = {
                "step fp32": time_step(self.fp32, self.caches["fp32"], steps),
                "step int8": time_step(self.int8, self.caches["int8"], steps),
                "step int4": time_step(self.int4, self.caches["int4"], steps),
                "prefill fp32": time_prefill(self.fp32, lambda: new(1024), self.prompt, 0, 1),
                "prefill bf16": time_prefill(self.bf16, lambda: new(1024), self.prompt, 0, 1),
                "prefill +256 fp32": time_prefill(self.fp32, lambda: new(1024), self.prompt,
                                                  len(self.prompt) - 256, 1),
            }
        for k, v in got.items():
            self.samples.setdefault(k, []).append(v)

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) for k, v in self.samples.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=25, help="one-token steps timed per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("thread", "wall"), default="thread",
                    help="thread: CPU time of the calling thread (exact with --threads 1 and robust on a "
                         "loaded machine: time spent descheduled does not count); wall: elapsed time")
    ap.add_argument("--prompt", type=int, default=900)
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="measure the first N shapes")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.clock == "thread" and args.threads != 1:
        ap.error("--clock thread measures one thread: use --threads 1 or --clock wall")
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter
    prompt = torch.randint(6, 8192, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.time()
    cands = [Candidate(s, prompt) for s in SHAPES[:args.shapes]]
    print(f"built {len(cands)} candidates in {time.time() - t0:.0f} s; torch {torch.__version__}, "
          f"{args.threads} threads", file=sys.stderr)
    for r in range(args.rounds):
        for c in cands:
            c.measure(args.steps)
        print(f"round {r + 1}/{args.rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr)
    ref = cands[0].medians()
    cols = ("step fp32", "step int8", "step int4", "prefill fp32", "prefill bf16", "prefill +256 fp32")
    print(f"\n{args.threads} torch thread(s), {args.clock} clock, prompt {args.prompt} tokens, medians of {args.rounds} rounds "
          f"(x = ratio to today's fp32 step / today's prefill of the same kind)\n")
    print("| shape | params | int8 MB | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    rows = []
    for c in cands:
        m = c.medians()
        cells = []
        for col in cols:
            base = ref["step fp32"] if col.startswith("step") else ref[col]
            cells.append(f"{m[col]:.1f} ({m[col] / base:.2f}x)")
        int8_mb = weight_bytes(c.int8) / 1e6
        print(f"| {c.shape.name} | {c.params / 1e6:.1f}M | {int8_mb:.0f} | " + " | ".join(cells) + " |")
        rows.append({"shape": vars(c.shape), "params": c.params, "int8_mb": int8_mb, "ms": m,
                     "samples": c.samples})
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "prompt": args.prompt,
                                         "rounds": args.rounds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
