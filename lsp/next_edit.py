"""Next-edit suggestions over LSP: `textDocument/copilotInlineEdit`, Copilot's request.

    params  {textDocument: {uri, version}, position}
    result  {edits: [{range, text, textDocument: {uri, version}, command?}]}   alternatives, best first;
            [] when nothing should change
    notification textDocument/didShowInlineEdit {item: {...the edit shown...}}   (counted, logged)

A request is checked like every other one: an unknown document or a malformed position is
InvalidParams, a version other than the document's is ContentModified (the editor asks again), a
position past the end of the document is InvalidParams. Then the region (whole lines around the
cursor, daemon/next_edit_prompt.py), the user's recent edits (lsp/edit_history.py) and the document's
text go to a NextEditSource as a `NextEdit` message (daemon/next_edit_messages.py), and its
`NextEditResult` becomes at most one edit: inside the region, not a no-op, not a take-back of the
user's newest edit (checked here too, whatever the source says).

Sources: `pattern_source` (torch-free: the history's generalised pattern applied to the region,
daemon/edit_pattern.py; what answers until the daemon serves `next_edit`) and `daemon_source(backend)`
(the request to the daemon, for when the protocol package has the message). What this module does not
know: models, prompts.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from protocol import NextEdit, NextEditResult
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


def daemon_source(backend) -> NextEditSource:
    """The request to the daemon (its `next_edit` message); an error reply is no edit, logged."""
    async def call(req: NextEdit) -> NextEditResult:
        reply = await backend.client.request(req)
        if not isinstance(reply, dict) or reply.get("type") != "next_edit_result":
            log.info("next_edit: the daemon answered %r", reply)
            return NextEditResult(id=req.id, reason=f"daemon: {reply.get('code') if isinstance(reply, dict) else reply}")
        known = NextEditResult.__dataclass_fields__
        return NextEditResult(**{k: v for k, v in reply.items() if k in known})
    return call


def _field(obj, *keys):
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else getattr(obj, k, None)
    return obj


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class NextEditor:
    def __init__(self, documents, history: EditHistory, source: NextEditSource | None = None):
        self.documents = documents
        self.history = history
        self.source: NextEditSource = source or pattern_source
        self.counts = {"requests": 0, "edits": 0, "empty": 0, "undo_refused": 0, "shown": 0}
        self.last: dict = {}
        self._ids = 0

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

    def request(self, doc: Document, line: int, char: int) -> NextEdit:
        cursor = doc.offset_at(line, char)
        self.history.cursor(doc.uri, cursor)
        start, end = nep.region_lines(doc.text, cursor)
        last = self.history.last(doc.uri)
        self._ids += 1
        return NextEdit(id=self._ids, doc=doc.uri, version=doc.version, path=doc.path or doc.uri,
                        language=doc.language or "", text=doc.text, cursor=cursor, region_start=start,
                        region_end=end, history=tuple(self.history.diffs(HISTORY)),
                        last_old=last.old if last else "", last_new=last.new if last else "")

    async def suggest(self, params: dict) -> dict:
        doc, version, line, char = self.parse(params)
        self.counts["requests"] += 1
        # a snapshot: the document may change while the source works; positions come from this text
        snap = Document(uri=doc.uri, text=doc.text, version=doc.version, language=doc.language,
                        encoding=doc.encoding)
        req = self.request(snap, line, char)
        res = await self.source(req)
        edits = self._edits(snap, req, res)
        self.counts["edits" if edits else "empty"] += 1
        self.last = {"uri": doc.uri, "version": version, "line": line, "edits": len(edits), "reason": res.reason,
                     "format": res.format, "total_ms": res.total_ms}
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
