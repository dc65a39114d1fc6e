"""The user's recent edits, made from didChange events, for next-edit suggestions (lsp/next_edit.py).

An *edit* is a burst of changes at one place of one document: each didChange event is reduced to the
span of text it changed (the common prefix and suffix of the text before and after it, so incremental,
whole-document and multi-change events are treated alike), and it joins the document's open edit when
its span touches or overlaps the open edit's span (within SLACK characters) and it came less than
PAUSE_S seconds after the previous change. A change elsewhere in the document (the cursor jumped), a
pause, a change in another document, or a cursor report away from the edit (`cursor()`) closes the
open edit. A closed edit that gives a document back the text it had before the previous edit is an
undo: both leave the history, and the undone edit is kept as `undone` so that it is not proposed again.

The history keeps the last MAX_EDITS edits across the workspace, oldest first, each as a unified diff
with the document's path (CONTEXT lines around). The open edits count as the newest ones: they are
what the user just did.

What this module does not know: the cursor (editors report it only with requests), languages, the
model. It keeps one text per document with an open edit (the text before the burst), nothing else.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from lsp.documents import uri_to_path

PAUSE_S = 2.0        # a pause this long between two changes ends the edit
SLACK = 1            # characters between two spans that still make them one place
MAX_EDITS = 16       # edits kept across the workspace (Zeta sends up to 16)
CONTEXT = 1          # context lines in each diff
MAX_DIFF_LINES = 40  # a diff longer than this (a paste, a reformat) is cut, marked with a line "..."


@dataclass(frozen=True)
class Edit:
    """One closed (or, with `open=True`, still growing) edit of a document."""
    uri: str
    path: str
    old: str            # the changed lines before the edit (whole lines, with their line endings)
    new: str            # the same lines after it
    line: int           # 0-based first line of `old` in the text before the edit (== of `new` after it)
    diff: str           # unified diff, `--- a/path` / `+++ b/path` / one hunk with CONTEXT lines
    version: int = 0    # the document version after the edit
    open: bool = False

    @property
    def empty(self) -> bool:
        return self.old == self.new


@dataclass
class _Open:
    base: str            # the document's text before the burst
    start: int           # span of the burst in the current text ...
    end: int
    base_end: int        # ... and the end of that span in `base` (the start is the same offset there)
    last: float          # time of the latest change
    version: int = 0


def changed_span(before: str, after: str) -> tuple[int, int, int]:
    """(start, end_before, end_after): the shortest span outside which `before` and `after` agree.
    Binary search on slices, so a keystroke in a large file costs C-speed comparisons, not a Python loop."""
    n = min(len(before), len(after))
    lo, hi = 0, n                      # common prefix length in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if before[:mid] == after[:mid]:
            lo = mid
        else:
            hi = mid - 1
    p = lo
    lo, hi = 0, n - p                  # common suffix length, not overlapping the prefix
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if before[len(before) - mid:] == after[len(after) - mid:]:
            lo = mid
        else:
            hi = mid - 1
    return p, len(before) - lo, len(after) - lo


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset)


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _line_end(text: str, offset: int) -> int:
    """Offset after the line ending of the line holding `offset` (the text's end on the last line)."""
    i = text.find("\n", offset)
    return len(text) if i < 0 else i + 1


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) if text else []


def make_edit(uri: str, before: str, after: str, version: int = 0, open: bool = False,
              context: int = CONTEXT) -> Edit:
    """The Edit that turns `before` into `after` (one span: the two texts differ in one place)."""
    start, end_b, end_a = changed_span(before, after)
    ls = _line_start(before, start)                # == in `after`: the prefix is shared
    # whole lines up to the end of the line holding each span's end: what follows is the same text
    old_l = _lines(before[ls:_line_end(before, end_b)])
    new_l = _lines(after[ls:_line_end(after, end_a)])
    line = _line_of(before, ls)
    while old_l and new_l and old_l[0] == new_l[0]:      # a span that ends or starts at a line break
        old_l.pop(0), new_l.pop(0)
        line += 1
    while old_l and new_l and old_l[-1] == new_l[-1]:
        old_l.pop(), new_l.pop()
    old, new = "".join(old_l), "".join(new_l)
    path = uri_to_path(uri) or uri
    return Edit(uri=uri, path=path, old=old, new=new, line=line, version=version, open=open,
                diff=unified_diff(path, before, line, old, new, context))


def unified_diff(path: str, before: str, line: int, old: str, new: str, context: int = CONTEXT) -> str:
    """One hunk: `context` lines of `before` around the changed lines, `old` as '-', `new` as '+'."""
    all_lines = _lines(before)
    old_l, new_l = _lines(old), _lines(new)
    pre = all_lines[max(0, line - context): line]
    post = all_lines[line + len(old_l): line + len(old_l) + context]
    first = line - len(pre) + 1
    n_old = len(pre) + len(old_l) + len(post)
    n_new = len(pre) + len(new_l) + len(post)
    body = ([" " + s for s in pre] + ["-" + s for s in old_l] + ["+" + s for s in new_l]
            + [" " + s for s in post])
    if len(body) > MAX_DIFF_LINES:
        body = body[:MAX_DIFF_LINES] + ["...\n"]
    body = [s if s.endswith("\n") else s + "\n" for s in body]   # the last line of a file has no newline
    start_old = first if n_old else first - 1
    start_new = first if n_new else first - 1
    head = f"--- a/{path}\n+++ b/{path}\n@@ -{start_old},{n_old} +{start_new},{n_new} @@\n"
    return head + "".join(body)


@dataclass
class EditHistory:
    pause_s: float = PAUSE_S
    max_edits: int = MAX_EDITS
    slack: int = SLACK
    clock: object = time.monotonic
    edits: deque = field(default_factory=deque)          # closed Edits, oldest first
    undone: list = field(default_factory=list)           # edits the user took back (newest last)
    _open: dict = field(default_factory=dict)            # uri -> _Open
    _order: list = field(default_factory=list)           # uris with an open edit, oldest first
    _texts: dict = field(default_factory=dict)           # uri -> the text the open edit started from

    # -- events ---------------------------------------------------------------------------------------

    def changed(self, uri: str, before: str, after: str, version: int = 0) -> None:
        """A didChange event took the document from `before` to `after`."""
        if before == after:
            return
        now = self.clock()
        start, end_b, end_a = changed_span(before, after)
        for other in [u for u in self._order if u != uri]:    # an edit in another document ends those
            self._close(other)
        cur = self._open.get(uri)
        if cur is not None:
            near = start <= cur.end + self.slack and end_b >= cur.start - self.slack
            if near and now - cur.last < self.pause_s:
                delta = cur.end - cur.base_end             # how far the open edit moved later text
                cur.base_end = max(cur.base_end, end_b - delta)
                cur.end = max(cur.end, end_b) + (end_a - end_b)
                cur.start = min(cur.start, start)
                cur.last, cur.version = now, version
                self._texts[uri] = after
                return
            self._close(uri)
        self._open[uri] = _Open(base=before, start=start, end=end_a, base_end=end_b, last=now, version=version)
        self._texts[uri] = after
        self._order.append(uri)

    def cursor(self, uri: str, offset: int) -> None:
        """The editor reported the cursor (with a request): away from the open edit, that edit is over."""
        cur = self._open.get(uri)
        if cur is not None and not (cur.start - self.slack <= offset <= cur.end + self.slack):
            self._close(uri)
        for other in [u for u in self._order if u != uri]:
            self._close(other)

    def closed(self, uri: str) -> None:
        """The document was closed: its open edit is kept as a closed one."""
        self._close(uri)

    # -- reading --------------------------------------------------------------------------------------

    def recent(self, n: int | None = None) -> list[Edit]:
        """The last `n` edits (all kept when None), oldest first; open edits last, marked open."""
        self._expire()
        out = list(self.edits)
        for uri in self._order:
            e = self._edit_of(uri, open=True)
            if e is not None and not e.empty:
                out.append(e)
        return out[-n:] if n else out

    def diffs(self, n: int | None = None) -> list[str]:
        return [e.diff for e in self.recent(n)]

    def last(self, uri: str | None = None) -> Edit | None:
        """The newest edit (of `uri` when given)."""
        for e in reversed(self.recent()):
            if uri is None or e.uri == uri:
                return e
        return None

    # -- internals ------------------------------------------------------------------------------------

    def _edit_of(self, uri: str, open: bool) -> Edit | None:
        cur = self._open.get(uri)
        if cur is None:
            return None
        return make_edit(uri, cur.base, self._texts[uri], cur.version, open=open)

    def _expire(self) -> None:
        now = self.clock()
        for uri in [u for u in self._order if now - self._open[u].last >= self.pause_s]:
            self._close(uri)

    def _close(self, uri: str) -> None:
        e = self._edit_of(uri, open=False)
        self._open.pop(uri, None)
        self._texts.pop(uri, None)
        if uri in self._order:
            self._order.remove(uri)
        if e is None or e.empty:
            return
        prev = next((p for p in reversed(self.edits) if p.uri == uri), None)
        if prev is not None and self.edits[-1] is prev and is_undo(prev, e):
            self.edits.pop()
            self.undone.append(prev)
            del self.undone[:-self.max_edits]
            return
        self.edits.append(e)
        while len(self.edits) > self.max_edits:
            self.edits.popleft()


def is_undo(prev: Edit, e: Edit) -> bool:
    """Does `e` take back `prev` (the same lines, turned back into what they were)?"""
    if e.uri != prev.uri:
        return False
    a, b = prev.old, prev.new
    if e.line == prev.line and e.old == b and e.new == a:
        return True
    # the undo may have been cut into a smaller span (shared first/last lines): compare by content
    return bool(e.old) and e.old in b and e.new in a and b.replace(e.old, e.new, 1) == a
