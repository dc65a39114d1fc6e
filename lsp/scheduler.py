"""The one place that debounces, supersedes, cancels and clears completion requests.

Every completion request takes a Ticket for its document. Taking one supersedes the document's older
ticket: a request still debouncing or waiting for the daemon wakes up at once and is answered with an
empty list (Neovim does not send $/cancelRequest per keystroke, so the newest request wins without
it). Its daemon request is aborted, so the decode stops before its next forward. When the editor
cancels a request ($/cancelRequest), pygls cancels the handler's task: the ticket aborts the daemon
request and lets the cancellation through, which pygls answers with RequestCancelled. Closing a
document clears its ticket.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class Ticket:
    def __init__(self, scheduler: "Scheduler", key: str, seq: int):
        self.scheduler = scheduler
        self.key = key
        self.seq = seq
        self.stop: asyncio.Future = asyncio.get_running_loop().create_future()
        self.rid: int | None = None

    @property
    def superseded(self) -> bool:
        return self.stop.done()

    def supersede(self, why: str = "superseded") -> None:
        if not self.stop.done():
            self.stop.set_result(why)

    async def debounce(self, seconds: float) -> bool:
        """Wait `seconds` for a newer request; False when one came (answer empty, ask nothing)."""
        if self.superseded:
            return False
        if seconds > 0:
            await asyncio.wait({self.stop}, timeout=seconds)
        return not self.superseded

    async def call(self, backend, msg) -> dict | None:
        """Send `msg` to the daemon; its reply, or None when superseded first (the daemon request is
        then aborted). Cancellation of the calling task aborts the daemon request and propagates."""
        if self.superseded:
            return None
        rid, fut = backend.submit(msg)
        self.rid = rid
        try:
            await asyncio.wait({fut, self.stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.scheduler.cancelled += 1
            _drop(fut)
            backend.abort_later(rid)
            raise
        if self.superseded:
            _drop(fut)
            if not fut.done():
                backend.abort_later(rid)
            return None
        return fut.result()

    def done(self) -> None:
        self.scheduler.finish(self)


def _drop(fut: asyncio.Future) -> None:
    """Nobody will look at this future's outcome: retrieve it when it comes, to keep asyncio quiet."""
    def swallow(f):
        if not f.cancelled():
            f.exception()
    fut.add_done_callback(swallow)


class Scheduler:
    def __init__(self):
        self._current: dict[str, Ticket] = {}
        self._seq = 0
        self.superseded = 0
        self.cancelled = 0

    def begin(self, key: str) -> Ticket:
        old = self._current.get(key)
        if old is not None and not old.superseded:
            old.supersede()
            self.superseded += 1
            log.debug("request %d for %s superseded by a newer one", old.seq, key)
        self._seq += 1
        t = Ticket(self, key, self._seq)
        self._current[key] = t
        return t

    def finish(self, ticket: Ticket) -> None:
        if self._current.get(ticket.key) is ticket:
            del self._current[ticket.key]

    def clear(self, key: str) -> None:
        t = self._current.pop(key, None)
        if t is not None:
            t.supersede("cleared")

    def clear_all(self) -> None:
        for key in list(self._current):
            self.clear(key)

    def in_flight(self) -> int:
        return len(self._current)
