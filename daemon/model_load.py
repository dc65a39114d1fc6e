"""Loading the local model, for the worker (daemon/worker.py): which runner runs it (llama.cpp's
kernels for a GGUF file on a CPU, engine/llama_runner.py; torch otherwise, and always as the
reference), the token ids that end any completion, and the pool of KV caches the decodes use.
Knows nothing of jobs, queues or connections.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

from daemon.config import Config


def runner_choice(cfg: Config) -> str:
    """auto | llama | torch: TRICODE_RUNNER when set to one of them, else the config's `runner`."""
    env = os.environ.get("TRICODE_RUNNER", "").strip().lower()
    return env if env in ("auto", "llama", "torch") else cfg.runner


def cpu_threads(cfg: Config) -> int:
    """The daemon's CPU thread count (torch's and llama.cpp's): `cpu_threads` when set, else one
    thread on a machine of 2 cores or fewer, else 0 (torch's own default: every core). Measured on
    2 cores (docs/benchmarks.md): LSP cache-miss p50 73 ms with 1 thread vs 84 ms with 2 idle, 127 vs
    960 ms when other work shares the cores; decode steps are too small to gain from a second thread."""
    return cfg.cpu_threads or (1 if (os.cpu_count() or 1) <= 2 else 0)


def thread_count(text: str) -> int:
    """argparse `type=` for --threads: a whole number of CPU threads, 1 or more."""
    import argparse
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count: give a whole number >= 1 "
                                         f"(this machine has {os.cpu_count() or 1} cores)")
    return n


def use_threads(threads: int) -> int:
    """Set torch's thread count to `threads` (0: leave torch's default); the count now in use, which
    is also what load_llama hands llama.cpp."""
    import torch
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def stop_token_ids(tok) -> tuple[int, ...]:
    """The ids that end any completion: the tokenizer's end-of-turn ids (a GGUF's eos,
    <|endoftext|>, <|im_end|>) and its FIM / repository control ids (a model that writes
    <|fim_prefix|> or <|file_sep|> has left the middle it was asked for). Only for a pretrained
    model's vocabulary (a GGUF's, which names its eot ids); tricode's own models stop at their EOS,
    as they were trained to (and as before)."""
    if getattr(tok, "eot_ids", None) is None:
        return ()
    ids = set(tok.eot_ids) | {tok.eos_id}
    ids |= {i for i in (getattr(tok, "fim", None) or {}).values() if i is not None}
    pad = (getattr(tok, "special_tokens", None) or {}).get("<|fim_pad|>")
    if pad is not None:
        ids.add(pad)
    return tuple(sorted(i for i in ids if i is not None))


class CachePool:
    """KV caches keyed by (kind, document), least recently used evicted (its buffers reused)."""

    def __init__(self, model, slots: int):
        self.model, self.slots = model, slots
        self.entries: OrderedDict[tuple, object] = OrderedDict()

    def get(self, key, need: int, pinned=()):
        """The cache of `key`, else a reused or new one; caches of `pinned` keys are never taken (the
        pool grows past `slots` while every cache is pinned and shrinks back later)."""
        cache = self.entries.pop(key, None)
        while len(self.entries) >= self.slots:
            victim = next((k for k in self.entries if k not in pinned), None)
            if victim is None:
                break
            old = self.entries.pop(victim)
            if cache is None:
                cache = old
                cache.crop(0)
        if cache is None or cache.max_len < need:
            size = max(need, 512)
            size = -(-size // 256) * 256
            cache = None                 # drop the old buffers before allocating the new ones
            cache = self.model.new_cache(size)
        self.entries[key] = cache
        return cache

    def bytes(self) -> int:
        """Bytes of the torch KV caches (llama.cpp's live inside its context: not counted here)."""
        return sum(c.k.numel() * c.k.element_size() * 2 for c in self.entries.values() if hasattr(c, "k"))


def load_llama(path: Path, cfg: Config, fallback, progress, runner: str | None = None):
    """The model on llama.cpp's kernels (a Checkpoint holding an engine.llama_runner.LlamaModel),
    or None for the torch path: not a GGUF file, not a CPU device, `runner = "torch"`, or the
    llama.cpp runner already failed on this path (`fallback`: an engine.runner.EagerFallback keyed by
    the path). With `runner = "auto"` a load failure falls back to torch (logged, kept in `fallback`);
    with `runner = "llama"` it is the load's error. `runner` (a caller's own flag) overrides
    runner_choice(cfg). `progress(stage, fraction, message)` is told."""
    want = runner or runner_choice(cfg)
    if want == "torch" or not path.is_file() or str(path) in fallback:
        return None
    import torch
    from engine.checkpoint import Checkpoint, pick_device
    if pick_device(cfg.device).type != "cpu":
        return None               # on a GPU the torch path is the fast one

    def load():
        from engine.llama_runner import LlamaModel
        # room for every cache the pool may hold (it grows past cache_slots while all are pinned)
        # and a refactor's longest prompt + output in each
        slots = cfg.cache_slots + max(1, cfg.batch_size)
        n_ctx = max(8192, -(-(cfg.refactor_context_tokens + cfg.refactor_max_tokens + 64) // 256) * 256 * 2,
                    (cfg.context_tokens + cfg.max_tokens + 64) * slots)
        lm = LlamaModel.load(path, threads=torch.get_num_threads(), n_ctx=n_ctx, n_seq=slots + 1)
        return Checkpoint(path=path, config=lm.cfg, model=lm, device=torch.device("cpu"),
                          dtype=torch.float32, format="gguf")

    if want == "llama":
        return load()
    progress("loading", 0.1, f"loading {path.name} into llama.cpp")
    return fallback.attempt(str(path), load)

