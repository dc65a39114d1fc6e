"""The worker thread that runs the local model: load, warm-up, slices, batching, the KV cache pool
and prefetch. It pops jobs from the queue (daemon/admission.py) and hands each result back through
the `deliver` callback it was given (daemon/finish.py builds the result); it knows nothing of
connections or of the daemon. The remote backend (daemon/remote.py) offers the same `submit(job)`.

One thread owns the model and the device and runs the decodes. Rules:

- Batching: up to `batch_size` decodes run together. Each round, every running decode advances by one
  forward, and forwards of one shape (all AR steps, drafts or verifies of one block size, diffusion
  steps) run as one batched forward, each request on its own KV cache (engine.generate.step). On a
  2-core CPU four warm AR completions batched take 0.67x the time of running them one after another
  (docs/benchmarks.md, section 5); greedy outputs are those of one-at-a-time decoding. `batch_size = 1` serves
  one decode at a time.
- Refactors run in slices of SLICE_TOKENS tokens; when a slice ends and the batch is full while a job
  of the same or a higher priority waits, the refactor is requeued (resuming costs a one-token
  prefill: its KV cache keeps everything it has produced). Inline completions run in one go; they are
  short and have a deadline.
- KV cache pool: a few caches, one per recent (kind, document), least recently used reused; the
  engine reuses the common prefix of the cache's tokens and the new prompt, so consecutive
  completions in one document prefill only what changed. A cache in use by a running decode is never
  handed to another: a second job for that document waits for the first.
- A model reload (config change) waits until the running decodes finish; no job starts meanwhile.
- The runner: a GGUF model on a CPU runs on llama.cpp's kernels at the file's quantized width
  (engine/llama_runner.py, `runner = "auto"`); torch is the reference and the GPU path (`runner =
  "torch"`, or TRICODE_RUNNER=torch). A llama.cpp model that cannot be loaded, or a step of it that
  raises, is marked failed once (engine.runner.EagerFallback, keyed by the model's path): the requests
  of that step get an error reply and the model is loaded on the torch path, never retried.
- Prefetch (`prefetch` jobs, the lowest priority): the prompt a completion at a place will have is
  prefilled into the cache that completion will use (same (kind, document) key), in chunks of
  PREFETCH_CHUNK tokens (engine.generate.Prefill). A prefetch takes no batch slot, starts only when
  no other job runs or waits, advances only in rounds without another decode (so it delays a real
  request by one chunk at most), one at a time; a newer prefetch or a completion for the same
  (connection, document) drops it (what it prefilled stays in the cache), and a token bucket bounds
  its prefill work (config prefetch_tokens_per_s). It is never answered beyond the `ok` at submit.
- Prompt sizing (daemon/prompt_sizing.py): an inline prompt whose uncached part cannot be prefilled
  within prefill_budget_ms is cut to the cursor's window (a cache of its own); its full form follows as a prefetch.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Callable

import protocol
from daemon.admission import PRIO_PREFETCH, Job, RequestQueue, Stats, TokenBucket
from daemon.config import Config, resolve_model
from daemon.finish import loop_context, result_frame, text_cut
from daemon.cpu_share import ThreadRule
from daemon.model_load import CachePool, drafter_note, load_llama, load_torch, memory, runner_choice, stop_token_ids
from daemon.prompt import PromptBuilder, chatml_template, fim, pretrained_format, protect_special_tokens
from daemon.prompt_sizing import PromptSizer, pool_key, window_key
from daemon.repo_context import prompt_repo, reported, root_name
from daemon.workspace import Workspace
from registry.models import ModelError

log = logging.getLogger("tricode.daemon")

SLICE_TOKENS = 32
PREFETCH_CHUNK = 64       # tokens per prefetch forward: the longest a real request waits for one


def remote_only(cfg: Config) -> bool:
    """The model runs on a server and the local one is never used (no fallback): load no weights."""
    return cfg.backend == "openai" and cfg.remote_fallback != "local"


class LocalWorker(threading.Thread):
    """The worker thread: loads the model, then serves the queue's jobs (batched, sliced).

    What it needs is passed in: the queue it pops jobs from, the workspace (extra context), the
    config, the counters, and `deliver(job, frame)`, which it calls from its own thread with each
    job's one result or error frame (the daemon moves it to the event loop)."""

    def __init__(self, queue: RequestQueue, workspace: Workspace, cfg: Config, stats: Stats,
                 deliver: Callable[[Job, dict], None], model_override=None,
                 on_progress: Callable[[str, float, str], None] | None = None):
        super().__init__(name="tricode-worker", daemon=True)
        self.queue, self.workspace, self.cfg = queue, workspace, cfg
        self.stats, self.deliver = stats, deliver
        self.model_override = model_override
        self.on_progress = on_progress or (lambda *a: None)
        self.state = "loading"
        self.error = ""
        self.progress = 0.0
        self.stage = "starting"
        self.model_path: Path | None = None
        self.loaded_key: tuple | None = None
        self.ck = None
        self.tok = None
        self.builder = None
        self.pool: CachePool | None = None
        self.device = ""
        self.dtype = ""
        self.prefill_dtype = ""          # the prompt's prefill (a bf16 twin on CPUs with native bf16)
        self.lora = False
        self.load_ms = 0.0
        self.capabilities: dict = {}     # engine Checkpoint.capabilities of the loaded model
        self.runner = ""                 # "llama.cpp" | "torch" (the loaded model's runner)
        from engine.runner import EagerFallback
        self.fallback = EagerFallback("the llama.cpp runner")   # model paths that run on torch from now on
        self.stop_ids: tuple[int, ...] = ()   # token ids that end any completion (eot, FIM controls)
        self._reload = threading.Event()
        self._reload.set()
        self.prefetch_bucket = TokenBucket()
        self.sizer = PromptSizer()       # the inline prompt's form from the cache and the measured prefill rate
        self.thread_rule = ThreadRule()

    # -- the backend interface (loop thread) ------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Run `job` (registered with the queue); its result comes back through `deliver`."""
        self.queue.enqueue(job)

    @property
    def has_model(self) -> bool:
        """A local model is loaded (the remote backend may fall back to it)."""
        return self.ck is not None

    # -- configuration (loop thread) ---------------------------------------------------------------

    def wanted_key(self, cfg: Config) -> tuple:
        path = resolve_model(cfg, self.model_override)
        return (str(path) if path else None, cfg.device, cfg.dtype, remote_only(cfg), runner_choice(cfg))

    def set_config(self, cfg: Config) -> bool:
        """Apply a new config; True when it needs a model reload (done between jobs)."""
        reload = self.wanted_key(cfg) != self.wanted_key(self.cfg) or (self.state == "error"
                                                                        and cfg != self.cfg)
        self.cfg = cfg
        pool, builder = self.pool, self.builder
        if pool is not None:
            pool.slots = cfg.cache_slots
        if builder is not None:
            builder.fim_format = pretrained_format(builder.tok, cfg.inline_format)
        if reload:
            self._reload.set()
            with self.queue.cond:
                self.queue.cond.notify_all()
        return reload

    # -- the thread --------------------------------------------------------------------------------

    def run(self) -> None:
        running: list[Job] = []
        while True:
            if self._reload.is_set() and not running:
                self._reload.clear()
                self._load()
            if not self._reload.is_set():
                self._admit(running)
            # the repository index builds wait while a completion or refactor decodes
            self.workspace.hold_index(any(j.kind != "prefetch" for j in running))
            if running:
                self._round(running)
            elif self.queue.stopping:
                return

    def _admit(self, running: list[Job]) -> None:
        """Fill free batch slots from the queue (waiting up to 0.5 s when nothing runs); a prefetch
        takes no slot and starts only when nothing else runs."""
        while len(real := [j for j in running if j.kind != "prefetch"]) < max(1, self.cfg.batch_size):
            skip = (PRIO_PREFETCH,) if running else ()
            job = self.queue.pop(timeout=0 if running else 0.5, busy={j.cache_key for j in running}, skip=skip)
            if job is None:
                return
            try:
                if self._begin(job):
                    running.append(job)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the worker thread
                self._internal(job, e)

    def _round(self, running: list[Job]) -> None:
        """One forward for every running decode (batched by shape), then settle the finished ones.
        Prefetches advance only in a round without another decode, one at a time."""
        from engine.generate import step
        for job in [j for j in running if j.kind == "prefetch" and j.cancel.is_set()]:
            running.remove(job)             # dropped: no further chunk
            self._end_prefetch(job)
        active = [j for j in running if j.kind != "prefetch"] or running[:1]
        if not active:
            return
        try:
            if self.runner == "llama.cpp":
                self._threads(self.cfg)
                if self.fallback.attempt(str(self.model_path), lambda: step(self.ck.model, [j.decode for j in active])
                                         or True) is None:
                    raise RuntimeError(f"the llama.cpp runner failed ({self.fallback.failed[str(self.model_path)]}); "
                                       "the model is being reloaded on the torch path: retry")
            else:
                step(self.ck.model, [j.decode for j in active])
        except Exception as e:  # noqa: BLE001
            for job in active:
                running.remove(job)
                self._internal(job, e)
            if str(self.model_path) in self.fallback and self.runner == "llama.cpp":
                for job in list(running):     # prefetches on llama.cpp caches: dropped
                    running.remove(job)
                    self._end_prefetch(job)
                self._reload.set()            # done once nothing runs: the torch path from now on
            return
        for job in [j for j in active if j.decode.done]:
            running.remove(job)
            try:
                if self._collect(job, len(running)):
                    running.append(job)
            except Exception as e:  # noqa: BLE001
                self._internal(job, e)

    def _internal(self, job: Job, e: Exception) -> None:
        log.error("request %s failed", job.id, exc_info=e)
        job.decode = None
        self.queue.finished(job)
        self.deliver(job, protocol.error(job.id, protocol.INTERNAL, f"{type(e).__name__}: {e}"))

    def _progress(self, stage: str, fraction: float, message: str) -> None:
        self.stage, self.progress = message, fraction
        log.info("%s (%.0f%%)", message, fraction * 100)
        try:
            self.on_progress(stage, fraction, message)
        except Exception:  # noqa: BLE001
            log.exception("progress callback")

    def _unload(self) -> None:
        self.ck = self.tok = self.builder = self.pool = None
        self.capabilities, self.stop_ids = {}, ()
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass

    def _load(self) -> None:
        cfg = self.cfg
        key = self.wanted_key(cfg)
        self.state, self.error = "loading", ""
        self._unload()
        try:
            path = resolve_model(cfg, self.model_override, strict=True)
        except ModelError as e:
            self.model_path = None
            self._fail(str(e))
            return
        self.model_path = path
        if path is None:
            self._fail("no model: the embedded model is not installed; set `model = \"DIR\"` in "
                       f"{__import__('daemon.config').config.config_path()}, TRICODE_MODEL, or pass --model DIR")
            return
        t0 = time.perf_counter()
        if remote_only(cfg):
            self._load_tokenizer(path, key, t0)
            return
        self._progress("loading", 0.02, f"loading {path}")
        try:
            self._progress("loading", 0.05, "importing torch")
            import torch  # noqa: F401
            self._threads(cfg)

            from textkit.tokenizer import Tokenizer, TokenizerError
            from engine.checkpoint import CheckpointError
            from engine.generate import DecodeParams, generate
        except Exception as e:  # noqa: BLE001
            self._fail(f"cannot import the engine: {type(e).__name__}: {e}")
            return
        weights = (sum(f.stat().st_size for f in path.rglob("*.safetensors")) if path.is_dir()
                   else path.stat().st_size if path.is_file() else 0)
        self._progress("loading", 0.1, f"reading {weights / 2**20:.0f} MiB of weights from {path}")
        done = threading.Event()

        def heartbeat():  # an estimate while load_checkpoint runs (it has no progress hook)
            expect = max(1.0, weights / 400e6)
            t = time.perf_counter()
            while not done.wait(0.5):
                frac = 0.1 + 0.7 * min((time.perf_counter() - t) / expect, 0.97)
                self._progress("loading", round(frac, 3), f"reading weights from {path.name}")

        hb = threading.Thread(target=heartbeat, daemon=True)
        hb.start()
        try:
            ck = load_llama(path, cfg, self.fallback, self._progress)
            self.runner = "llama.cpp" if ck is not None else "torch"
            note = drafter_note(path, self.runner)
            if ck is None:
                ck, note = load_torch(path, cfg)
            tok = Tokenizer(path)
        except (CheckpointError, TokenizerError, OSError, ValueError, RuntimeError) as e:
            return self._fail(str(e))
        finally:
            done.set()
        protect_special_tokens(tok)
        self._progress("loading", 0.85, "warming up")
        caps = dict(ck.capabilities, **({"drafter_note": note} if note else {}))
        try:
            self._threads(cfg, ck.model)        # the calibration below runs as the requests will
            prompt = [tok.bos_id] + tok.encode("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(8)))
            # the modes it serves (another gets the ModeError reply); a short and a long prefill fit the rate
            for mode in dict.fromkeys(m for m in (cfg.inline_mode, cfg.refactor_mode) if m in caps["modes"]):
                generate(ck.model, prompt, DecodeParams(mode=mode, max_new_tokens=4, lookup=cfg.lookup,
                                                        spec_variant=cfg.spec_variant))
            self.sizer.rate.calibrate(*(generate(ck.model, p, DecodeParams(mode="ar", max_new_tokens=1))
                                        for p in (prompt[:16], prompt)))
        except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory
            self._fail(f"warm-up failed: {type(e).__name__}: {e}")
            return
        self.ck, self.tok = ck, tok
        self.capabilities, self.stop_ids = caps, stop_token_ids(tok)
        self.builder = PromptBuilder(tok, pretrained_format(tok, cfg.inline_format))
        self.pool = CachePool(ck.model, cfg.cache_slots)
        self.device, self.dtype = str(ck.device), str(ck.dtype).removeprefix("torch.")
        if self.runner == "llama.cpp":
            self.dtype = "gguf (its own quantized types, llama.cpp kernels)"
        twin = ck.model.prefill_twin
        self.prefill_dtype = str(twin.head.weight.dtype).removeprefix("torch.") if twin is not None else self.dtype
        self.lora = bool(getattr(ck.model, "has_lora", False))
        self.loaded_key = key
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.state = "ready"
        self._progress("ready", 1.0, f"ready: {path.name} on {self.device} ({self.dtype}, runner "
                                     f"{self.runner}) in {self.load_ms / 1e3:.1f} s")

    def _load_tokenizer(self, path: Path, key: tuple, t0: float) -> None:
        """The model runs on a server (backend = "openai", no local fallback): only the tokenizer that
        budgets the prompts is loaded, no weights and no torch."""
        from textkit.tokenizer import Tokenizer, TokenizerError
        try:
            tok = Tokenizer(path)
        except TokenizerError as e:
            self._fail(f"the tokenizer that budgets remote prompts: {e}")
            return
        protect_special_tokens(tok)
        self.tok, self.builder = tok, PromptBuilder(tok, pretrained_format(tok, self.cfg.inline_format))
        self.capabilities, self.stop_ids = {}, stop_token_ids(tok)
        self.device, self.dtype, self.prefill_dtype, self.lora = "remote", "", "", False
        self.loaded_key = key
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.state = "ready"
        self._progress("ready", 1.0, f"ready: completions from {self.cfg.remote_url} "
                                     f"(prompts budgeted with the tokenizer of {path.name})")

    def _threads(self, cfg: Config, model=None) -> None:
        """Threads for the next forwards (daemon/cpu_share.py): torch's fixed rule (1 thread on <= 2
        cores unless `cpu_threads`), llama.cpp's idle cores, re-checked before each of its steps."""
        self.thread_rule.apply(cfg, model if model is not None else self.ck.model if self.ck is not None else None)

    def _fail(self, message: str) -> None:
        self.state, self.error = "error", message
        log.error("model load failed: %s", message)
        self._progress("error", 1.0, message)

    # -- one job -----------------------------------------------------------------------------------

    def _begin(self, job: Job) -> bool:
        """Build the job's prompt (once) and start its first slice; False when it was answered instead."""
        if job.kind == "prefetch":
            return self._begin_prefetch(job)
        if self.state != "ready":
            self.queue.finished(job)
            self.deliver(job, protocol.error(
                job.id, protocol.NOT_READY, f"the model is {self.state}: {self.error or self.stage}"))
            return False
        cfg = self.cfg
        self._threads(cfg)
        if job.kind == "next_edit":
            return self._next_edit(job)
        if job.slices and job.engine_key != self.loaded_key:
            # a sliced job resumed after a model reload: its tokens belong to the old model; start over
            job.prompt, job.tokens, job.nfe, job.accept_lengths, job.slices = None, [], 0, [], 0
            job.prefill_ms = job.decode_ms = 0.0
        job.engine_key = self.loaded_key
        if job.prompt is None:
            job.started = time.perf_counter()
            job.prompt = self._prompt(job, cfg.context_tokens if job.kind == "complete" else cfg.refactor_context_tokens)
            if job.kind == "complete":      # the full prompt, or its window when that is not cached and too long
                job.prompt = self.sizer.choose(self.builder, job.cache_key, job.prompt, self.pool, job.msg,
                                               cfg.prefill_budget_ms, cfg.context_tokens)
            job.context_ms = (time.perf_counter() - job.started) * 1e3
        from engine.generate import ModeError
        try:
            self._slice(job)
        except ModeError as e:      # e.g. diffusion on a checkpoint without a drafter: say so
            job.decode = None
            self.queue.finished(job)
            self.deliver(job, protocol.error(job.id, protocol.BAD_REQUEST, str(e)))
            return False
        return True

    def _slice(self, job: Job) -> None:
        """Start the next decode of `job`: the whole completion, or a refactor's next slice."""
        from engine.generate import Decode, DecodeParams, for_device, scratch_slots

        cfg, msg, tok = self.cfg, job.msg, self.tok
        model = self.ck.model
        stops = tuple(msg.stop) + job.prompt.stops
        block = msg.block_size or cfg.block_size or None
        n = job.max_tokens - len(job.tokens)
        if job.kind == "generate":
            n = min(n, SLICE_TOKENS)
        params = DecodeParams(mode=job.mode, max_new_tokens=n, block_size=block,
                              threshold=msg.threshold or cfg.threshold or None,
                              temperature=max(msg.temperature, 0.0), deadline=job.deadline,
                              decode_s=job.decode_s,
                              spec_variant=cfg.spec_variant, lookup=cfg.lookup, stop_token_ids=self.stop_ids)
        params = for_device(model, params)
        need = len(job.prompt.ids) + job.max_tokens + scratch_slots(params, params.block_size) + 2
        cache = self.pool.get(pool_key(job.cache_key, job.prompt), need, self.queue.pinned_keys())
        base = list(job.tokens)
        before = loop_context(job) if self.cfg.loop_guard else None

        def stop(tokens):
            full = base + tokens
            if text_cut(tok.decode(full), msg.max_lines, stops, before) is None:
                return None
            lo, hi = len(base) + 1, len(full)
            while lo < hi:
                mid = (lo + hi) // 2
                if text_cut(tok.decode(full[:mid]), msg.max_lines, stops, before) is not None:
                    hi = mid
                else:
                    lo = mid + 1
            return lo - len(base)

        job.decode = Decode(model, job.prompt.ids + job.tokens, params, cache=cache, cancel=job.cancel,
                            stop=stop if (msg.max_lines > 0 or stops or before is not None) else None)

    def _collect(self, job: Job, others: int) -> bool:
        """Account a finished slice; True when the job goes on with another slice in the batch."""
        if job.kind == "prefetch":
            return self._end_prefetch(job, more=True)
        res, job.decode = job.decode.result, None
        if job.slices == 0:
            job.prefill_tokens, job.reused_tokens = res.prefill_tokens, res.reused_tokens
            if not others and len(self.queue.running) <= 1:    # alone: its prefill time is its own
                self.sizer.rate.observe(res.prefill_tokens, res.prefill_ms)
        job.slices += 1
        job.tokens += res.tokens
        job.nfe += res.nfe
        job.accept_lengths += res.accept_lengths
        job.prefill_ms += res.prefill_ms
        job.decode_ms += max(res.elapsed_ms - res.prefill_ms, 0.0)
        if res.stop_reason == "cancelled":
            self.queue.finished(job)
            return False  # already answered (aborted, superseded, connection closed, shutdown)
        more = (job.kind == "generate" and res.stop_reason == "length"
                and len(job.tokens) < job.max_tokens)
        if not more:
            self._finish(job, res.stop_reason)
            return False
        if others + 1 >= max(1, self.cfg.batch_size) and self.queue.waiting(job.priority):
            self.queue.requeue(job)
            return False
        self._slice(job)
        return True

    def _finish(self, job: Job, stop_reason: str) -> None:
        t0 = time.perf_counter()
        text = self.tok.decode(job.tokens)
        if job.prompt is not None and job.prompt.heal:   # the whitespace the prompt left to the model
            text = fim.heal(text, job.prompt.heal)
        frame = result_frame(job, text, stop_reason, self.stats, mode=job.mode,
                             tokens=len(job.tokens), nfe=job.nfe, accept_lengths=job.accept_lengths,
                             prefill_tokens=job.prefill_tokens, reused_tokens=job.reused_tokens,
                             prefill_ms=job.prefill_ms, decode_ms=job.decode_ms, loop_guard=self.cfg.loop_guard,
                             post_from=t0, budget_tokens=self.cfg.context_tokens)
        self.queue.finished(job)
        if job.prompt is not None and job.prompt.form == "window" and self.cfg.prefetch_tokens_per_s > 0:
            # its full prompt follows as a prefetch, queued before the reply (the next request drops it)
            self.queue.loop.call_soon_threadsafe(self.queue.submit_prefetch, Job(
                conn=job.conn, msg=protocol.Prefetch(doc=job.msg.doc, prefix=job.msg.prefix, suffix=job.msg.suffix,
                                                     path=job.msg.path, language=job.msg.language),
                kind="prefetch", priority=PRIO_PREFETCH, mode="", max_tokens=0, deadline=None, arrived=t0, follow_up=True))
        self.deliver(job, frame)

    def _next_edit(self, job: Job) -> bool:
        """Run a next-edit request to its end (daemon/next_edit_run.py: candidates, gate, result); a
        rewrite is a few forwards, so it is not batched. Always False: it is answered here."""
        from daemon import next_edit_run
        job.started = time.perf_counter()
        cfg = self.cfg
        model = self.ck.model if self.ck is not None and cfg.next_edit_gate == "model" else None
        pred = next_edit_run.predict(model, self.tok, job.msg, spec_variant=self.spec_variant(cfg),
                                     cancel=job.cancel, deadline=job.deadline)
        self.queue.finished(job)
        self.stats.tokens += pred.tokens
        self.stats.nfe += pred.forwards
        if not job.cancel.is_set():
            self.deliver(job, next_edit_run.result(job.msg, pred, job.arrived, cfg.next_edit_margin))
        return False

    # -- prefetch ----------------------------------------------------------------------------------

    def _prompt(self, job: Job, budget: int):
        """The job's prompt within `budget` tokens, with the workspace's extra files (for completions,
        refactors and prefetches alike, so that a prefetch prepares exactly what a completion asks for)."""
        cfg, msg = self.cfg, job.msg
        extra = []
        if cfg.extra_context:
            try:
                extra = self.workspace.extra_files(msg.path, msg.doc, msg.prefix + msg.suffix)
            except Exception:  # noqa: BLE001 - context is a bonus, never a failure
                log.exception("extra context for %s", msg.path)
        if job.kind == "generate" and chatml_template(getattr(self.tok, "chat_template", None)):
            # an instruct model: refactors through its chat template (the file's own text only)
            rewrite = ((msg.original, msg.instruction, msg.scaffold)
                       if getattr(msg, "action", "") == "rewrite" and msg.original.strip() else None)
            return self.builder.build_chat(msg.prefix, msg.suffix, budget, msg.language, msg.path, rewrite)
        layout = self._layout(job)
        repo, repo_budget, snippets = prompt_repo(self.workspace, self.tok, cfg, msg, budget, extra,
                                                  layout.get("layout", "contiguous"), self.builder.fim_format)
        prompt = self.builder.build(msg.prefix, msg.suffix, budget, extra, repo=repo, repo_budget=repo_budget,
                                    repo_name=root_name(snippets), **layout)
        prompt.repo_context = reported(prompt, snippets)
        return prompt

    def _layout(self, job: Job) -> dict:
        """Inline completions (and their prefetches) use the configured layout; refactors the contiguous one."""
        return {} if job.kind == "generate" else {"layout": self.cfg.prompt_layout,
                                                  "label": self.workspace.label_of(job.msg.path)}

    def _begin_prefetch(self, job: Job) -> bool:
        """Start prefilling the prompt of a completion at the prefetch's place (the part that does not
        depend on the cursor when none is known) into that completion's cache: in stages, the cursor's
        window first when the full prompt cannot be prefilled within the budget (what a completion there
        would use at once, daemon/prompt_sizing.py), then the full prompt. False when there is nothing to
        do, the model is not ready or the token bucket is empty."""
        if self.state != "ready" or job.cancel.is_set():
            self.queue.finished(job)
            return False
        cfg = self.cfg
        self._threads(cfg)
        job.started = time.perf_counter()
        full = job.prompt = self._prompt(job, cfg.context_tokens)
        job.stages = [(job.cache_key, full.ids if job.msg.cursor else full.ids[:full.stable_tokens], len(full.ids))]
        if job.msg.cursor:
            sized = self.sizer.choose(self.builder, job.cache_key, full, self.pool, job.msg, cfg.prefill_budget_ms,
                                      cfg.context_tokens, request=False)
            if sized is not full:
                job.stages.insert(0, (window_key(job.cache_key), sized.ids, len(sized.ids)))
        return self._next_stage(job)

    def _next_stage(self, job: Job) -> bool:
        """Start the prefetch's next stage that has work; False when none has (or the bucket is empty)."""
        from engine.generate import DecodeParams, Prefill, for_device, scratch_slots
        cfg, st = self.cfg, self.stats.prefetch
        # the size the completion will ask for, so that it gets this very cache back from the pool
        params = for_device(self.ck.model, DecodeParams(mode=cfg.inline_mode, block_size=cfg.block_size or None,
                                                        spec_variant=cfg.spec_variant))
        while job.stages:
            key, ids, prompt_len = job.stages.pop(0)    # sized for the whole prompt, as the completion asks
            need = prompt_len + cfg.max_tokens + scratch_slots(params, params.block_size) + 2
            cache = self.pool.get(key, need, self.queue.pinned_keys())
            work = len(ids) - cache.common_prefix(ids)
            if len(ids) < 2 or work <= 0:
                continue
            if not self.prefetch_bucket.take(work, cfg.prefetch_tokens_per_s):
                st["throttled"] += 1
                break
            job.decode = Prefill(self.ck.model, ids, cache=cache, cancel=job.cancel,
                                 chunk=self.sizer.chunk(cfg.prefill_budget_ms, PREFETCH_CHUNK))
            return True
        else:
            if not job.nfe:
                st["cached"] += 1
        job.slices = 1
        self.queue.finished(job)
        return False

    def _end_prefetch(self, job: Job, more: bool = False) -> bool:
        """A prefetch stage ended (or the prefetch was dropped): counted; the next stage starts when
        `more` and it is not cancelled. True while the prefetch goes on."""
        res = job.decode.result if job.decode is not None else None
        job.decode = None
        st = self.stats.prefetch
        if res is not None:
            st["run"] += not job.nfe          # one prefetch, however many stages
            job.nfe += 1
            st["tokens"] += res.prefill_tokens
            job.prefill_tokens += res.prefill_tokens
            job.prefill_ms += res.prefill_ms
        if more and not job.cancel.is_set() and self._next_stage(job):
            return True
        job.slices = 1
        self.queue.finished(job)
        return False

    # -- status (any thread) -----------------------------------------------------------------------

    def spec_variant(self, cfg: Config) -> str:
        """The configured spec variant, with "auto" resolved for the loaded model's device."""
        if cfg.spec_variant != "auto" or self.ck is None:
            return cfg.spec_variant
        from engine.generate import default_spec_variant
        return default_spec_variant(self.ck.model)

    def memory(self) -> dict:
        return memory(self.ck, self.device, self.pool)
