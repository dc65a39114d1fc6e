"""A small per-document cache of suggestions, keyed by the completion context.

An entry remembers the context it was made in: the prefix length and its last characters, the suffix
length and its first characters, and the plan (lines/tokens). Two ways to hit:

- exact: the same context again (the cursor came back, the editor re-asked): the stored suggestion,
  empty ones included (no point asking the model twice for nothing);
- typed-through: the user typed the first characters of the shown suggestion, so the new prefix is the
  old one plus those characters and the suffix is unchanged: the rest of the suggestion, no model call.

Settings changes clear it; closing a document drops its entries.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from lsp.context import Context
from lsp.postprocess import Suggestion

TAIL = 2048
HEAD = 1024


@dataclass
class Entry:
    prefix_len: int
    prefix_tail: str
    suffix_len: int
    suffix_head: str
    key: tuple
    suggestion: Suggestion
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    suggestion: Suggestion
    info: dict
    typed: str          # "" for an exact hit, else the characters typed through


class CompletionCache:
    def __init__(self, per_document: int = 32):
        self.per_document = per_document
        self._docs: dict[str, OrderedDict[int, Entry]] = {}
        self._next = 0
        self.hits = 0
        self.typed_hits = 0
        self.misses = 0

    def store(self, ctx: Context, key: tuple, suggestion: Suggestion, info: dict | None = None) -> None:
        entries = self._docs.setdefault(ctx.uri, OrderedDict())
        for k, e in list(entries.items()):      # one entry per context
            if e.prefix_len == len(ctx.prefix) and e.key == key and self._same_context(e, ctx):
                del entries[k]
        self._next += 1
        entries[self._next] = Entry(len(ctx.prefix), ctx.prefix[-TAIL:], len(ctx.suffix), ctx.suffix[:HEAD],
                                    key, suggestion, dict(info or {}))
        while len(entries) > self.per_document:
            entries.popitem(last=False)

    def lookup(self, ctx: Context, key: tuple) -> Hit | None:
        entries = self._docs.get(ctx.uri)
        if not entries:
            self.misses += 1
            return None
        n = len(ctx.prefix)
        for k in reversed(list(entries)):
            e = entries[k]
            if e.suffix_len != len(ctx.suffix) or not ctx.suffix.startswith(e.suffix_head):
                continue
            if e.prefix_len == n:
                if e.key == key and self._same_context(e, ctx):
                    entries.move_to_end(k)
                    self.hits += 1
                    return Hit(e.suggestion, e.info, "")
            elif e.prefix_len < n and e.suggestion.text:
                typed = ctx.prefix[e.prefix_len:]
                text = e.suggestion.text
                if len(typed) < len(text) and text.startswith(typed) and \
                        ctx.prefix[max(0, e.prefix_len - len(e.prefix_tail)): e.prefix_len] == e.prefix_tail:
                    rest = text[len(typed):]
                    if not rest.strip():
                        continue
                    entries.move_to_end(k)
                    self.typed_hits += 1
                    return Hit(Suggestion(rest, e.suggestion.replace, "typed through"), e.info, typed)
        self.misses += 1
        return None

    @staticmethod
    def _same_context(e: Entry, ctx: Context) -> bool:
        return ctx.prefix.endswith(e.prefix_tail)

    def drop(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def clear(self) -> None:
        self._docs.clear()

    def stats(self) -> dict:
        return {"hits": self.hits, "typed_through": self.typed_hits, "misses": self.misses,
                "entries": sum(len(v) for v in self._docs.values())}
