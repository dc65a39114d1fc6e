"""Loading the local model, for the worker (daemon/worker.py): which runner runs it (llama.cpp's
kernels for a GGUF file on a CPU, engine/llama_runner.py; torch otherwise, and always as the
reference), the token ids that end any completion, the pool of KV caches the decodes use, and the memory the
status reports.
Knows nothing of jobs, queues or connections.

A pulled AR model may have a drafter beside it (engine/drafter.py), which only the torch path runs
(llama.cpp takes no LoRA). With `runner = "auto"` llama.cpp keeps serving `ar` and `spec` with context
drafts, unless a configured mode needs diffusion forwards (`diffusion`, or `spec` without context
lookup or in the quadratic variant): then torch loads the model with its drafter. Either way the
status says which (`drafter_note`). A drafter trained for other weights is refused: the model loads
without it and the status says why.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

from daemon.config import Config

log = logging.getLogger("tricode.daemon")


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

    def peek(self, key):
        """The cache of `key` when the pool holds one (not taken: its place in the order is kept)."""
        return self.entries.get(key)

    def drop(self, key) -> None:
        """Forget the cache of `key` (its slot, and for llama.cpp its sequence, are freed)."""
        self.entries.pop(key, None)

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
    if want == "auto" and has_drafter(path) and needs_diffusion(cfg):
        return None               # only torch runs the drafter these modes need
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



def has_drafter(path: Path) -> bool:
    from engine.drafter import drafter_dir
    return drafter_dir(path).is_dir()


def needs_diffusion(cfg: Config) -> bool:
    """A configured mode needs diffusion forwards (a drafter), not only causal ones."""
    modes = (cfg.inline_mode, cfg.refactor_mode)
    return "diffusion" in modes or ("spec" in modes and (not cfg.lookup or cfg.spec_variant == "quadratic"))


def load_torch(path: Path, cfg: Config):
    """(the Checkpoint on the torch path, a note for the status or None). A drafter trained for other
    weights (engine.drafter.DrafterError) is refused: the model loads without it and the note says why."""
    from engine.checkpoint import load_checkpoint
    from engine.drafter import DrafterError
    try:
        return load_checkpoint(path, device=cfg.device, dtype=cfg.dtype), None
    except DrafterError as e:
        log.warning("drafter refused: %s", e)
        return load_checkpoint(path, device=cfg.device, dtype=cfg.dtype, lora=False), f"drafter refused: {e}"


def drafter_note(path: Path, runner: str) -> str | None:
    """What the status says of a drafter the runner in use cannot run."""
    if runner != "llama.cpp" or not has_drafter(path):
        return None
    return ("a drafter lies beside this model, but llama.cpp runs no LoRA: it serves ar and spec with "
            "context drafts; diffusion and diffusion drafts need runner = \"torch\" (or a mode that needs "
            "them, which picks torch with runner = \"auto\")")


def memory(ck, device: str, pool: CachePool | None) -> dict:
    """The daemon's memory as the status reports it: RSS, the model's torch weights, CUDA's counters,
    the torch KV caches (`ck`: the loaded Checkpoint or None)."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    if ck is not None:
        try:
            out["model_bytes"] = sum(p.numel() * p.element_size() for p in ck.model.parameters())
        except Exception:  # noqa: BLE001
            pass
        if device.startswith("cuda"):
            import torch
            out["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(ck.device))
            out["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(ck.device))
    if pool is not None:
        out["kv_cache_bytes"] = pool.bytes()
    return out
