"""Open documents, kept in sync incrementally, and LSP positions in the negotiated encoding.

Offsets here are indices into the Python string (code points). LSP positions count `character` in
the encoding agreed at `initialize`: UTF-16 code units (the default), UTF-8 bytes or UTF-32 code
points. Lines end at "\\n", "\\r\\n" or "\\r" only (what the LSP says; str.splitlines would also split at
form feeds and U+2028, which editors do not).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
_EOL = re.compile(r"\r\n|\r|\n")


def units(text: str, encoding: str) -> int:
    """Length of `text` in the code units of `encoding`."""
    if encoding == UTF32 or text.isascii():
        return len(text)
    if encoding == UTF16:
        return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)
    return len(text.encode("utf-8", "surrogatepass"))


def column_to_index(line: str, character: int, encoding: str) -> int:
    """Code-point index in `line` of a column counted in `encoding` units (clamped to the line;
    a column inside a multi-unit character rounds up to the character's end)."""
    if character <= 0:
        return 0
    if encoding == UTF32 or line.isascii():
        return min(character, len(line))
    count = 0
    for i, c in enumerate(line):
        if count >= character:
            return i
        o = ord(c)
        if encoding == UTF16:
            count += 2 if o > 0xFFFF else 1
        else:
            count += 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4
    return len(line)


def uri_to_path(uri: str) -> str:
    """Filesystem path of a file:// URI; "" for other schemes (untitled:, etc.)."""
    p = urlparse(uri)
    if p.scheme != "file":
        return ""
    return unquote(p.path)


@dataclass
class Document:
    uri: str
    text: str
    version: int = 0
    language: str = ""
    encoding: str = UTF16
    _starts: list[int] | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return uri_to_path(self.uri)

    # -- lines ----------------------------------------------------------------------------------------

    @property
    def line_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _EOL.finditer(self.text)]
        return self._starts

    def line_count(self) -> int:
        return len(self.line_starts)

    def line_span(self, line: int) -> tuple[int, int]:
        """(start, end) offsets of a line's content, without its line ending."""
        starts = self.line_starts
        start = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(self.text)
        while end > start and self.text[end - 1] in "\r\n":
            end -= 1
        return start, end

    def line_text(self, line: int) -> str:
        s, e = self.line_span(line)
        return self.text[s:e]

    def eol(self) -> str:
        """The document's line ending (the first one found; "\\n" when it has none)."""
        m = _EOL.search(self.text)
        return m.group(0) if m else "\n"

    # -- positions ------------------------------------------------------------------------------------

    def offset_at(self, line: int, character: int) -> int:
        """Offset of an LSP position (clamped into the document, like editors do)."""
        if line < 0:
            return 0
        if line >= self.line_count():
            return len(self.text)
        start, end = self.line_span(line)
        return start + column_to_index(self.text[start:end], character, self.encoding)

    def past_end(self, line: int, character: int) -> bool:
        """Is the position after the document's last line, or past the end of its last line?"""
        last = self.line_count() - 1
        if line != last:
            return line > last
        start, end = self.line_span(last)
        return character > units(self.text[start:end], self.encoding)

    def position_at(self, offset: int) -> tuple[int, int]:
        """LSP (line, character) of an offset, in the document's encoding."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self.line_starts, offset) - 1
        start, end = self.line_span(line)
        offset = min(offset, end)   # an offset inside "\r\n" is the end of the line
        return line, units(self.text[start:offset], self.encoding)

    # -- edits ----------------------------------------------------------------------------------------

    def apply(self, text: str, start: tuple[int, int] | None = None, end: tuple[int, int] | None = None) -> None:
        """Replace the range start..end (LSP positions) with `text`; no range: the whole document."""
        if start is None or end is None:
            self.text = text
        else:
            a = self.offset_at(*start)
            b = max(a, self.offset_at(*end))
            self.text = self.text[:a] + text + self.text[b:]
        self._starts = None


def clean_text(text: str) -> str:
    """`text` with each lone surrogate (JSON allows "\\ud800" alone) replaced by U+FFFD, which has the
    same length in UTF-16, UTF-8 (3 bytes, as with surrogatepass) and code points: positions do not
    move, and the text can be encoded for the daemon (msgpack refuses lone surrogates)."""
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class DocumentStore:
    """The open documents. A change whose range lies past the end of the document is clamped to the
    end, as the reference implementation (vscode-languageserver-textdocument) and VS Code's own model
    do: the LSP has no way to ask an editor for a document again, and dropping the change would make
    every later change land on a wrong text. Clamped changes and changes to documents that are not
    open are counted (`problems`) and logged by the server."""

    def __init__(self, encoding: str = UTF16):
        self.encoding = encoding
        self._docs: dict[str, Document] = {}
        self.problems = {"clamped_changes": 0, "unknown_documents": 0, "stale_versions": 0}

    def open(self, uri: str, text: str, version: int = 0, language: str = "") -> Document:
        doc = Document(uri=uri, text=clean_text(text), version=version, language=language, encoding=self.encoding)
        self._docs[uri] = doc
        return doc

    def change(self, uri: str, version: int, changes) -> Document | None:
        """Apply LSP content changes (objects with .text and an optional .range) in order."""
        doc = self._docs.get(uri)
        if doc is None:
            self.problems["unknown_documents"] += 1
            return None
        if version <= doc.version:
            self.problems["stale_versions"] += 1
        for ch in changes:
            rng = getattr(ch, "range", None)
            if rng is None:
                doc.apply(clean_text(ch.text))
            else:
                if doc.past_end(rng.start.line, rng.start.character) or doc.past_end(rng.end.line, rng.end.character):
                    self.problems["clamped_changes"] += 1
                doc.apply(clean_text(ch.text), (rng.start.line, rng.start.character),
                          (rng.end.line, rng.end.character))
        doc.version = version
        return doc

    def close(self, uri: str) -> Document | None:
        return self._docs.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def __iter__(self):
        return iter(list(self._docs.values()))

    def __len__(self) -> int:
        return len(self._docs)
