"""Next-edit suggestions over LSP: `textDocument/copilotInlineEdit`, Copilot's request.

    params  {textDocument: {uri, version}, position}
    result  {edits: [{range, text, textDocument: {uri, version}, command?}]}   alternatives, best first;
            [] when nothing should change
    notification textDocument/didShowInlineEdit {item: {...the edit shown...}}   (counted, logged)

A request is checked like every other one: an unknown document or a malformed position is
InvalidParams, a version other than the document's is ContentModified (the editor asks again), a
position past the end of the document is InvalidParams. Then the region (whole lines around the
cursor, textkit/edits.py), the user's recent edits (lsp/edit_history.py) and the document's
text go to a NextEditSource as a `NextEdit` message (protocol/messages.py), and its
`NextEditResult` becomes at most one edit: inside the region, not a no-op, not a take-back of the
user's newest edit (checked here too, whatever the source says).

Prefetch of the next place: the editors apply an accepted edit (one didChange) and ask again at once,
the cursor at the end of the applied text. So when a request is answered with an edit, the request the
editor will make if the user accepts it is made at once, in the background, while the user looks at the
suggestion: the document with the edit applied, the history as lsp/edit_history.py will hold it after
that didChange (a copy of the history is given the change), the cursor at the end of the new text. The
editor's follow-up request, when it is that request (same text, cursor, history, region; the version
may differ), is answered by it: the daemon has usually finished. Any other change of the document cancels
it (its daemon request is aborted: the model's time goes to what the user does instead), and a request
it does not answer supersedes it through the scheduler.

Sources: `daemon_source(backend, scheduler)` (the daemon's `next_edit`: the pattern and the model's
rewrite, gated by the model's confidence; what the server uses) and `pattern_source` (torch-free: the
history's generalised pattern applied to the region, textkit/edit_pattern.py), which answers only as the
fallback while the daemon is starting or unavailable. What this module does not know: models, prompts.
"""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from typing import Awaitable, Callable

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from protocol import NOT_READY, Error, NextEdit, NextEditResult, decode_reply
from protocol.client import DaemonUnavailable
from textkit import edits as nep
from lsp.documents import Document
from lsp.edit_history import EditHistory

log = logging.getLogger(__name__)

CONTENT_MODIFIED = -32801        # LSP ErrorCodes.ContentModified
REQUEST_FAILED = -32803
HISTORY = 6                      # edits sent with a request (the newest)
ACCEPT_COMMAND = "tricode.accepted"

NextEditSource = Callable[[NextEdit], Awaitable[NextEditResult]]


async def pattern_source(req: NextEdit) -> NextEditResult:
    """The history's edits generalised into patterns (daemon/edit_pattern.py) and applied to the first
    line of the region they change: an edit only where the user's own change repeats."""
    t0 = time.perf_counter()
    region = req.text[req.region_start:req.region_end]
    rewrite = nep.draft(region, list(req.history), first_line_only=True,
                        cursor_line=req.text.count("\n", req.region_start, req.cursor))
    a, b, t = nep.smallest_edit(region, rewrite)
    ms = round((time.perf_counter() - t0) * 1e3, 2)
    if rewrite == region:
        return NextEditResult(id=req.id, rewrite=rewrite, reason="same", total_ms=ms, format="pattern")
    return NextEditResult(id=req.id, rewrite=rewrite, start=req.region_start + a, end=req.region_start + b, text=t,
                          confidence=0.0, total_ms=ms, format="pattern")


async def _connect(backend) -> None:
    try:
        await backend.connected_within(0.0)
    except DaemonUnavailable as e:
        log.info("next_edit: the daemon is unavailable: %s", e)


def daemon_source(backend, scheduler, debounce_s: Callable[[], float] = lambda: 0.0) -> NextEditSource:
    """The request to the daemon (`next_edit`, answered by daemon/next_edit_run.py), debounced and
    superseded through the completions' scheduler (lsp/scheduler.py, the one place that does it) under
    the key "next_edit:<uri>": a newer request for the document answers the older one with no edit and
    aborts its daemon request. While the daemon is starting or unavailable (not connected, not ready,
    or it answers NOT_READY), the pattern source answers instead: the FALLBACK, so that a suggestion
    never waits for the model to load. A daemon error is no edit, its message in `reason` (logged)."""
    async def call(req: NextEdit) -> NextEditResult:
        if backend.state != "ready" or not backend.connected:
            if backend.state in ("disconnected", "failed"):
                backend.spawn(_connect(backend))        # start/connect it for the next request
            return dataclasses.replace(await pattern_source(req), reason=f"fallback: the daemon is {backend.state}")
        ticket = scheduler.begin("next_edit:" + req.doc)
        try:
            if not await ticket.debounce(debounce_s()):
                return NextEditResult(id=req.id, reason="superseded")
            try:
                reply = await ticket.call(backend, req)
            except DaemonUnavailable as e:
                return dataclasses.replace(await pattern_source(req), reason=f"fallback: {e}")
        finally:
            ticket.done()
        if reply is None:
            return NextEditResult(id=req.id, reason="superseded")
        res = decode_reply(reply)
        if isinstance(res, NextEditResult):
            return res
        if isinstance(res, Error) and res.code == NOT_READY:
            return dataclasses.replace(await pattern_source(req), reason="fallback: the model is loading")
        log.info("next_edit: the daemon answered %r", reply)
        return NextEditResult(id=req.id, reason=f"daemon {getattr(res, 'code', '?')}: {getattr(res, 'message', res)}")
    return call


def _field(obj, *keys):
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else getattr(obj, k, None)
    return obj


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class NextEditor:
    def __init__(self, documents, history: EditHistory, source: NextEditSource | None = None,
                 spawn: Callable | None = None):
        self.documents = documents
        self.history = history
        self.source: NextEditSource = source or pattern_source
        self.spawn = spawn or asyncio.ensure_future     # runs a prefetch in the background (a Task)
        self.prefetch = True
        self.counts = {"requests": 0, "edits": 0, "empty": 0, "undo_refused": 0, "shown": 0, "fallback": 0,
                       "superseded": 0, "prefetched": 0, "prefetch_used": 0}
        self.last: dict = {}
        self._ids = 0
        self._answered: dict[str, tuple[str, int, int, str]] = {}   # uri -> (text, start, end, new) answered
        self._prefetched: dict[str, tuple[NextEdit, asyncio.Future]] = {}   # uri -> the follow-up, running

    def changed(self, uri: str, before: str, after: str) -> None:
        """A didChange took `uri` from `before` to `after`: unless it applies the edit last answered (the
        user accepted it), the follow-up made for that accept is of no use: cancelled."""
        answered = self._answered.pop(uri, None)
        if answered is not None:
            text, start, end, new = answered
            if before == text and after == text[:start] + new + text[end:]:
                return
        pre = self._prefetched.pop(uri, None)
        if pre is not None:
            pre[1].cancel()

    def _prefetch(self, snap: Document, start: int, end: int, new: str) -> None:
        """Start the request the editor makes after accepting `new` over snap.text[start:end]."""
        after = snap.text[:start] + new + snap.text[end:]
        history = copy.deepcopy(self.history)
        history.changed(snap.uri, snap.text, after, snap.version + 1)
        nxt = Document(uri=snap.uri, text=after, version=snap.version + 1, language=snap.language,
                       encoding=snap.encoding)
        line, char = nxt.position_at(start + len(new))
        req = self.request(nxt, line, char, history)
        self.counts["prefetched"] += 1
        old = self._prefetched.pop(snap.uri, None)
        if old is not None:
            old[1].cancel()
        self._prefetched[snap.uri] = (req, self.spawn(self.source(req)))

    def parse(self, params: dict) -> tuple[Document, int, int, int]:
        """(document, version, line, character) of valid params, or the LSP error saying what is wrong."""
        uri = _field(params, "textDocument", "uri")
        version = _field(params, "textDocument", "version")
        line, char = _field(params, "position", "line"), _field(params, "position", "character")
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams("textDocument/copilotInlineEdit: params.textDocument.uri must be a string")
        if not _int(version):
            raise JsonRpcInvalidParams("textDocument/copilotInlineEdit: params.textDocument.version must be an integer")
        if not (_int(line) and _int(char)) or line < 0 or char < 0:
            raise JsonRpcInvalidParams("textDocument/copilotInlineEdit: params.position must be "
                                       "{line, character} of non-negative integers")
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"textDocument/copilotInlineEdit: {uri} is not an open document "
                                       "(send textDocument/didOpen first)")
        if version != doc.version:
            raise JsonRpcException(f"textDocument/copilotInlineEdit: {uri} is at version {doc.version}, "
                                   f"the request is for version {version}; ask again", code=CONTENT_MODIFIED)
        if doc.past_end(line, char):
            raise JsonRpcInvalidParams(f"textDocument/copilotInlineEdit: position {line}:{char} is past the end "
                                       f"of {uri} ({doc.line_count()} lines)")
        return doc, version, line, char

    def request(self, doc: Document, line: int, char: int, history: EditHistory | None = None) -> NextEdit:
        history = history or self.history
        cursor = doc.offset_at(line, char)
        history.cursor(doc.uri, cursor)
        start, end = nep.region_lines(doc.text, cursor)
        last = history.last(doc.uri)
        self._ids += 1
        return NextEdit(id=self._ids, doc=doc.uri, version=doc.version, path=doc.path or doc.uri,
                        language=doc.language or "", text=doc.text, cursor=cursor, region_start=start,
                        region_end=end, history=tuple(history.diffs(HISTORY)),
                        last_old=last.old if last else "", last_new=last.new if last else "")

    async def suggest(self, params: dict) -> dict:
        doc, version, line, char = self.parse(params)
        self.counts["requests"] += 1
        # a snapshot: the document may change while the source works; positions come from this text
        snap = Document(uri=doc.uri, text=doc.text, version=doc.version, language=doc.language,
                        encoding=doc.encoding)
        t0 = time.perf_counter()
        req = self.request(snap, line, char)
        pre = self._prefetched.pop(doc.uri, None)
        used = pre is not None and dataclasses.replace(pre[0], id=req.id, version=req.version) == req \
            and not pre[1].cancelled()
        if used:
            self.counts["prefetch_used"] += 1
            res = await pre[1]
            res = dataclasses.replace(res, id=req.id)
        else:
            res = await self.source(req)
        self.counts["fallback"] += res.reason.startswith("fallback")
        self.counts["superseded"] += res.reason == "superseded"
        edits = self._edits(snap, req, res)
        self.counts["edits" if edits else "empty"] += 1
        if edits:
            self._answered[doc.uri] = (snap.text, res.start, res.end, res.text)
            if self.prefetch:
                self._prefetch(snap, res.start, res.end, res.text)
        else:
            self._answered.pop(doc.uri, None)
        self.last = {"uri": doc.uri, "version": version, "line": line, "edits": len(edits), "reason": res.reason,
                     "format": res.format, "total_ms": res.total_ms, "prefetched": used,
                     "wait_ms": round((time.perf_counter() - t0) * 1e3, 2)}
        return {"edits": edits}

    def _edits(self, snap: Document, req: NextEdit, res: NextEditResult) -> list[dict]:
        if not res.has_edit:
            return []
        if not (req.region_start <= res.start <= res.end <= req.region_end):
            log.warning("next edit outside the region (%d..%d not in %d..%d): dropped",
                        res.start, res.end, req.region_start, req.region_end)
            return []
        old = snap.text[res.start:res.end]
        if old == res.text:
            return []
        region = snap.text[req.region_start:req.region_end]
        a, b = res.start - req.region_start, res.end - req.region_start
        after = region[:a] + res.text + region[b:]
        if nep.undoes_last(region, after, req.last_old, req.last_new):
            self.counts["undo_refused"] += 1
            return []
        l0, c0 = snap.position_at(res.start)
        l1, c1 = snap.position_at(res.end)
        rng = {"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}}
        info = {"uri": snap.uri, "kind": "next_edit", "shown": len(res.text), "format": res.format,
                "confidence": res.confidence}
        return [{"range": rng, "text": res.text, "textDocument": {"uri": snap.uri, "version": snap.version},
                 "command": {"title": "tricode: accepted", "command": ACCEPT_COMMAND, "arguments": [info]}}]

    def shown(self, params) -> None:
        self.counts["shown"] += 1
        log.info("inline edit shown: %s", params)

    def describe(self) -> dict:
        return {**self.counts, "last": self.last, "history": len(self.history.recent())}
