"""The completion context at a cursor: the text around it, split the ways gating, the single/multi-line
decision, post-processing and the cache need it."""
from __future__ import annotations

from dataclasses import dataclass

from lsp.documents import Document

# What is sent to the daemon: the whole text around the cursor, up to a hard cap that only keeps a
# frame under the protocol's limit (protocol.MAX_FRAME, 8 MiB: at most 4 bytes a code point in UTF-8,
# 4 MiB + 2 MiB here). The prompt is clipped once, by tokens, by the daemon, which owns the budget
# (daemon/prompt/).
PREFIX_CHARS = 1_000_000
SUFFIX_CHARS = 500_000


@dataclass(frozen=True)
class Context:
    uri: str
    path: str
    language: str
    offset: int            # cursor offset in the document text (code points)
    prefix: str            # all text before the cursor
    suffix: str            # all text after the cursor
    line_prefix: str       # the cursor line before the cursor
    line_suffix: str       # the cursor line after the cursor (without its line ending)
    eol: str = "\n"

    @classmethod
    def at(cls, doc: Document, offset: int) -> "Context":
        text = doc.text
        offset = max(0, min(offset, len(text)))
        ls = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
        le = offset
        while le < len(text) and text[le] not in "\r\n":
            le += 1
        return cls(uri=doc.uri, path=doc.path, language=doc.language or "", offset=offset,
                   prefix=text[:offset], suffix=text[offset:], line_prefix=text[ls:offset],
                   line_suffix=text[offset:le], eol=doc.eol())

    @classmethod
    def from_text(cls, text: str, offset: int | None = None, *, language: str = "python",
                  uri: str = "file:///t.py") -> "Context":
        """For tests and prompt builders: a context in a plain string ("|" marks nothing; pass offset)."""
        doc = Document(uri=uri, text=text, language=language)
        return cls.at(doc, len(text) if offset is None else offset)

    # -- neighbours -----------------------------------------------------------------------------------

    def lines_before(self) -> list[str]:
        """Whole lines above the cursor line, nearest last."""
        head = self.prefix[: len(self.prefix) - len(self.line_prefix)]
        return split_lines(head)[:-1] if head else []

    def lines_after(self) -> list[str]:
        """Whole lines below the cursor line, nearest first."""
        rest = self.suffix[len(self.line_suffix):]
        if not rest:
            return []
        rest = rest[2:] if rest.startswith("\r\n") else rest[1:]
        return split_lines(rest) if rest else []

    def prev_nonblank(self) -> str | None:
        for line in reversed(self.lines_before()):
            if line.strip():
                return line
        return None

    def next_nonblank(self) -> str | None:
        for line in self.lines_after():
            if line.strip():
                return line
        return None

    # -- what goes on the wire ------------------------------------------------------------------------

    def wire_prefix(self) -> str:
        """The prefix, or its last PREFIX_CHARS code points from a line start when it is longer."""
        if len(self.prefix) <= PREFIX_CHARS:
            return self.prefix
        cut = len(self.prefix) - PREFIX_CHARS
        nl = self.prefix.find("\n", cut)
        return self.prefix[nl + 1:] if 0 <= nl < cut + 2000 else self.prefix[cut:]

    def wire_suffix(self) -> str:
        if len(self.suffix) <= SUFFIX_CHARS:
            return self.suffix
        nl = self.suffix.rfind("\n", 0, SUFFIX_CHARS)
        return self.suffix[: nl + 1] if nl > SUFFIX_CHARS - 2000 else self.suffix[:SUFFIX_CHARS]


def split_lines(text: str) -> list[str]:
    """Lines of `text` without their endings ("\\n", "\\r\\n", "\\r"); a trailing ending gives a last ""."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def indent_width(line: str, tab: int = 4) -> int:
    """Width of a line's leading whitespace, tabs counted as `tab` columns."""
    n = 0
    for c in line:
        if c == " ":
            n += 1
        elif c == "\t":
            n += tab - n % tab
        else:
            break
    return n


def leading_ws(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]
