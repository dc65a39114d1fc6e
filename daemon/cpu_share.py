"""How much of the CPU the rest of the machine uses right now, and the thread count that follows.

llama.cpp splits every matmul of a step over its threads and waits for the last one. On the 2-core
Xeon this was measured on (docs/cpu_speed.md, section 7), a 0.5B step takes ~44 ms on 2 threads
and ~80 ms on 1 when the machine is idle, but 316 ms on 2 threads (80 on 1) when one other process
keeps a core busy: a thread that waits for a taken core holds up the whole step. Niced work does
not: with two nice-19 busy processes, or a nice-19 llama.cpp loop on 2 threads, beside it, the step
took 43-45 ms on 2 threads (the scheduler gives a nice-0 thread the core at once). So the llama.cpp
runner uses as many threads as there are cores that processes of normal priority leave idle,
re-checked before each forward.

  CpuShare   samples /proc/stat (the machine's busy time, niced processes' user time apart) and
             /proc/self/stat (this process's own) 4 times a second in a daemon thread;
             `others_busy()` is how many cores other processes of normal priority kept busy over
             the last second. Linux only: without /proc it is None and the fixed rule applies.
  ThreadRule the daemon's thread counts: torch keeps the fixed rule (daemon.model_load.cpu_threads:
             `cpu_threads`, else 1 on <= 2 cores); llama.cpp takes `cpu_threads` when set, else the
             idle cores (`threads_for`), applied through the model's `set_threads`.

Knows nothing of jobs, models' internals or connections.
"""
from __future__ import annotations

import collections
import os
import threading
import time

from daemon.config import Config
from daemon.model_load import cpu_threads, use_threads

SAMPLE_S = 0.25           # one reading of /proc every SAMPLE_S
WINDOW_S = 1.0            # others' use is averaged over the last WINDOW_S
IDLE_BELOW = 0.15         # a core others use less than this much of counts as idle


def threads_for(others_busy: float, cores: int) -> int:
    """Threads for a step when other processes keep `others_busy` cores busy: the idle cores, at
    least 1. A core counts as idle while others use less than IDLE_BELOW of it."""
    return max(1, min(cores, int(cores - others_busy + IDLE_BELOW)))


def _machine_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy since boot (all cores), without the
    user time of niced processes (/proc/stat's `nice` column), which yields the core to us at once."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, _nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    """Seconds of CPU time this process (all its threads) has used where _machine_busy_s counts it
    (a niced daemon's user time is in the `nice` column: only its system time then)."""
    with open("/proc/self/stat") as f:
        after_name = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(after_name[11]), int(after_name[12])
    return ((utime if os.getpriority(os.PRIO_PROCESS, 0) <= 0 else 0) + stime) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Other processes' CPU use over the last second, sampled in the background (see the module doc)."""

    def __init__(self, cores: int | None = None, sample_s: float = SAMPLE_S, window_s: float = WINDOW_S):
        self.cores = cores or os.cpu_count() or 1
        self.sample_s, self.window_s = sample_s, window_s
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        try:
            self._read()
            self.available = True
        except (OSError, ValueError, IndexError):
            self.available = False

    def _read(self) -> tuple[float, float, float]:
        return time.monotonic(), _machine_busy_s(), _own_busy_s()

    def _sample(self) -> None:
        s = self._read()
        with self._lock:
            self._samples.append(s)
            while len(self._samples) > 2 and s[0] - self._samples[1][0] >= self.window_s:
                self._samples.popleft()

    def _loop(self) -> None:
        while True:
            try:
                self._sample()
            except (OSError, ValueError, IndexError):
                return
            time.sleep(self.sample_s)

    def start(self) -> "CpuShare":
        """Start the sampler thread (once); the first figure is ready a sample later."""
        with self._lock:
            if self._thread is None and self.available:
                self._thread = threading.Thread(target=self._loop, name="tricode-cpu-share", daemon=True)
                self._thread.start()
        return self

    def others_busy(self) -> float | None:
        """Cores other processes of normal priority kept busy over the last ~second (0 .. cores), from
        the sampler's readings (no /proc read here: it runs before every forward). None without /proc
        or a running sampler. The first call starts the sampler and waits for its second reading."""
        if not self.available:
            return None
        self.start()
        give_up = time.monotonic() + 3 * self.sample_s
        while True:
            with self._lock:
                first, last = (self._samples[0], self._samples[-1]) if self._samples else (None, None)
            if (first is not None and last[0] > first[0]) or time.monotonic() > give_up:
                break
            time.sleep(self.sample_s / 5)
        if first is None or last[0] <= first[0] or time.monotonic() - last[0] > 4 * self.sample_s:
            return None
        others = ((last[1] - first[1]) - (last[2] - first[2])) / (last[0] - first[0])
        return min(float(self.cores), max(0.0, others))


class ThreadRule:
    """The daemon's CPU thread counts for the loaded model (see the module doc)."""

    def __init__(self, share: CpuShare | None = None):
        self.share = share or CpuShare()
        self.last: dict = {}

    def llama_threads(self, cfg: Config) -> int:
        """llama.cpp's threads for the next step: `cpu_threads` when set, else the idle cores."""
        if cfg.cpu_threads:
            return cfg.cpu_threads
        others = self.share.others_busy()
        n = threads_for(others, self.share.cores) if others is not None else (cpu_threads(cfg) or self.share.cores)
        self.last = {"others_busy_cores": None if others is None else round(others, 2)}
        return n

    def apply(self, cfg: Config, model=None) -> int:
        """Set the threads for the next forward of `model` (a llama.cpp model: its own count, via
        `set_threads`; otherwise torch's fixed rule) -> the count in use."""
        if model is not None and hasattr(model, "set_threads"):
            n = self.llama_threads(cfg)
            if n != model.threads:
                model.set_threads(n)
            return n
        return use_threads(cpu_threads(cfg))

    def status(self, cfg: Config, model=None) -> dict:
        """What the status reports: the rule in effect and, for llama.cpp, its current count."""
        if model is None or not hasattr(model, "set_threads"):
            return {"rule": f"fixed {cpu_threads(cfg) or 'torch default'}"}
        rule = f"fixed {cfg.cpu_threads}" if cfg.cpu_threads else "idle cores"
        return {"rule": rule, "llama_threads": model.threads, **self.last}
