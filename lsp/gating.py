"""Gating: decide, before any model work, whether a completion is wanted at all.

`document_gate` looks at the file (language, size, binary, ignored), `cursor_gate` at the cursor
(middle of a word, text after the cursor). Each returns None (go ahead) or a short reason that is
logged and shown by `tricode/status`.
"""
from __future__ import annotations

from textkit.gitignore import IgnoreMatcher
from lsp.context import Context
from lsp.documents import Document
from lsp.settings import Settings

# what may follow the cursor on its line: closing brackets, quotes and separators an editor
# auto-inserts or the user already typed, and whitespace
CLOSING = set(")]}>\"'`;,:") | set(" \t")


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def document_gate(doc: Document, settings: Settings, ignore: IgnoreMatcher | None = None) -> str | None:
    if not settings.enabled:
        return "disabled"
    lang = (doc.language or "").lower()
    if lang and lang in {x.lower() for x in settings.disabled_languages}:
        return f"language {lang} disabled"
    return content_gate(doc, settings, ignore)


def content_gate(doc: Document, settings: Settings, ignore: IgnoreMatcher | None = None) -> str | None:
    """The file itself: too large, binary, ignored (also decides what the daemon hears of it)."""
    n = len(doc.text)
    if n > settings.max_file_bytes or (n * 4 > settings.max_file_bytes
                                       and len(doc.text.encode("utf-8", "surrogatepass")) > settings.max_file_bytes):
        return f"file over {settings.max_file_bytes} bytes"
    if "\x00" in doc.text:
        return "binary file"
    if settings.respect_gitignore and ignore is not None and doc.path and ignore.is_ignored(doc.path):
        return "ignored by .gitignore"
    return None


def cursor_gate(ctx: Context) -> str | None:
    after = ctx.line_suffix
    if after[:1] and is_word_char(after[0]):
        return "middle of a word"
    if any(c not in CLOSING for c in after):
        return "text after the cursor"
    return None
