"""The admission of a request and its queue: priorities, supersede, abort, deadlines, ageing, the
prefetch's token bucket, the reply bookkeeping and the daemon's counters.

The asyncio side (server.py) registers jobs here and hands them to a backend (the local worker,
daemon/worker.py, which pops them from this queue; or the remote backend, daemon/remote.py). Rules:

- Two priorities: inline completions (`complete`, and next-edit suggestions, `next_edit`) before refactors (`generate`): a free batch slot
  goes to the most urgent waiting job; within a priority, connections take turns (round-robin), so one
  busy editor cannot starve another.
- Ageing: a refactor that has waited AGE_S seconds in the queue (since it was submitted or its last
  slice was requeued) takes the next free slot ahead of inline completions, the longest-waiting first,
  and at most one such slot per AGE_S seconds. Under a steady stream of keystrokes from several
  editors strict priorities would starve refactors; with ageing the refactors get a slice at least
  every AGE_S seconds, and inline completions lose at most one slot per AGE_S to them (on a slow,
  loaded machine every refactor has waited AGE_S: without the limit they would all go first).
- Prefetch: a newer prefetch or a completion of a (connection, document) drops its prefetch; any of a
  connection drops the follow-up prefetches the worker queued for its earlier places.
- Supersede: a new `complete` for the same (connection, document) answers the older one SUPERSEDED at
  once (a new `next_edit` likewise the older `next_edit` of its document: `supersede_key`) and sets its cancel flag (the decode stops before its next forward). `abort` does the same
  with ABORTED. A job whose connection closed is cancelled silently.
- Deadline: per job (deadline_ms, else the configured default for its kind); when it passes the
  decode stops and the reply holds what is finished, cut at the last complete line. An inline
  completion's decode gets at least deadline_ms after its prompt's prefill (DecodeParams.decode_s).

Replies are produced exactly once, on the event loop thread (`RequestQueue.reply`), whatever races
between the worker finishing, an abort, a supersede and a closed connection.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import protocol

PRIO_INLINE, PRIO_REFACTOR, PRIO_PREFETCH = 0, 1, 2
AGE_S = 2.0                 # a refactor waiting this long goes ahead of inline completions
VALID_MODES = ("", "ar", "diffusion", "spec")


@dataclass(eq=False)
class Job:
    conn: object                      # server.Connection: .id, .send(frame), .closed
    msg: protocol.Complete
    kind: str                         # complete | generate | next_edit | prefetch
    priority: int
    mode: str
    max_tokens: int
    deadline: float | None            # time.monotonic()
    arrived: float                    # time.perf_counter()
    cancel: threading.Event = field(default_factory=threading.Event)
    replied: bool = False
    started: float | None = None
    prompt: object = None             # prompt.Prompt once built
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
    stages: list = field(default_factory=list)   # a prefetch's prefills still to run: (pool key, ids, prompt length)
    follow_up: bool = False           # a prefetch the worker queued itself (a sized prompt's full form)
    decode_s: float | None = None     # an inline job's decode gets this long after its prefill (DecodeParams)

    @property
    def id(self) -> int:
        return self.msg.id

    @property
    def cache_key(self) -> tuple:
        kind = "complete" if self.kind == "prefetch" else self.kind   # a prefetch fills the completion's cache
        return (kind, self.msg.doc or self.msg.path or f"conn{self.conn.id}")


def supersede_key(job: Job) -> tuple | None:
    """The key under which a newer job replaces an older one: (connection, document) for inline
    completions, (connection, "next_edit", document) for next-edit suggestions (a completion and a
    next-edit suggestion of one document do not replace each other); None for other kinds."""
    doc = getattr(job.msg, "doc", "") or getattr(job.msg, "path", "")
    if not doc:
        return None
    if job.kind == "complete":
        return (job.conn.id, doc)
    if job.kind == "next_edit":
        return (job.conn.id, "next_edit", doc)
    return None


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


class RequestQueue:
    """The queue (shared with the worker thread under `cond`) and the reply bookkeeping (loop thread)."""

    def __init__(self, loop, stats: Stats):
        self.loop = loop
        self.stats = stats
        self.cond = threading.Condition()
        self.queues: dict[int, OrderedDict[int, deque]] = {PRIO_INLINE: OrderedDict(), PRIO_REFACTOR: OrderedDict(),
                                                          PRIO_PREFETCH: OrderedDict()}
        self.running: list[Job] = []     # the decodes in the worker's batch (worker thread writes)
        self.stopping = False
        # loop-thread registries
        self.jobs: dict[tuple[int, int], Job] = {}
        self.latest: dict[tuple[int, str], Job] = {}
        self.last_aged_pop = float("-inf")      # worker thread, under cond
        self.prefetches: dict[tuple[int, str], Job] = {}    # (connection, document) -> its prefetch

    # -- loop thread ----------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.register(job)
        self.enqueue(job)

    def register(self, job: Job) -> None:
        """Take `job` into the reply bookkeeping (supersede, abort) without queueing it for the worker
        (a job for the remote backend, remote.py)."""
        key = (job.conn.id, job.id)
        old = self.jobs.get(key)
        if old is not None:  # a client reusing a live id: the older one is replaced
            self.cancel(old, protocol.SUPERSEDED, f"request {job.id} was sent again")
        self.jobs[key] = job
        dkey = supersede_key(job)
        if dkey is not None:
            older = self.latest.get(dkey)
            if older is not None and not older.replied:
                self.stats.superseded += 1
                self.cancel(older, protocol.SUPERSEDED, f"superseded by request {job.id}")
            self.latest[dkey] = job
            if job.kind == "complete":
                self.drop_prefetch(dkey)
                self.drop_follow_ups(job.conn.id)

    def enqueue(self, job: Job) -> None:
        """Queue a registered job for the worker thread."""
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
        self.drop_follow_ups(job.conn.id)
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

    def drop_follow_ups(self, conn_id: int) -> None:
        """The connection asked for something new (a completion, a prefetch): the follow-up prefetches
        the worker queued for its earlier places go (the user has moved on; what they did stays cached)."""
        for dkey in [k for k, j in self.prefetches.items() if k[0] == conn_id and j.follow_up]:
            self.drop_prefetch(dkey)

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
        dkey = supersede_key(job)
        if dkey is not None and self.latest.get(dkey) is job:
            del self.latest[dkey]
        if frame.get("type") == "error":
            self.stats.error(frame.get("code", "?"))
        job.conn.send(frame)

    def reply_threadsafe(self, job: Job, frame: dict) -> None:
        self.loop.call_soon_threadsafe(self.reply, job, frame)

    def shutdown(self) -> None:
        """Answer every queued and running job SHUTTING_DOWN and wake the worker so it exits."""
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

    # -- worker thread --------------------------------------------------------------------------

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
