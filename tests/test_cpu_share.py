"""daemon/cpu_share.py: other processes' CPU use read from /proc, and the thread count that follows."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from daemon.cpu_share import CpuShare, threads_for

SPIN = "import time\nt = time.monotonic() + 30\nwhile time.monotonic() < t: pass\n"


def test_threads_follow_the_idle_cores():
    assert threads_for(0.0, 2) == 2
    assert threads_for(0.1, 2) == 2          # a little background noise leaves the core idle
    assert threads_for(0.3, 2) == 1
    assert threads_for(1.0, 2) == 1
    assert threads_for(2.0, 2) == 1          # never fewer than one
    assert threads_for(1.0, 8) == 7
    assert threads_for(0.0, 1) == 1


def busy_over(share: CpuShare, seconds: float = 1.5) -> float:
    time.sleep(seconds)                      # a full window of samples
    return share.others_busy()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_another_process_counts_and_our_own_threads_do_not():
    share = CpuShare().start()
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    own = threading.Thread(target=spin, daemon=True)
    own.start()                              # this process busy: not "others"
    try:
        with_own = busy_over(share)
    finally:
        stop.set()
        own.join()
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        with_child = busy_over(share)
    finally:
        child.kill()
        child.wait()
    niced = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", SPIN])
    try:
        with_niced = busy_over(share)
    finally:
        niced.kill()
        niced.wait()
    assert with_child >= 0.7, with_child                 # one core kept busy by another process
    assert with_child - with_own >= 0.5, (with_own, with_child)
    assert threads_for(with_child, 2) == 1
    assert with_child - with_niced >= 0.5, (with_niced, with_child)     # niced work yields the core


def test_without_proc_there_is_no_figure(monkeypatch):
    from daemon import cpu_share
    monkeypatch.setattr(cpu_share, "_machine_busy_s", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    share = CpuShare()
    assert not share.available and share.others_busy() is None
