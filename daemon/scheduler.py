"""The engine thread and its queue.

One thread owns the model and the device and runs the decodes; the asyncio side (server.py) submits
jobs and delivers replies. Rules:

- Batching: up to `batch_size` decodes run together. Each round, every running decode advances by one
  forward, and forwards of one shape (all AR steps, drafts or verifies of one block size, diffusion
  steps) run as one batched forward, each request on its own KV cache (engine.generate.step). On a
  2-core CPU four warm AR completions batched take 0.67x the time of running them one after another
  (docs/benchmarks.md, section 5); greedy outputs are those of one-at-a-time decoding. `batch_size = 1` serves
  one decode at a time.
- Two priorities: inline completions (`complete`) before refactors (`generate`): a free batch slot
  goes to the most urgent waiting job; within a priority, connections take turns (round-robin), so one
  busy editor cannot starve another.
- Ageing: a refactor that has waited AGE_S seconds in the queue (since it was submitted or its last
  slice was requeued) takes the next free slot ahead of inline completions, the longest-waiting first,
  and at most one such slot per AGE_S seconds. Under a steady stream of keystrokes from several
  editors strict priorities would starve refactors; with ageing the refactors get a slice at least
  every AGE_S seconds, and inline completions lose at most one slot per AGE_S to them (on a slow,
  loaded machine every refactor has waited AGE_S: without the limit they would all go first).
- Refactors run in slices of SLICE_TOKENS tokens; when a slice ends and the batch is full while a job
  of the same or a higher priority waits, the refactor is requeued (resuming costs a one-token
  prefill: its KV cache keeps everything it has produced). Inline completions run in one go; they are
  short and have a deadline.
- Supersede: a new `complete` for the same (connection, document) answers the older one SUPERSEDED at
  once and sets its cancel flag (the decode stops before its next forward). `abort` does the same
  with ABORTED. A job whose connection closed is cancelled silently.
- Deadline: per job (deadline_ms, else the configured default for its kind); when it passes the
  decode stops and the reply holds what is finished, cut at the last complete line.
- KV cache pool: a few caches, one per recent (kind, document), least recently used reused; the
  engine reuses the common prefix of the cache's tokens and the new prompt, so consecutive
  completions in one document prefill only what changed. A cache in use by a running decode is never
  handed to another: a second job for that document waits for the first.
- A model reload (config change) waits until the running decodes finish; no job starts meanwhile.
- Prefetch (`prefetch` jobs, the lowest priority): the prompt a completion at a place will have is
  prefilled into the cache that completion will use (same (kind, document) key), in chunks of
  PREFETCH_CHUNK tokens (engine.generate.Prefill). A prefetch takes no batch slot, starts only when
  no other job runs or waits, advances only in rounds without another decode (so it delays a real
  request by one chunk at most), one at a time; a newer prefetch or a completion for the same
  (connection, document) drops it (what it prefilled stays in the cache), and a token bucket bounds
  its prefill work (config prefetch_tokens_per_s). It is never answered beyond the `ok` at submit.

Replies are produced exactly once, on the event loop thread (`Scheduler.reply`), whatever races
between the engine finishing, an abort, a supersede and a closed connection.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import protocol
from daemon.config import Config, resolve_model
from daemon.context import PromptBuilder, Workspace, finish_text, protect_special_tokens, text_cut

log = logging.getLogger("tricode.daemon")

PRIO_INLINE, PRIO_REFACTOR, PRIO_PREFETCH = 0, 1, 2
SLICE_TOKENS = 32
AGE_S = 2.0                 # a refactor waiting this long goes ahead of inline completions
PREFETCH_CHUNK = 64       # tokens per prefetch forward: the longest a real request waits for one
VALID_MODES = ("", "ar", "diffusion", "spec")


@dataclass(eq=False)
class Job:
    conn: object                      # server.Connection: .id, .send(frame), .closed
    msg: protocol.Complete
    kind: str                         # complete | generate
    priority: int
    mode: str
    max_tokens: int
    deadline: float | None            # time.monotonic()
    arrived: float                    # time.perf_counter()
    cancel: threading.Event = field(default_factory=threading.Event)
    replied: bool = False
    started: float | None = None
    prompt: object = None             # context.Prompt once built
    tokens: list = field(default_factory=list)
    nfe: int = 0
    accept_lengths: list = field(default_factory=list)
    prefill_tokens: int = 0
    reused_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    context_ms: float = 0.0
    slices: int = 0
    engine_key: tuple | None = None   # the model the tokens so far came from
    decode: object = None             # engine.generate.Decode of the slice running now
    queued_at: float = field(default_factory=time.monotonic)   # entered the queue (submit or requeue)
    aged: int = 0                     # times it went ahead of inline completions by ageing

    @property
    def id(self) -> int:
        return self.msg.id

    @property
    def cache_key(self) -> tuple:
        kind = "complete" if self.kind == "prefetch" else self.kind   # a prefetch fills the completion's cache
        return (kind, self.msg.doc or self.msg.path or f"conn{self.conn.id}")


def loop_context(job: Job) -> str | None:
    """The text the loop guard reads before a completion (loops.py): inline completions only
    (a refactor may rewrite repeated code on purpose)."""
    return job.msg.prefix if job.kind == "complete" else None


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
        return sum(c.k.numel() * c.k.element_size() * 2 for c in self.entries.values())


class TokenBucket:
    """The prefetch's work bound: `rate` prefill tokens a second, up to BURST_S seconds' worth saved
    up (opening a few files at once prefetches them all); a prefetch that does not fit is dropped."""
    BURST_S = 2.0

    def __init__(self):
        self.level: float | None = None
        self.last = 0.0

    def take(self, work: int, rate: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        cap = rate * self.BURST_S
        self.level = cap if self.level is None else min(cap, self.level + (now - self.last) * rate)
        self.last = now
        if rate <= 0 or work > self.level:
            return False
        self.level -= work
        return True


class Stats:
    def __init__(self):
        self.served = 0                 # results returned
        self.by_kind = {"complete": 0, "generate": 0}
        self.tokens = 0
        self.nfe = 0
        self.accept_sum = 0
        self.accept_n = 0
        self.prefill_tokens = 0
        self.reused_tokens = 0
        self.superseded = 0
        self.aborted = 0
        self.deadline = 0
        self.aged = 0                   # refactors let ahead of inline completions by ageing
        self.loop_cuts = 0              # inline completions cut where they began to repeat themselves
        self.errors: dict[str, int] = {}
        self.refused_peers = 0
        self.prefetch = {"requested": 0, "run": 0, "tokens": 0, "dropped": 0, "throttled": 0, "cached": 0}
        self.feedback = {"accepted": 0, "rejected": 0, "partial": 0, "shown_chars": 0, "accepted_chars": 0}
        self.last_result: dict = {}

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class Scheduler:
    """The queue (shared with the engine thread under `cond`) and the reply bookkeeping (loop thread)."""

    def __init__(self, loop, stats: Stats):
        self.loop = loop
        self.stats = stats
        self.cond = threading.Condition()
        self.queues: dict[int, OrderedDict[int, deque]] = {PRIO_INLINE: OrderedDict(), PRIO_REFACTOR: OrderedDict(),
                                                          PRIO_PREFETCH: OrderedDict()}
        self.running: list[Job] = []     # the decodes in the engine's batch (engine thread writes)
        self.stopping = False
        # loop-thread registries
        self.jobs: dict[tuple[int, int], Job] = {}
        self.latest: dict[tuple[int, str], Job] = {}
        self.last_aged_pop = float("-inf")      # engine thread, under cond
        self.prefetches: dict[tuple[int, str], Job] = {}    # (connection, document) -> its prefetch

    # -- loop thread ----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.register(job)
        self.enqueue(job)

    def register(self, job: Job) -> None:
        """Take `job` into the reply bookkeeping (supersede, abort) without queueing it for the engine
        (a job for the remote backend, remote.py)."""
        key = (job.conn.id, job.id)
        old = self.jobs.get(key)
        if old is not None:  # a client reusing a live id: the older one is replaced
            self.cancel(old, protocol.SUPERSEDED, f"request {job.id} was sent again")
        self.jobs[key] = job
        if job.kind == "complete" and (job.msg.doc or job.msg.path):
            dkey = (job.conn.id, job.msg.doc or job.msg.path)
            older = self.latest.get(dkey)
            if older is not None and not older.replied:
                self.stats.superseded += 1
                self.cancel(older, protocol.SUPERSEDED, f"superseded by request {job.id}")
            self.latest[dkey] = job
            self.drop_prefetch(dkey)

    def enqueue(self, job: Job) -> None:
        """Queue a registered job for the engine thread."""
        with self.cond:
            job.queued_at = time.monotonic()
            q = self.queues[job.priority]
            q.setdefault(job.conn.id, deque()).append(job)
            self.cond.notify_all()

    def submit_prefetch(self, job: Job) -> None:
        """Queue a prefetch (never answered: `replied` is set), dropping the older one of its document."""
        job.replied = True
        dkey = (job.conn.id, job.msg.doc or job.msg.path)
        self.drop_prefetch(dkey)
        self.prefetches[dkey] = job
        self.stats.prefetch["requested"] += 1
        with self.cond:
            self.queues[PRIO_PREFETCH].setdefault(job.conn.id, deque()).append(job)
            self.cond.notify_all()

    def drop_prefetch(self, dkey: tuple) -> None:
        job = self.prefetches.pop(dkey, None)
        if job is not None and not job.cancel.is_set():
            job.cancel.set()
            self._unqueue(job)
            if not job.slices:               # not finished yet (a finished prefetch has one slice)
                self.stats.prefetch["dropped"] += 1

    def cancel(self, job: Job, code: str, message: str) -> None:
        """Answer `job` with an error now and stop its decode before the next forward."""
        job.cancel.set()
        self.reply(job, protocol.error(job.id, code, message))
        self._unqueue(job)

    def abort(self, conn, target: int) -> bool:
        job = self.jobs.get((conn.id, target))
        if job is None or job.replied:
            return False
        self.stats.aborted += 1
        self.cancel(job, protocol.ABORTED, f"request {target} was aborted")
        return True

    def drop_connection(self, conn) -> None:
        for key, job in list(self.jobs.items()):
            if key[0] == conn.id:
                job.replied = True
                job.cancel.set()
                self._unqueue(job)
                self.jobs.pop(key, None)
        for dkey in [k for k in self.latest if k[0] == conn.id]:
            del self.latest[dkey]
        for dkey in [k for k in self.prefetches if k[0] == conn.id]:
            self.drop_prefetch(dkey)

    def reply(self, job: Job, frame: dict) -> None:
        """Send the one reply of `job` (later calls do nothing). Loop thread only."""
        if job.replied:
            return
        job.replied = True
        self.jobs.pop((job.conn.id, job.id), None)
        dkey = (job.conn.id, job.msg.doc or job.msg.path)
        if self.latest.get(dkey) is job:
            del self.latest[dkey]
        if frame.get("type") == "error":
            self.stats.error(frame.get("code", "?"))
        job.conn.send(frame)

    def reply_threadsafe(self, job: Job, frame: dict) -> None:
        self.loop.call_soon_threadsafe(self.reply, job, frame)

    def shutdown(self) -> None:
        """Answer every queued and running job SHUTTING_DOWN and wake the engine so it exits."""
        for job in list(self.jobs.values()):
            self.cancel(job, protocol.SHUTTING_DOWN, "the daemon is shutting down")
        for dkey in list(self.prefetches):
            self.drop_prefetch(dkey)
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def _unqueue(self, job: Job) -> None:
        with self.cond:
            q = self.queues[job.priority]
            dq = q.get(job.conn.id)
            if dq is not None:
                try:
                    dq.remove(job)
                except ValueError:
                    pass
                if not dq:
                    del q[job.conn.id]

    # -- either thread --------------------------------------------------------------------------

    def queue_length(self) -> int:
        with self.cond:
            return sum(len(dq) for q in self.queues.values() for dq in q.values())

    def waiting(self, priority: int) -> bool:
        """Is a job of `priority` or a more urgent one queued?"""
        with self.cond:
            return any(self.queues[p] for p in self.queues if p <= priority)

    # -- engine thread --------------------------------------------------------------------------

    def pop(self, timeout: float, busy=frozenset(), skip=()) -> Job | None:
        """The next job to run (most urgent priority, connections in turn), waiting up to `timeout`
        seconds; a job whose cache key is in `busy` (its document is being decoded) or whose priority
        is in `skip` is left queued."""
        with self.cond:
            end = time.monotonic() + timeout
            while not self.stopping:
                job = self._pop_aged(busy)
                if job is not None:
                    return job
                for p in sorted(self.queues):
                    if p in skip:
                        continue
                    q = self.queues[p]
                    for cid in list(q):
                        dq = q[cid]
                        while dq and dq[0].cancel.is_set():
                            dq.popleft()
                        if dq and dq[0].cache_key not in busy:
                            job = dq.popleft()
                            if dq:
                                q.move_to_end(cid)      # round-robin: this connection goes last
                            else:
                                del q[cid]
                            self.running.append(job)
                            return job
                        if not dq:
                            del q[cid]
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return None

    def _pop_aged(self, busy) -> Job | None:
        """The refactor that has waited longest, once it has waited AGE_S seconds and no refactor went
        ahead by ageing in the last AGE_S seconds (under `cond`)."""
        q = self.queues[PRIO_REFACTOR]
        now = time.monotonic()
        if now - self.last_aged_pop < AGE_S:
            return None
        heads = [dq[0] for dq in q.values() if dq and not dq[0].cancel.is_set() and dq[0].cache_key not in busy
                 and now - dq[0].queued_at >= AGE_S]
        if not heads:
            return None
        job = min(heads, key=lambda j: j.queued_at)
        dq = q[job.conn.id]
        dq.popleft()
        if dq:
            q.move_to_end(job.conn.id)
        else:
            del q[job.conn.id]
        job.aged += 1
        self.stats.aged += 1
        self.last_aged_pop = now
        self.running.append(job)
        return job

    def finished(self, job: Job) -> None:
        with self.cond:
            if job in self.running:
                self.running.remove(job)

    def requeue(self, job: Job) -> None:
        """Put a sliced job back: first of its connection's jobs, its connection last in the round."""
        with self.cond:
            if job in self.running:
                self.running.remove(job)
            if job.cancel.is_set():
                return
            job.queued_at = time.monotonic()
            q = self.queues[job.priority]
            dq = q.setdefault(job.conn.id, deque())
            dq.appendleft(job)
            q.move_to_end(job.conn.id)
            self.cond.notify_all()

    def pinned_keys(self) -> set:
        """Caches to keep: those of running jobs and of queued sliced jobs (they resume from them)."""
        with self.cond:
            return ({j.cache_key for q in self.queues.values() for dq in q.values() for j in dq if j.slices}
                    | {j.cache_key for j in self.running})


def remote_only(cfg: Config) -> bool:
    """The model runs on a server and the local one is never used (no fallback): load no weights."""
    return cfg.backend == "openai" and cfg.remote_fallback != "local"


class Engine(threading.Thread):
    """The engine thread: loads the model, then serves the scheduler's jobs one at a time."""

    def __init__(self, sched: Scheduler, workspace: Workspace, cfg: Config, model_override=None,
                 on_progress: Callable[[str, float, str], None] | None = None):
        super().__init__(name="tricode-engine", daemon=True)
        self.sched, self.workspace, self.cfg = sched, workspace, cfg
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
        self._reload = threading.Event()
        self._reload.set()
        self.prefetch_bucket = TokenBucket()

    # -- configuration (loop thread) ---------------------------------------------------------------

    def wanted_key(self, cfg: Config) -> tuple:
        path = resolve_model(cfg, self.model_override)
        return (str(path) if path else None, cfg.device, cfg.dtype, remote_only(cfg))

    def set_config(self, cfg: Config) -> bool:
        """Apply a new config; True when it needs a model reload (done between jobs)."""
        reload = self.wanted_key(cfg) != self.wanted_key(self.cfg) or (self.state == "error"
                                                                        and cfg != self.cfg)
        self.cfg = cfg
        if reload:
            self._reload.set()
            with self.sched.cond:
                self.sched.cond.notify_all()
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
            if running:
                self._round(running)
            elif self.sched.stopping:
                return

    def _admit(self, running: list[Job]) -> None:
        """Fill free batch slots from the queue (waiting up to 0.5 s when nothing runs); a prefetch
        takes no slot and starts only when nothing else runs."""
        while len(real := [j for j in running if j.kind != "prefetch"]) < max(1, self.cfg.batch_size):
            skip = (PRIO_PREFETCH,) if running else ()
            job = self.sched.pop(timeout=0 if running else 0.5, busy={j.cache_key for j in running}, skip=skip)
            if job is None:
                return
            try:
                if self._begin(job):
                    running.append(job)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the engine thread
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
            step(self.ck.model, [j.decode for j in active])
        except Exception as e:  # noqa: BLE001
            for job in active:
                running.remove(job)
                self._internal(job, e)
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
        self.sched.finished(job)
        self.sched.reply_threadsafe(job, protocol.error(job.id, protocol.INTERNAL, f"{type(e).__name__}: {e}"))

    def _progress(self, stage: str, fraction: float, message: str) -> None:
        self.stage, self.progress = message, fraction
        log.info("%s (%.0f%%)", message, fraction * 100)
        try:
            self.on_progress(stage, fraction, message)
        except Exception:  # noqa: BLE001
            log.exception("progress callback")

    def _unload(self) -> None:
        self.ck = self.tok = self.builder = self.pool = None
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
        path = resolve_model(cfg, self.model_override)
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
            from engine.checkpoint import CheckpointError, load_checkpoint
            from engine.generate import DecodeParams, generate
        except Exception as e:  # noqa: BLE001
            self._fail(f"cannot import the engine: {type(e).__name__}: {e}")
            return
        weights = sum(f.stat().st_size for f in path.rglob("*.safetensors")) if path.is_dir() else 0
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
            ck = load_checkpoint(path, device=cfg.device, dtype=cfg.dtype)
            tok = Tokenizer(path)
        except (CheckpointError, TokenizerError, OSError, ValueError, RuntimeError) as e:
            done.set()
            self._fail(str(e))
            return
        finally:
            done.set()
        protect_special_tokens(tok)
        self._progress("loading", 0.85, "warming up")
        try:
            prompt = [tok.bos_id] + tok.encode("def f(x):\n    return x\n")
            for mode in dict.fromkeys((cfg.inline_mode, cfg.refactor_mode)):
                generate(ck.model, prompt, DecodeParams(mode=mode, max_new_tokens=4,
                                                        spec_variant=cfg.spec_variant))
        except Exception as e:  # noqa: BLE001 - e.g. CUDA out of memory
            self._fail(f"warm-up failed: {type(e).__name__}: {e}")
            return
        self.ck, self.tok = ck, tok
        self.builder = PromptBuilder(tok)
        self.pool = CachePool(ck.model, cfg.cache_slots)
        self.device, self.dtype = str(ck.device), str(ck.dtype).removeprefix("torch.")
        twin = ck.model.prefill_twin
        self.prefill_dtype = str(twin.head.weight.dtype).removeprefix("torch.") if twin is not None else self.dtype
        self.lora = bool(getattr(ck.model, "has_lora", False))
        self.loaded_key = key
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.state = "ready"
        self._progress("ready", 1.0, f"ready: {path.name} on {self.device} ({self.dtype}) "
                                     f"in {self.load_ms / 1e3:.1f} s")

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
        self.tok, self.builder = tok, PromptBuilder(tok)
        self.device, self.dtype, self.prefill_dtype, self.lora = "remote", "", "", False
        self.loaded_key = key
        self.load_ms = (time.perf_counter() - t0) * 1e3
        self.state = "ready"
        self._progress("ready", 1.0, f"ready: completions from {self.cfg.remote_url} "
                                     f"(prompts budgeted with the tokenizer of {path.name})")

    def _threads(self, cfg: Config) -> None:
        # Default (0): one thread on a machine of 2 cores or fewer. Measured there (docs/benchmarks.md):
        # LSP cache-miss p50 73 ms with 1 thread vs 84 ms with 2 on an idle machine, 127 vs 960 ms when
        # other work shares the cores; decode steps are too small to gain from a second thread.
        import os
        threads = cfg.cpu_threads or (1 if (os.cpu_count() or 1) <= 2 else 0)
        if threads:
            import torch
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
                log.info("torch uses %d CPU thread(s)", threads)

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
            self.sched.finished(job)
            self.sched.reply_threadsafe(job, protocol.error(
                job.id, protocol.NOT_READY, f"the model is {self.state}: {self.error or self.stage}"))
            return False
        cfg = self.cfg
        self._threads(cfg)
        if job.slices and job.engine_key != self.loaded_key:
            # a sliced job resumed after a model reload: its tokens belong to the old model; start over
            job.prompt, job.tokens, job.nfe, job.accept_lengths, job.slices = None, [], 0, [], 0
            job.prefill_ms = job.decode_ms = 0.0
        job.engine_key = self.loaded_key
        if job.prompt is None:
            job.started = time.perf_counter()
            job.prompt = self._prompt(job, cfg.context_tokens if job.kind == "complete" else cfg.refactor_context_tokens)
            job.context_ms = (time.perf_counter() - job.started) * 1e3
        self._slice(job)
        return True

    def _slice(self, job: Job) -> None:
        """Start the next decode of `job`: the whole completion, or a refactor's next slice."""
        from engine.generate import Decode, DecodeParams, for_device, scratch_slots

        cfg, msg, tok = self.cfg, job.msg, self.tok
        model = self.ck.model
        stops = tuple(msg.stop)
        block = msg.block_size or cfg.block_size or None
        n = job.max_tokens - len(job.tokens)
        if job.kind == "generate":
            n = min(n, SLICE_TOKENS)
        params = DecodeParams(mode=job.mode, max_new_tokens=n, block_size=block,
                              threshold=msg.threshold or cfg.threshold or None,
                              temperature=max(msg.temperature, 0.0), deadline=job.deadline,
                              spec_variant=cfg.spec_variant, lookup=cfg.lookup)
        params = for_device(model, params)
        need = len(job.prompt.ids) + job.max_tokens + scratch_slots(params, params.block_size) + 2
        cache = self.pool.get(job.cache_key, need, self.sched.pinned_keys())
        base = list(job.tokens)
        before = loop_context(job)

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
            self._end_prefetch(job)
            return False
        res, job.decode = job.decode.result, None
        if job.slices == 0:
            job.prefill_tokens, job.reused_tokens = res.prefill_tokens, res.reused_tokens
        job.slices += 1
        job.tokens += res.tokens
        job.nfe += res.nfe
        job.accept_lengths += res.accept_lengths
        job.prefill_ms += res.prefill_ms
        job.decode_ms += max(res.elapsed_ms - res.prefill_ms, 0.0)
        if res.stop_reason == "cancelled":
            self.sched.finished(job)
            return False  # already answered (aborted, superseded, connection closed, shutdown)
        more = (job.kind == "generate" and res.stop_reason == "length"
                and len(job.tokens) < job.max_tokens)
        if not more:
            self._finish(job, res.stop_reason, tuple(job.msg.stop))
            return False
        if others + 1 >= max(1, self.cfg.batch_size) and self.sched.waiting(job.priority):
            self.sched.requeue(job)
            return False
        self._slice(job)
        return True

    def _finish(self, job: Job, stop_reason: str, stops) -> None:
        t0 = time.perf_counter()
        raw = self.tok.decode(job.tokens)
        before = loop_context(job)
        text = finish_text(raw, stop_reason, job.msg.max_lines, stops, before)
        looped = before is not None and text != finish_text(raw, stop_reason, job.msg.max_lines, stops)
        post_ms = (time.perf_counter() - t0) * 1e3
        st = self.sched.stats
        st.tokens += len(job.tokens)
        st.nfe += job.nfe
        st.accept_sum += sum(job.accept_lengths)
        st.accept_n += len(job.accept_lengths)
        st.prefill_tokens += job.prefill_tokens
        st.reused_tokens += job.reused_tokens
        if stop_reason == "deadline":
            st.deadline += 1
        st.loop_cuts += looped
        now = time.perf_counter()
        result = protocol.Result(
            id=job.id, text=text, mode=job.mode, stop_reason=stop_reason, tokens=len(job.tokens),
            nfe=job.nfe, tokens_per_forward=round(len(job.tokens) / job.nfe, 4) if job.nfe else 0.0,
            accept_length=round(sum(job.accept_lengths) / len(job.accept_lengths), 4) if job.accept_lengths else 0.0,
            prefill_tokens=job.prefill_tokens, reused_tokens=job.reused_tokens,
            queue_ms=round(((job.started or now) - job.arrived) * 1e3, 3),
            prefill_ms=round(job.prefill_ms, 3), decode_ms=round(job.decode_ms, 3), post_ms=round(post_ms, 3),
            total_ms=round((now - job.arrived) * 1e3, 3), prompt_tokens=len(job.prompt.ids),
            context_ms=round(job.context_ms, 3), context_files=tuple(job.prompt.context_files),
            loop_cut=looped)
        frame = protocol.to_wire(result)
        st.last_result = {k: frame[k] for k in ("mode", "stop_reason", "tokens", "nfe", "tokens_per_forward",
                                                "prefill_tokens", "reused_tokens", "prefill_ms", "total_ms")}
        self.sched.finished(job)

        def deliver():
            if not job.replied:
                st.served += 1
                st.by_kind[job.kind] = st.by_kind.get(job.kind, 0) + 1
            self.sched.reply(job, frame)

        self.sched.loop.call_soon_threadsafe(deliver)

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
        return self.builder.build(msg.prefix, msg.suffix, budget, extra, **self._layout(job))

    def _layout(self, job: Job) -> dict:
        """Inline completions (and their prefetches) use the configured layout; refactors the contiguous one."""
        if job.kind == "generate":
            return {}
        return {"layout": self.cfg.prompt_layout, "label": self.workspace.label_of(job.msg.path)}

    def _begin_prefetch(self, job: Job) -> bool:
        """Start prefilling the prompt of a completion at the prefetch's place (the part that does not
        depend on the cursor when none is known) into that completion's cache; False when there is
        nothing to do, the model is not ready or the token bucket is empty."""
        from engine.generate import DecodeParams, Prefill, for_device, scratch_slots
        st = self.sched.stats.prefetch
        if self.state != "ready" or job.cancel.is_set():
            self.sched.finished(job)
            return False
        cfg = self.cfg
        self._threads(cfg)
        job.started = time.perf_counter()
        job.prompt = self._prompt(job, cfg.context_tokens)
        ids = job.prompt.ids if job.msg.cursor else job.prompt.ids[:job.prompt.stable_tokens]
        # the size the completion will ask for, so that it gets this very cache back from the pool
        params = for_device(self.ck.model, DecodeParams(mode=cfg.inline_mode, block_size=cfg.block_size or None,
                                                        spec_variant=cfg.spec_variant))
        need = len(job.prompt.ids) + cfg.max_tokens + scratch_slots(params, params.block_size) + 2
        cache = self.pool.get(job.cache_key, need, self.sched.pinned_keys())
        work = len(ids) - cache.common_prefix(ids)
        if len(ids) < 2 or work <= 0:
            st["cached"] += 1
            job.slices = 1
            self.sched.finished(job)
            return False
        if not self.prefetch_bucket.take(work, cfg.prefetch_tokens_per_s):
            st["throttled"] += 1
            job.slices = 1
            self.sched.finished(job)
            return False
        job.decode = Prefill(self.ck.model, ids, cache=cache, chunk=PREFETCH_CHUNK, cancel=job.cancel)
        return True

    def _end_prefetch(self, job: Job) -> None:
        res = job.decode.result if job.decode is not None else None
        job.decode, job.slices = None, 1
        st = self.sched.stats.prefetch
        if res is not None:
            st["run"] += 1
            st["tokens"] += res.prefill_tokens
            job.prefill_tokens, job.prefill_ms = res.prefill_tokens, res.prefill_ms
        self.sched.finished(job)

    # -- status (any thread) -----------------------------------------------------------------------

    def spec_variant(self, cfg: Config) -> str:
        """The configured spec variant, with "auto" resolved for the loaded model's device."""
        if cfg.spec_variant != "auto" or self.ck is None:
            return cfg.spec_variant
        from engine.generate import default_spec_variant
        return default_spec_variant(self.ck.model)

    def memory(self) -> dict:
        out = {}
        try:
            with open("/proc/self/statm") as f:
                import os
                out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
        if self.ck is not None:
            try:
                out["model_bytes"] = sum(p.numel() * p.element_size() for p in self.ck.model.parameters())
            except Exception:  # noqa: BLE001
                pass
            if self.device.startswith("cuda"):
                import torch
                out["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(self.ck.device))
                out["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(self.ck.device))
        pool = self.pool
        if pool is not None:
            out["kv_cache_bytes"] = pool.bytes()
        return out
