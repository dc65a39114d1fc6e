"""What runs the forwards the decoders ask for, chosen by device (DESIGN.md §6).

The decoders yield `Forward`s (generate.py); `run_forwards` hands them to the model's runner:

  EagerRunner      NLDModel.forward as it is: the reference, and what a CPU runs (the forward itself
                   is kept lean there: see model.py)
  CudaGraphRunner  on CUDA: each step shape (a one-token AR step, a draft or verify of a block, a
                   quadratic step) of one KV cache is captured once as a CUDA graph and replayed
                   at every later step. A replay launches the whole forward with one call: no
                   per-op Python, no dispatcher, no host sync inside the step. What makes one graph
                   serve every step is `static_forward`: the cache length lives in a device tensor
                   (start slot), K/V are written with index_copy_ at device indices, RoPE rows are
                   gathered from the model's table, and attention is `attention_cached` (lengths on
                   the device, a launch grid fixed by the cache's capacity). The host writes the
                   step's ids and start slot into pinned staging buffers, replays, and gets logits
                   in a static buffer (cloned before the next replay can overwrite them).

What a graph cannot serve runs eagerly: the prompt prefill (a new width every time), a batch of
several requests, positions at or past YaRN's original context (the query scale is then not 1),
the first uses of a (cache, shape) pair (graphs are captured on the `capture_after`-th use, so a
one-off cache never pays for a capture), and a step shape whose capture failed (EagerFallback: one
warning, never retried). A graph reads its inputs by address and holds none of them, so each `_Graph`
holds every tensor its step reads, its RoPE table included. The torch.cuda calls of a capture go
through `CudaGraphAPI`, the seam a CPU stand-in uses in the tests (tests/graph_standin.py). Graphs live as long as their cache (the daemon keeps a small
pool of caches) and share one memory pool; the oldest are dropped past `max_graphs`.

This module knows nothing of decoders or text; it runs forwards and returns logits [T, V] with the
mask id ruled out, like the eager path.
"""
from __future__ import annotations

import logging
import os
import time
import weakref
from collections import OrderedDict

import torch

from engine.kv_cache import KVCache
from engine.model import NLDModel

log = logging.getLogger(__name__)


class EagerRunner:
    """NLDModel.forward per batch of forwards of one key; the reference every runner must equal."""

    name = "eager"

    def __init__(self, model: NLDModel):
        self.model = model

    def run(self, fs: list) -> list[torch.Tensor]:
        model, f = self.model, fs[0]
        device = model.head.weight.device
        net = model.prefill_twin if f.prefill and model.prefill_twin is not None else model
        with torch.inference_mode():
            x = torch.tensor([g.ids for g in fs], dtype=torch.long, device=device)
            positions = None if f.positions is None else torch.tensor([g.positions for g in fs], device=device)
            lora = torch.tensor(f.lora, device=device) if isinstance(f.lora, tuple) else f.lora
            logits = net(x, [g.cache for g in fs] if len(fs) > 1 else f.cache, pattern=f.pattern,
                         write=f.write, positions=positions, group=f.group, lora=lora, last_only=f.last_only)
            if model.cfg.mask_token_id is not None:   # None: an AR checkpoint, no mask token
                logits[..., model.cfg.mask_token_id] = float("-inf")  # the mask id is never a prediction
        return list(logits)


def static_forward(model: NLDModel, cache: KVCache, ids: torch.Tensor, start: torch.Tensor,
                   positions: torch.Tensor, *, pattern: str, group: int = 0,
                   lora: bool | torch.Tensor = False, last_only: bool = False,
                   table: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One forward of ids [1, T] whose K/V go to cache slots [start, start + T), with every length a
    device tensor (start: long [1]; positions: long [T], the RoPE positions) -> logits [1, T or 1, V],
    the mask id ruled out. Nothing here reads a tensor on the host, so the call can be captured as a
    CUDA graph and replayed for any start. Same layers and arithmetic as NLDModel.forward except the
    attention launch (`attention_cached`), so logits agree with it to rounding, not bit for bit.
    Does not commit: the caller advances `cache.length` (like a write=True forward would).
    `table`: the RoPE table (model.rope_table) to read; a graph passes the one it holds, since the
    model replaces its table by a larger one when a longer forward needs it."""
    from triton_kernels.attention import attention_cached
    T = ids.shape[1]
    cos_t, sin_t, table_pos = table if table is not None else model.rope_table(cache.max_len + T)
    assert table_pos.numel() >= cache.max_len + T, "the RoPE table must cover the cache and the step"
    cos, sin = cos_t.index_select(1, positions), sin_t.index_select(1, positions)
    slots = start + table_pos[:T]
    lengths = start + T
    x = model.embed(ids).view(T, -1)
    for i, layer in enumerate(model.layers):
        def attend(q, kv, i=i):
            cache.kv[i].index_copy_(3, slots, kv.permute(2, 0, 3, 1, 4))
            return attention_cached(q, cache.k[i], cache.v[i], lengths, pattern=pattern, group=group)
        x = layer(x, cos, sin, None, attend, lora)
    if last_only:
        x = x[-1:]
    from engine.model import rms_norm
    logits = model.head(rms_norm(x, model.norm, model.cfg.rms_norm_eps))
    if model.cfg.mask_token_id is not None:
        logits[:, model.cfg.mask_token_id] = float("-inf")
    return logits.view(1, x.shape[0], -1)


class CudaGraphAPI:
    """The torch.cuda calls a capture makes, in one object: the one seam through which a test runs the
    runner's capture/replay bookkeeping on a CPU with a stand-in (tests/graph_standin.py)."""

    def pin(self, t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory()

    def pool(self):
        return torch.cuda.graph_pool_handle()

    def warm_up(self, fn, times: int) -> None:
        """Run fn on a side stream (what a capture needs first: Triton compiles, cuBLAS picks its
        kernels, the caching allocator settles)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(times):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn, pool):
        """(graph, fn's output captured into it). The graph keeps no reference to what fn reads."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
        return graph, out


class EagerFallback:
    """Keys whose fast path failed: the fast path is tried for a key until it raises once; then the
    failure is logged once (a warning) and the key runs eagerly from then on, never retried. One
    mechanism for every runner that has a fast path (CUDA graphs here)."""

    def __init__(self, what: str):
        self.what = what
        self.failed: dict = {}           # key -> the error, as text

    def __contains__(self, key) -> bool:
        return key in self.failed

    def attempt(self, key, fn):
        """fn() -> its result, or None after marking `key` eager if it raised."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure of the fast path means: run eagerly
            self.failed[key] = f"{type(e).__name__}: {e}"
            log.warning("%s failed for %s (%s); this key runs eagerly from now on", self.what, key,
                        self.failed[key], exc_info=log.isEnabledFor(logging.DEBUG))
            return None


class _Graph:
    """One captured step: static inputs (device + pinned host staging), the graph, its output.

    A CUDA graph reads its inputs by address and keeps no reference to them: every tensor the step
    reads is an attribute of this object (ids, start, positions, the row offsets `arange`, the LoRA
    row mask, the RoPE table it was captured with), so none is freed while the graph can replay.
    Holds its cache weakly: the graph writes the cache's buffers by address, and is dropped (never
    replayed) once the cache is gone."""

    def __init__(self, model: NLDModel, cache: KVCache, f, pool, api: CudaGraphAPI):
        dev = model.head.weight.device
        T = len(f.ids)
        self.model = model
        self.cache_ref = weakref.ref(cache)
        self.explicit = f.positions is not None
        self.ids = torch.zeros((1, T), dtype=torch.long, device=dev)
        self.start = torch.zeros(1, dtype=torch.long, device=dev)
        self.positions = torch.zeros(T, dtype=torch.long, device=dev)
        self.ids_h = api.pin(torch.zeros((1, T), dtype=torch.long))
        self.start_h = api.pin(torch.zeros(1, dtype=torch.long))
        self.pos_h = api.pin(torch.zeros(T, dtype=torch.long))
        self.arange = torch.arange(T, device=dev)
        self.lora = torch.tensor(f.lora, device=dev) if isinstance(f.lora, tuple) else f.lora
        # the table is made before the capture (it must not grow inside it) and held here: a larger
        # table made later replaces the model's, not this one
        self.table = model.rope_table(cache.max_len + T)
        self.kw = dict(pattern=f.pattern, group=f.group, lora=self.lora, last_only=f.last_only, table=self.table)
        self._load(f, cache)
        with torch.inference_mode():
            api.warm_up(self._step, 2)           # compile and warm the Triton kernels; scratch slots only
            self.graph, self.out = api.capture(self._step, pool)

    def _step(self) -> torch.Tensor:
        cache = self.cache_ref()
        pos = self.positions if self.explicit else self.start + self.arange
        return static_forward(self.model, cache, self.ids, self.start, pos, **self.kw)

    def _load(self, f, cache: KVCache) -> None:
        # pinned staging + non_blocking: the copies queue behind the previous step, which the
        # decoder has already read back (its logits), so the staging buffers are free again
        self.ids_h.numpy()[0, :] = f.ids
        self.start_h[0] = cache.length
        self.ids.copy_(self.ids_h, non_blocking=True)
        self.start.copy_(self.start_h, non_blocking=True)
        if self.explicit:
            self.pos_h.numpy()[:] = f.positions
            self.positions.copy_(self.pos_h, non_blocking=True)

    def replay(self, f, cache: KVCache) -> torch.Tensor:
        self._load(f, cache)
        self.graph.replay()
        return self.out.clone()     # the next replay overwrites `out`; a decoder may still hold these


class CudaGraphRunner:
    """CUDA-graph steps per (cache, step shape); everything else through the eager runner. A step
    shape whose capture fails runs eagerly from then on (EagerFallback: one warning, no retry)."""

    name = "cuda-graphs"

    def __init__(self, model: NLDModel, *, capture_after: int = 2, max_graphs: int = 48, max_width: int = 2048,
                 api: CudaGraphAPI | None = None):
        self.model, self.eager = model, EagerRunner(model)
        self.capture_after, self.max_graphs, self.max_width = capture_after, max_graphs, max_width
        self.api = api or CudaGraphAPI()
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: dict[tuple, tuple[weakref.ref, int]] = {}
        self.fallback = EagerFallback("CUDA graph capture")
        self.pool = None
        self.capture_ms: list[float] = []

    def eligible(self, fs: list) -> bool:
        f = fs[0]
        r = self.model.cfg.rope_scaling
        top = max(f.positions) + 1 if f.positions else f.cache.length + len(f.ids)
        return (len(fs) == 1 and not f.prefill and len(f.ids) <= self.max_width
                and f.cache.kv.shape[2] == 1
                and f.cache.length + len(f.ids) <= f.cache.max_len
                and f.key not in self.fallback
                and (r is None or not r.query_scale_beta or top <= r.original_max_position_embeddings))

    def run(self, fs: list) -> list[torch.Tensor]:
        if not self.eligible(fs):
            return self.eager.run(fs)
        f = fs[0]
        k = (id(f.cache),) + f.key
        g = self.graphs.get(k)
        if g is not None and g.cache_ref() is not f.cache:     # an old cache's id, reused
            del self.graphs[k]
            g = None
        if g is None:
            self._forget_dead()
            ref, n = self.seen.get(k, (None, 0))
            n = n + 1 if ref is not None and ref() is f.cache else 1
            self.seen[k] = (weakref.ref(f.cache), n)
            if n < self.capture_after:
                return self.eager.run(fs)
            g = self._capture(k, f)
            if g is None:                                       # failed: this shape runs eagerly
                return self.eager.run(fs)
        else:
            self.graphs.move_to_end(k)
        logits = g.replay(f, f.cache)
        if f.write:
            f.cache.commit(list(f.ids))
        return list(logits)

    def _capture(self, k: tuple, f) -> _Graph | None:
        t0 = time.perf_counter()
        if self.pool is None:
            self.pool = self.api.pool()
        g = self.fallback.attempt(f.key, lambda: _Graph(self.model, f.cache, f, self.pool, self.api))
        if g is None:
            return None
        self.graphs[k] = g
        self.capture_ms.append((time.perf_counter() - t0) * 1e3)
        log.info("captured a CUDA graph for %s x %d tokens in %.0f ms (%d graphs)", f.pattern, len(f.ids),
                 self.capture_ms[-1], len(self.graphs))
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return g

    def _forget_dead(self) -> None:
        """Drop the graphs and use counts of caches that no longer exist."""
        for k in [k for k, g in self.graphs.items() if g.cache_ref() is None]:
            del self.graphs[k]
        for k in [k for k, (ref, _) in self.seen.items() if ref() is None]:
            del self.seen[k]


def runner_for(model: NLDModel):
    """The model's runner, made on first use: CUDA graphs on a GPU (TRICODE_CUDA_GRAPHS=0 turns them
    off), eager elsewhere."""
    r = getattr(model, "_runner", None)
    if r is None:
        if model.head.weight.is_cuda and os.environ.get("TRICODE_CUDA_GRAPHS", "1") != "0":
            r = CudaGraphRunner(model)
        else:
            r = EagerRunner(model)
        model.__dict__["_runner"] = r         # not a submodule
    return r
