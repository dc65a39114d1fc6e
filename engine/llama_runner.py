"""A GGUF model run by llama.cpp's own kernels, at its quantized width, behind tricode's runner interface.

On a CPU the step of a 0.5B-1.5B model is decided by its kernels: llama.cpp multiplies Q4_K/Q5_0/Q8_0
blocks directly (AVX2, AVX512, VNNI), reading a quarter of the bytes of fp32 weights, where a torch
forward would dequantize them to fp32 first (docs/cpu_speed.md has the measurements). So this module
keeps the GGUF inside llama.cpp (through llama-cpp-python's low-level API) and lets the unchanged
decoders of generate.py drive it:

  LlamaModel   the loaded GGUF: one llama.cpp context whose KV memory holds one llama.cpp sequence per
               tricode cache, and the few things the decoders read from a model (`cfg`, `device`,
               `kernel_impl`, `new_cache`); it has no torch weights
  LlamaCache   what a KVCache is to the decoders (length, token_ids, max_len, crop, commit,
               common_prefix), with the K/V living in the model's llama.cpp sequence. `crop` only moves
               `length`: the runner drops llama.cpp's cells past it lazily, before the next forward on
               that cache (rejected drafts, a new prompt reusing a cached prefix)
  LlamaRunner  runs the `Forward`s the decoders yield: causal passes (a prefill, an AR step, the verify
               of a context draft), several forwards of one key as one llama_decode over their
               sequences (`generate.step`), logits [T, V] (or [1, V] with last_only) as torch tensors

Only what a checkpoint without a drafter needs is served: the `block` and `quadratic` patterns, LoRA
and explicit positions raise LlamaPatternError (an AR model decodes `ar`, and `spec` with context drafts).
This module knows nothing of text (the daemon's tokenizer encodes), sockets or LSP.
"""
from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelConfig
from engine.kv_cache import CacheFullError, TokenLedger

log = logging.getLogger(__name__)


# A k-token verify after ~500 tokens vs a one-token step, Qwen2.5-Coder 0.5B Q4_K_M on the 2-core
# AVX512 Xeon, flash attention off, 1 and 2 threads alike (docs/cpu_speed.md section 7; with flash
# attention on it was 1.3 / 1.85 / 3.2 / 5.3); replaced by a measurement where one is taken.
DEFAULT_STEP_COSTS = {1: 1.0, 2: 1.12, 4: 1.45, 8: 2.25, 16: 3.4}


class LlamaModelError(ValueError):
    """A GGUF file that cannot be loaded; the message says which and what to do."""


class LlamaPatternError(ValueError):
    """A forward the llama.cpp runner cannot run (a diffusion draft, LoRA, explicit positions)."""


def _llama():
    try:
        import llama_cpp
    except ImportError as e:
        raise LlamaModelError(f"llama-cpp-python is not installed ({e}); `pip install llama-cpp-python` "
                              "(it builds llama.cpp from source)") from None
    return llama_cpp


_quiet_lock = threading.Lock()
_quiet_cb = None


def _quiet_llama_log() -> None:
    """Send llama.cpp's own log lines (hundreds at every load) to this module's logger at debug level."""
    global _quiet_cb
    L = _llama()
    with _quiet_lock:
        if _quiet_cb is None:
            def forward(level, text, _user):
                if log.isEnabledFor(logging.DEBUG) and text:
                    log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())
            _quiet_cb = L.llama_log_callback(forward)       # kept alive: llama.cpp holds the pointer
            L.llama_log_set(_quiet_cb, ctypes.c_void_p(0))


class LlamaCache(TokenLedger):
    """A tricode cache whose K/V live in llama.cpp sequence `seq` of `model`'s context.

    `length` and `token_ids` are what the decoders read and crop, as for KVCache; `synced` is how many
    tokens llama.cpp's sequence holds, brought down to `length` before the next forward runs."""

    def __init__(self, model: "LlamaModel", seq: int, max_len: int):
        super().__init__(max_len)
        self.model, self.seq = model, seq
        self.synced = 0
        weakref.finalize(self, model._release, seq)


def _meta(L, model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return buf.value.decode() if n >= 0 else None


class LlamaModel:
    """A GGUF model loaded into llama.cpp; see the module docstring. Make it with `LlamaModel.load`."""

    device = torch.device("cpu")
    kernel_impl = "reference"          # verify/unmask ops: the PyTorch references (logits arrive on the CPU)
    has_lora = False
    prefill_twin = None

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None, n_ctx: int = 8192, n_seq: int = 8,
             n_batch: int = 512, n_outputs: int = 256) -> "LlamaModel":
        """Load `path` (a .gguf file) with `threads` CPU threads (default: torch's), room for `n_ctx`
        tokens of K/V shared by up to `n_seq` caches, prompts run `n_batch` tokens per llama_decode and
        at most `n_outputs` rows of logits per call (a verify needs k, a prefill 1)."""
        path = Path(path)
        if not path.is_file():
            raise LlamaModelError(f"{path}: no such file; pass the path of a GGUF model file (.gguf)")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise LlamaModelError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                                  "convert the checkpoint with llama.cpp's convert_hf_to_gguf.py")
        return cls(path, threads=threads or torch.get_num_threads(), n_ctx=n_ctx, n_seq=n_seq, n_batch=n_batch,
                   n_outputs=n_outputs)

    def __init__(self, path: Path, *, threads: int, n_ctx: int, n_seq: int, n_batch: int, n_outputs: int):
        L = self._L = _llama()
        _quiet_llama_log()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        # llama.cpp's extra CPU buffer types (weights repacked for AMX / interleaved kernels) crash
        # llama_decode with a segmentation fault on the AMX-capable Xeon VM this was built on
        # (llama-cpp-python 0.3.36, also through its high-level Llama): plain CPU buffers only
        mp.use_extra_bufts = False
        self._model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise LlamaModelError(f"{path}: llama.cpp could not load this GGUF (an unsupported architecture "
                                  "or a damaged file; run with debug logging to see llama.cpp's reason)")
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True              # the sequences share n_ctx cells: a long prompt may use most of them
        cp.n_outputs_max = n_outputs
        cp.no_perf = True
        # no flash attention: its CPU kernel makes a k-token verify dear (4 tokens 1.85x a one-token
        # step with it, 1.45x without; 16 tokens 5.3x vs 3.4x), and on 2 threads it flipped a near
        # tie (0.04 logits apart) between a verify and an AR step (tests/test_llama_runner.py)
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = L.llama_init_from_model(self._model, cp)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise LlamaModelError(f"{path}: llama.cpp could not make a context of {n_ctx} tokens "
                                  f"x {n_seq} sequences (out of memory?)")
        self._mem = L.llama_get_memory(self._ctx)
        vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = L.llama_vocab_n_tokens(vocab)
        self.path, self.source, self.threads = path, str(path), threads
        self.n_ctx, self.n_seq, self.n_batch, self.n_outputs = n_ctx, n_seq, n_batch, n_outputs
        self.cfg = self._config(path, vocab)
        self._free = list(range(n_seq))
        self._released: list[int] = []   # sequences of caches gone; cleared before the next forward
        self._batch = L.llama_batch_init(n_batch, 0, n_seq)
        self._lock = threading.Lock()
        self.__dict__["_runner"] = LlamaRunner(self)    # what engine.runner.runner_for hands the decoders
        log.info("llama.cpp model %s: %s, %d layers, %d threads, %d KV cells for %d caches", path.name,
                 self.cfg.model_type, self.cfg.num_hidden_layers, threads, n_ctx, n_seq)

    def _config(self, path: Path, vocab) -> ModelConfig:
        """The decoders' view of the model: its shape, EOS/BOS from the GGUF, and no drafter."""
        L, m = self._L, self._model
        arch = _meta(L, m, "general.architecture") or "llama"
        g = lambda k, d=None: _meta(L, m, f"{arch}.{k}") or d  # noqa: E731
        heads = L.llama_model_n_head(m)
        d = {
            "model_type": arch, "vocab_size": self.n_vocab, "hidden_size": L.llama_model_n_embd(m),
            "intermediate_size": int(g("feed_forward_length", 0)), "num_hidden_layers": L.llama_model_n_layer(m),
            "num_attention_heads": heads, "num_key_value_heads": L.llama_model_n_head_kv(m),
            "head_dim": int(g("attention.key_length", 0)) or L.llama_model_n_embd(m) // heads,
            "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(g("rope.freq_base", 10000.0)),
            "max_position_embeddings": L.llama_model_n_ctx_train(m),
            "eos_token_id": L.llama_vocab_eos(vocab), "bos_token_id": max(0, L.llama_vocab_bos(vocab)),
            "torch_dtype": "float32", "block_size": 4,      # no mask token: ModelConfig gives AR families none
        }
        return ModelConfig.from_dict(d)

    # ---------------------------------------------------------------- caches

    def new_cache(self, max_len: int, batch: int = 1) -> LlamaCache:
        if batch != 1:
            raise ValueError("a llama.cpp cache holds one sequence (batch 1); batch requests with generate.step")
        if max_len > self.n_ctx:
            raise CacheFullError(f"a cache of {max_len} tokens does not fit this model's llama.cpp context of "
                                 f"{self.n_ctx}; load it with a larger n_ctx")
        with self._lock:
            self._collect()
            if not self._free:
                raise CacheFullError(f"all {self.n_seq} llama.cpp sequences are held by "
                                     "live caches; drop one or load the model with a larger n_seq")
            seq = self._free.pop(0)
        return LlamaCache(self, seq, max_len)

    def _release(self, seq: int) -> None:
        """A cache was garbage-collected (any thread): its sequence is cleared at the next forward."""
        self._released.append(seq)

    def _collect(self) -> None:
        while self._released:
            seq = self._released.pop()
            self._L.llama_memory_seq_rm(self._mem, seq, -1, -1)
            self._free.append(seq)

    def sync(self, cache: LlamaCache) -> None:
        """Drop llama.cpp's cells past the cache's length (what the decoders cropped since)."""
        if cache.synced > cache.length:
            if not self._L.llama_memory_seq_rm(self._mem, cache.seq, cache.length, -1):
                raise RuntimeError(f"llama.cpp could not remove positions >= {cache.length} of sequence {cache.seq}")
            cache.synced = cache.length

    # ---------------------------------------------------------------- decode

    def decode(self, items: list[tuple[LlamaCache, list[int], bool]]) -> np.ndarray:
        """Run each (cache, ids, all_logits) at its cache's current length, as one llama_decode per
        n_batch tokens, appending the ids' K/V to the cache's sequence -> logits [rows, V] float32 (a
        copy): every position of an item with all_logits, else its last position, in item order.
        The caches' `synced` advance; their `length` is the caller's to commit."""
        L = self._L
        with self._lock:
            self._collect()
            for cache, _, _ in items:
                if cache.model is not self:
                    raise ValueError("this cache belongs to another llama.cpp model")
                self.sync(cache)
            flat = [(c, c.synced + i, t, every or i == len(ids) - 1)
                    for c, ids, every in items for i, t in enumerate(ids)]
            n_rows = sum(out for *_, out in flat)
            if n_rows > self.n_outputs:
                raise LlamaPatternError(f"{n_rows} rows of logits in one step; this model was loaded for at "
                                        f"most {self.n_outputs} (n_outputs)")
            rows: list[np.ndarray] = []
            b = self._batch
            for s in range(0, len(flat), self.n_batch):
                part = flat[s:s + self.n_batch]
                for j, (c, pos, t, out) in enumerate(part):
                    b.token[j], b.pos[j], b.n_seq_id[j], b.logits[j] = t, pos, 1, out
                    b.seq_id[j][0] = c.seq
                b.n_tokens = len(part)
                rc = L.llama_decode(self._ctx, b)
                if rc == 1:
                    raise CacheFullError(f"llama.cpp's context of {self.n_ctx} KV cells is full (the caches hold "
                                         f"{sum(c.synced for c, *_ in items)} of them here); drop caches or "
                                         "load the model with a larger n_ctx")
                if rc != 0:
                    raise RuntimeError(f"llama_decode failed with code {rc}")
                k = sum(out for *_, out in part)
                if k:
                    ptr = L.llama_get_logits(self._ctx)
                    rows.append(np.ctypeslib.as_array(ptr, shape=(k, self.n_vocab)).copy())
                for c, pos, _, _ in part:
                    c.synced = max(c.synced, pos + 1)
        return np.concatenate(rows) if len(rows) > 1 else rows[0]

    def set_threads(self, threads: int) -> None:
        """Run the next steps on `threads` CPU threads (daemon/cpu_share.py picks them per step)."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        with self._lock:
            self._L.llama_set_n_threads(self._ctx, threads, threads)
            self.threads = threads

    @property
    def runner(self) -> "LlamaRunner":
        return self.__dict__["_runner"]

    def measure_step_costs(self, context: list[int] | None = None, ks=(1, 2, 4, 8, 16), repeat: int = 5) -> dict:
        """The cost of a verify of k tokens after `context` (default: 500 arbitrary ids) on this machine:
        {"ms": {k: median ms}, "relative": {k: ms / ms of one token}}. `relative` is what
        `LlamaRunner.step_costs` takes (the draft sizing of lookup.py reads it)."""
        import statistics
        import time
        context = list(context) if context else [1000 + i % 5000 for i in range(500)]
        cache = self.new_cache(len(context) + max(ks) + 1)
        self.decode([(cache, context, False)])
        cache.commit(context)
        ts: dict[int, list[float]] = {k: [] for k in ks}
        for i in range(repeat + 1):                 # the widths interleaved: a change of load hits all
            for k in ks:
                t0 = time.perf_counter()
                self.decode([(cache, context[:k], True)])      # not committed: dropped by the next sync
                if i:
                    ts[k].append((time.perf_counter() - t0) * 1e3)
        ms = {k: round(statistics.median(v), 3) for k, v in ts.items()}
        return {"ms": ms, "relative": {k: round(v / ms[min(ms)], 3) for k, v in ms.items()}}

    def close(self) -> None:
        """Free llama.cpp's context and weights (also done when the model is garbage-collected)."""
        L = self._L
        if getattr(self, "_ctx", None):
            L.llama_batch_free(self._batch)
            L.llama_free(self._ctx)
            L.llama_model_free(self._model)
            self._ctx = self._model = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class LlamaRunner:
    """Runs the decoders' forwards on a LlamaModel (the role of runner.EagerRunner for an NLDModel)."""

    name = "llama.cpp"

    def __init__(self, model: LlamaModel):
        self.model = weakref.proxy(model)      # the model holds its runner; no cycle
        # a k-token verify's cost relative to one token: sizes the context drafts (lookup.py);
        # LlamaModel.measure_step_costs measures it on the machine at hand
        self.step_costs: dict[int, float] = dict(DEFAULT_STEP_COSTS)

    def run(self, fs: list) -> list[torch.Tensor]:
        f = fs[0]
        if f.pattern != "causal" or f.lora or f.positions is not None or f.group:
            raise LlamaPatternError(
                f"the llama.cpp runner runs causal forwards only, not pattern={f.pattern!r} lora={f.lora} "
                f"positions={'set' if f.positions is not None else None}: this GGUF model has no drafter, so "
                "decode with mode 'ar' or 'spec' with context lookup")
        for g in fs:
            if not isinstance(g.cache, LlamaCache):
                raise TypeError(f"a {type(g.cache).__name__} reached the llama.cpp runner; make caches with "
                                "the LlamaModel's new_cache")
            g.cache.reserve(len(g.ids))
        logits = self.model.decode([(g.cache, list(g.ids), not g.last_only) for g in fs])
        out, r = [], 0
        mask = self.model.cfg.mask_token_id
        for g in fs:
            n = 1 if g.last_only else len(g.ids)
            t = torch.from_numpy(logits[r:r + n])
            if mask is not None:
                t[:, mask] = float("-inf")       # as every runner does: the mask id is never a prediction
            out.append(t)
            r += n
            if g.write:
                g.cache.commit(list(g.ids))
            # else: llama.cpp holds the K/V past `length`; the next forward's sync drops them
        return out
