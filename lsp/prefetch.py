"""Prefetch: tell the daemon where a completion is likely to be asked next, so that it prefills that
prompt while the user pauses (daemon/worker.py runs it at the lowest priority).

Two triggers:
- `textDocument/didOpen` (every LSP client): no cursor is known, so the daemon prepares the part of
  the prompt that does not depend on it (other files, the file's head; `cursor=False`).
- `tricode/cursorIdle` {textDocument: {uri}, position: {line, character}} (a notification the tricode
  editor clients send when the cursor has rested ~300 ms at a new place): the prompt of a completion
  at the END of the cursor's line. That is where the next edit most often starts (Enter or `o` for
  a fresh line below, `A`, a click past the end), and with the suffix-first FIM layout a fresh line
  below it keeps that prompt's every token, only appending the newline and indentation.

The same gates as a completion apply (disabled, ignored, too large, a language that is off). A
rest at the same line of the same document version as the last one is not sent again. This module
never imports torch.
"""
from __future__ import annotations

import logging

from protocol import Prefetch
from lsp import gating
from lsp.context import PREFIX_CHARS, Context
from lsp.documents import Document

log = logging.getLogger(__name__)


class Prefetcher:
    def __init__(self, backend, settings, ignore=None):
        self.backend, self.settings, self.ignore = backend, settings, ignore
        self.last: dict[str, tuple[int, int]] = {}       # uri -> (version, line) of the last rest sent
        self.counts = {"opened": 0, "rested": 0, "skipped": 0}

    def configure(self, settings) -> None:
        self.settings = settings

    def forget(self, uri: str) -> None:
        self.last.pop(uri, None)

    def opened(self, doc: Document) -> bool:
        """A document was opened: prepare its cursor-independent prompt part."""
        if not self._allowed(doc):
            return False
        # the prompt of a place near the file's end, or (a long file) the end of what the wire
        # prefix holds from the file's start: either way its head is the file's head
        end = len(doc.text) if len(doc.text) <= PREFIX_CHARS else doc.text.rfind("\n", 0, PREFIX_CHARS) + 1
        ctx = Context.at(doc, end)
        self.counts["opened"] += 1
        return self._send(Prefetch(doc=doc.uri, prefix=ctx.wire_prefix(self.backend.budget_tokens), suffix="", path=doc.path,
                                   language=doc.language or "", cursor=False))

    def rested(self, doc: Document, line: int) -> bool:
        """The cursor rested on `line`: prepare a completion at that line's end."""
        if not self._allowed(doc) or not 0 <= line < max(doc.line_count(), 1):
            return False
        if self.last.get(doc.uri) == (doc.version, line):
            self.counts["skipped"] += 1
            return False
        self.last[doc.uri] = (doc.version, line)
        ctx = Context.at(doc, doc.line_span(line)[1])
        self.counts["rested"] += 1
        return self._send(Prefetch(doc=doc.uri, prefix=ctx.wire_prefix(self.backend.budget_tokens),
                                   suffix=ctx.wire_suffix(self.backend.budget_tokens),
                                   path=doc.path, language=doc.language or "", cursor=True))

    def _allowed(self, doc: Document) -> bool:
        return (self.backend is not None and self.backend.connected
                and gating.document_gate(doc, self.settings, self.ignore) is None)

    def _send(self, msg: Prefetch) -> bool:
        self.backend.notify(msg)
        return True

    def describe(self) -> dict:
        return dict(self.counts)
