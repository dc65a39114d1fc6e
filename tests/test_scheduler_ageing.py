"""Ageing in the daemon's scheduler (daemon/admission.py): a refactor that has waited AGE_S seconds
goes ahead of inline completions, so a stream of keystrokes cannot starve it. The real Scheduler and
Job objects; connections are the smallest objects the scheduler talks to (id, send, closed)."""
from __future__ import annotations

import time

import protocol
from daemon import admission as scheduler
from daemon.admission import PRIO_INLINE, PRIO_REFACTOR, Job, Stats
from daemon.admission import RequestQueue as Scheduler


class Conn:
    def __init__(self, cid: int):
        self.id, self.closed, self.sent = cid, False, []

    def send(self, frame: dict) -> None:
        self.sent.append(frame)


def job(conn, rid: int, kind: str, doc: str) -> Job:
    cls = protocol.Complete if kind == "complete" else protocol.Generate
    return Job(conn=conn, msg=cls(id=rid, doc=doc), kind=kind,
               priority=PRIO_INLINE if kind == "complete" else PRIO_REFACTOR, mode="ar", max_tokens=4,
               deadline=None, arrived=time.perf_counter())


def test_strict_priority_until_a_refactor_has_waited(monkeypatch):
    monkeypatch.setattr(scheduler, "AGE_S", 0.3)
    s = Scheduler(None, Stats())
    a, b, r = Conn(1), Conn(2), Conn(3)
    refactor = job(r, 1, "generate", "file:///r.py")
    s.submit(refactor)
    s.submit(job(a, 1, "complete", "file:///a.py"))
    s.submit(job(b, 1, "complete", "file:///b.py"))
    first = s.pop(0)
    assert first.kind == "complete"         # fresh: inline first
    time.sleep(0.35)
    s.submit(job(a, 2, "complete", "file:///a2.py"))
    aged = s.pop(0)
    assert aged is refactor and aged.aged == 1
    assert [s.pop(0).kind, s.pop(0).kind] == ["complete", "complete"]
    assert s.pop(0) is None


def test_requeued_slice_waits_again_and_busy_documents_are_skipped(monkeypatch):
    monkeypatch.setattr(scheduler, "AGE_S", 0.3)
    s = Scheduler(None, Stats())
    a, r = Conn(1), Conn(2)
    refactor = job(r, 1, "generate", "file:///r.py")
    s.submit(refactor)
    time.sleep(0.35)
    assert s.pop(0, busy={refactor.cache_key}) is None     # its document is being decoded: it stays queued
    assert s.pop(0) is refactor
    s.requeue(refactor)                                      # a slice ended: the clock starts again
    s.submit(job(a, 1, "complete", "file:///a.py"))
    assert s.pop(0).kind == "complete"
    time.sleep(0.35)
    s.submit(job(a, 2, "complete", "file:///a.py"))          # a keystroke waits, but the refactor has aged
    assert s.pop(0) is refactor and refactor.aged == 2


def test_at_most_one_refactor_goes_ahead_per_age_period(monkeypatch):
    """On a slow machine every queued refactor has waited AGE_S: one goes ahead, then the inline
    completions, until AGE_S has passed again."""
    monkeypatch.setattr(scheduler, "AGE_S", 0.3)
    s = Scheduler(None, Stats())
    refactors = [job(Conn(10 + i), 1, "generate", f"file:///r{i}.py") for i in range(3)]
    for r in refactors:
        s.submit(r)
    time.sleep(0.35)
    a, b = Conn(1), Conn(2)
    s.submit(job(a, 1, "complete", "file:///a.py"))
    s.submit(job(b, 1, "complete", "file:///b.py"))
    assert s.pop(0) is refactors[0]                          # the longest-waiting
    assert [s.pop(0).kind, s.pop(0).kind] == ["complete", "complete"]
    s.submit(job(a, 2, "complete", "file:///a2.py"))
    assert s.pop(0).kind == "complete"                      # r1 has aged too, but the period is not over
    time.sleep(0.35)
    s.submit(job(a, 3, "complete", "file:///a3.py"))
    assert s.pop(0) is refactors[1] and s.stats.aged == 2
