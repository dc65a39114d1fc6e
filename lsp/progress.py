"""Work-done progress (`$/progress`) for daemon start-up and refactors.

A server-initiated progress needs `window/workDoneProgress/create` first, which only clients that
announce `window.workDoneProgress` accept; a request may instead carry its own `workDoneToken`.
Without either, progress goes to the log only. Sending never raises.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

from lsprotocol import types

log = logging.getLogger(__name__)
_tokens = itertools.count(1)


class WorkDone:
    def __init__(self, server, title: str, *, token=None, cancellable: bool = False,
                 on_cancel: Callable[[], None] | None = None):
        self.server = server
        self.title = title
        self.token = token
        self.cancellable = cancellable
        self.on_cancel = on_cancel
        self.active = False
        self.closed = False
        self._last_pct = -1
        self._lock: asyncio.Lock | None = None

    def _supported(self) -> bool:
        try:
            caps = self.server.client_capabilities
            return bool(caps and caps.window and caps.window.work_done_progress)
        except Exception:
            return False

    async def begin(self, message: str = "", percentage: int | None = None) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:            # a second begin while the token is being created: a report
            await self._begin(message, percentage)

    async def _begin(self, message: str, percentage: int | None) -> None:
        if self.closed:
            return
        if self.active:
            self.report(message, percentage)
            return
        log.info("%s: %s", self.title, message)
        if self.token is None:
            if not self._supported():
                return
            token = f"tricode-{next(_tokens)}"
            try:
                await asyncio.wait_for(self.server.work_done_progress.create_async(token), 5.0)
            except Exception as e:          # the client refused or did not answer: no progress UI
                log.info("work done progress not created: %s", e)
                return
            self.token = token
            if self.closed:                 # ended while the client was creating the token
                return
        try:
            self.server.work_done_progress.begin(self.token, types.WorkDoneProgressBegin(
                title=self.title, message=message or None, cancellable=self.cancellable or None,
                percentage=percentage))
        except Exception as e:
            log.info("progress begin failed: %s", e)
            return
        self.active = True
        fut = self.server.work_done_progress.tokens.get(self.token)
        if fut is not None and self.on_cancel is not None:
            fut.add_done_callback(lambda f: f.cancelled() and self.on_cancel())
        self._last_pct = percentage if percentage is not None else -1

    def report(self, message: str = "", percentage: int | None = None) -> None:
        if not self.active:
            return
        if percentage is not None:
            percentage = max(self._last_pct, min(100, max(0, int(percentage))))
            self._last_pct = percentage
        try:
            self.server.work_done_progress.report(self.token, types.WorkDoneProgressReport(
                message=message or None, percentage=percentage))
        except Exception as e:
            log.info("progress report failed: %s", e)

    def end(self, message: str = "") -> None:
        self.closed = True
        if not self.active:
            return
        self.active = False
        try:
            self.server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message or None))
        except Exception as e:
            log.info("progress end failed: %s", e)
        self.server.work_done_progress.tokens.pop(self.token, None)
