"""The inline completion pipeline, shared by textDocument/inlineCompletion and textDocument/completion.

    gate the document -> take the document's ticket (supersedes the older request) -> gate the cursor
    -> cache (exact or typed-through: no model call) -> single/multi-line plan -> debounce
    -> daemon `complete` -> post-process -> cache -> Outcome

Every path ends in an Outcome (maybe empty); errors the editor must see are raised as
CompletionFailed (the daemon is unavailable or died), cancellation propagates as CancelledError.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from protocol.client import DaemonUnavailable
from textkit.gitignore import IgnoreMatcher
from protocol import NOT_READY, Complete, Error, Result, decode_reply

from lsp import gating, multiline, postprocess
from lsp.cache import CompletionCache
from lsp.context import Context
from lsp.documents import Document
from lsp.scheduler import Scheduler
from lsp.settings import Settings

log = logging.getLogger(__name__)

CONNECT_WAIT_S = 2.0     # an inline request waits this long for a daemon that is starting, then answers empty


class CompletionFailed(Exception):
    """The daemon could not serve the request (unavailable, died mid-request)."""


@dataclass
class Outcome:
    suggestion: postprocess.Suggestion
    ctx: Context | None = None
    info: dict = field(default_factory=dict)    # mode, tokens_per_forward, timings, source, id

    @property
    def empty(self) -> bool:
        return not self.suggestion.text


EMPTY = postprocess.Suggestion("")


class InlineCompleter:
    def __init__(self, backend, settings: Settings, ignore: IgnoreMatcher | None = None):
        self.backend = backend
        self.settings = settings
        self.ignore = ignore
        self.scheduler = Scheduler()
        self.cache = CompletionCache()
        self.counts = {"requests": 0, "gated": 0, "cache_hits": 0, "daemon_calls": 0, "suggestions": 0,
                       "empty": 0, "superseded": 0, "errors": 0}
        self.last: dict = {}
        self._ids = 0

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        self.cache.clear()

    def forget(self, uri: str) -> None:
        """The document closed: drop its pending request and cache entries."""
        self.scheduler.clear(uri)
        self.cache.drop(uri)

    async def complete(self, doc: Document, offset: int) -> Outcome:
        t0 = time.perf_counter()
        self.counts["requests"] += 1
        ticket = self.scheduler.begin(doc.uri)
        try:
            out = await self._complete(doc, offset, ticket, t0)
        except CompletionFailed:
            self.counts["errors"] += 1
            raise
        finally:
            ticket.done()
        out.info["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        self.counts["suggestions" if out.suggestion.text else "empty"] += 1
        if out.ctx is not None:
            self._remember(out)
        return out

    async def _complete(self, doc: Document, offset: int, ticket, t0: float) -> Outcome:
        s = self.settings
        why = gating.document_gate(doc, s, self.ignore)
        ctx = Context.at(doc, offset)
        why = why or gating.cursor_gate(ctx)
        if why:
            self.counts["gated"] += 1
            log.debug("no completion at %s:%d: %s", doc.uri, offset, why)
            return Outcome(postprocess.Suggestion("", 0, why), ctx, {"source": "gated"})

        plan = multiline.plan(ctx, s)
        key = (plan.multiline, plan.max_lines, plan.max_tokens, s.inline_mode)
        hit = self.cache.lookup(ctx, key)
        if hit is not None:
            self.counts["cache_hits"] += 1
            info = {k: v for k, v in hit.info.items() if k in Result.STATS}
            info.update(source="cache", typed=len(hit.typed))
            return Outcome(hit.suggestion, ctx, info)

        if not await ticket.debounce(s.debounce_ms / 1000.0):
            self.counts["superseded"] += 1
            return Outcome(postprocess.Suggestion("", 0, "superseded"), None, {"source": "superseded"})

        try:
            if not await self.backend.connected_within(CONNECT_WAIT_S):
                return Outcome(postprocess.Suggestion("", 0, "connecting to the daemon"), None,
                               {"source": "connecting"})
        except DaemonUnavailable as e:
            raise CompletionFailed(f"tricode daemon unavailable: {e}") from None
        if ticket.superseded:
            self.counts["superseded"] += 1
            return Outcome(postprocess.Suggestion("", 0, "superseded"), None, {"source": "superseded"})

        budget = self.backend.budget_tokens
        msg = Complete(doc=doc.uri, prefix=ctx.wire_prefix(budget), suffix=ctx.wire_suffix(budget), path=doc.path,
                       language=doc.language or "", mode=s.inline_mode, max_tokens=plan.max_tokens,
                       max_lines=plan.max_lines + (1 if plan.multiline and ctx.line_prefix.strip() else 0),
                       deadline_ms=s.deadline_ms)
        self.counts["daemon_calls"] += 1
        try:
            reply = await ticket.call(self.backend, msg)
        except DaemonUnavailable as e:
            raise CompletionFailed(f"the tricode daemon stopped during the request ({e}); "
                                   "it is being restarted") from None
        if reply is None:
            self.counts["superseded"] += 1
            return Outcome(postprocess.Suggestion("", 0, "superseded"), None, {"source": "superseded"})
        reply = decode_reply(reply)
        if not isinstance(reply, Result):
            code = reply.code if isinstance(reply, Error) else "bad_reply"
            if code == NOT_READY:
                self.backend.note_not_ready()
            log.info("daemon answered %s: %s", code, getattr(reply, "message", reply))
            return Outcome(postprocess.Suggestion("", 0, f"daemon: {code}"), ctx, {"source": "daemon", "error": code})

        raw = reply.text
        if reply.budget_tokens:
            self.backend.budget_tokens = reply.budget_tokens
        truncated = reply.stop_reason in ("max_tokens", "length")   # a deadline cut is line-exact
        sug = postprocess.process(raw, ctx, plan, truncated=truncated)
        info = {k: getattr(reply, k) for k in Result.STATS}
        info["source"] = "daemon"
        if reply.stop_reason != "deadline":      # a busy daemon's cut is not the model's answer
            self.cache.store(ctx, key, sug, info)
        log.info("completion %s @%d: %d chars (%s) mode=%s tpf=%s daemon=%sms %s",
                 doc.uri, offset, len(sug.text), "multi" if plan.multiline else "single", info.get("mode"),
                 info.get("tokens_per_forward"), info.get("total_ms"), sug.reason)
        out = Outcome(sug, ctx, info)
        out.info["raw"] = raw
        out.info["sent_chars"] = len(msg.prefix) + len(msg.suffix)     # the text around the cursor sent
        out.info["context_files"] = list(reply.context_files)
        out.info["plan"] = {"multiline": plan.multiline, "max_lines": plan.max_lines,
                            "max_tokens": plan.max_tokens, "reason": plan.reason}
        return out

    def _remember(self, out: Outcome) -> None:
        self._ids += 1
        out.info["id"] = self._ids
        ctx = out.ctx
        self.last = {
            "id": self._ids, "uri": ctx.uri, "line_prefix": ctx.line_prefix, "line_suffix": ctx.line_suffix,
            "text": out.suggestion.text, "replace": out.suggestion.replace, "reason": out.suggestion.reason,
            **{k: v for k, v in out.info.items() if k != "id"},
        }

    def describe(self) -> dict:
        return {**self.counts, "superseded_total": self.scheduler.superseded,
                "cancelled": self.scheduler.cancelled, "cache": self.cache.stats(), "last": self.last}
