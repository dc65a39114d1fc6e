"""A CPU stand-in for the torch.cuda calls of a CUDA-graph capture (engine.runner.CudaGraphAPI), so
that the runner's real capture/replay bookkeeping runs on a machine without CUDA.

What it models is the one property of a CUDA graph the bookkeeping must respect: a graph reads its
inputs by address and holds no reference to them. At capture the stand-in runs the step once under a
TorchDispatchMode that records every tensor storage the step read but did not make (the graph's
inputs: weights, cache, static inputs, RoPE table, row offsets, LoRA mask ...), weakly, with its
address. At replay it first collects garbage and makes new allocations (what reuses a freed block on
a GPU), then checks that every recorded storage is still alive at the same address, and raises
`FreedInput` naming the op that read it if not; only then does it run the step again (the
step is held weakly too: a graph does not keep the Python that built it) and copies the result into
the captured output, as a replay overwrites its static output.

It knows nothing of models; `capture_fails` makes the next captures raise (the fallback tests).
"""
from __future__ import annotations

import gc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class FreedInput(AssertionError):
    """A captured graph would read memory that is no longer its input's."""


class _Reads(TorchDispatchMode):
    """Records the storages ops read that were not made by an earlier op of the same capture."""

    def __init__(self):
        super().__init__()
        self.made: set[int] = set()                    # storage addresses written by ops of the capture
        self.inputs: dict[int, tuple] = {}             # address -> (weakref to storage, nbytes, what read it)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fresh = func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and not fresh:
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if st.nbytes() and ptr not in self.made and ptr not in self.inputs:
                    self.inputs[ptr] = (weakref.ref(st), st.nbytes(),
                                        f"{func} reading a {t.dtype} {list(t.shape)} tensor")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in self.inputs:
                    self.made.add(ptr)
        return out


class StandInGraph:
    def __init__(self, fn, out: torch.Tensor, reads: _Reads):
        self.fn = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else weakref.ref(fn)
        self.out = out
        self.inputs = list(reads.inputs.items())
        self.replays = 0

    def check_inputs(self) -> None:
        gc.collect()
        churn = [torch.empty(n, dtype=torch.uint8) for _, (_, n, _) in self.inputs for _ in range(2)]
        for c in churn:
            c.fill_(0xA5)                              # a reused block now holds other data
        for ptr, (ref, nbytes, what) in self.inputs:
            st = ref()
            if st is None:
                raise FreedInput(f"a captured graph input was freed: {what} (captured at {ptr:#x}, {nbytes} bytes)")
            if st.data_ptr() != ptr or st.nbytes() != nbytes:
                raise FreedInput(f"a captured graph input moved: {what} ({ptr:#x} -> {st.data_ptr():#x})")

    def replay(self) -> None:
        self.check_inputs()
        fn = self.fn()
        if fn is None:
            raise FreedInput("the captured step is gone (nothing holds what it reads)")
        with torch.inference_mode():
            self.out.copy_(fn())
        self.replays += 1


class RecordingGraphAPI:
    """engine.runner.CudaGraphAPI on a CPU; see the module doc."""

    def __init__(self):
        self.graphs: list[StandInGraph] = []
        self.capture_fails = 0          # the next this-many captures raise
        self.captures_tried = 0
        self.warm_ups = 0

    def pin(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def pool(self):
        return object()

    def warm_up(self, fn, times: int) -> None:
        self.warm_ups += 1
        for _ in range(times):
            fn()

    def capture(self, fn, pool):
        self.captures_tried += 1
        if self.capture_fails:
            self.capture_fails -= 1
            raise RuntimeError("stand-in capture failure (CUDA error: operation not permitted when stream is capturing)")
        reads = _Reads()
        with reads:
            out = fn()
        g = StandInGraph(fn, out, reads)
        self.graphs.append(g)
        return g, out
