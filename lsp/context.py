"""The completion context at a cursor: the text around it, split the ways gating, the single/multi-line
decision, post-processing and the cache need it."""
from __future__ import annotations

from dataclasses import dataclass

from lsp.documents import Document

# What is sent to the daemon. The daemon builds the prompt and clips it by tokens (daemon/prompt/), once;
# it can use no more than its budget (config `context_tokens`, which it reports in hello and in every
# result: `budget_tokens`) of the text before the cursor, the same of the text after it, and of the
# file's first lines (the window layout's head). So the wire carries, of a longer text, the file's
# first lines and the last lines before the cursor (joined at line starts: the lines between are
# dropped), and the first lines after it, each within budget_tokens x CHARS_PER_TOKEN characters.
# CHARS_PER_TOKEN bounds the characters a token holds over a stretch of code from above: measured
# with the Qwen2.5-Coder and the embedded tokenizers over this repository's 219 source and text files,
# the worst 256-token window holds 6.0 characters a token (median file 3.7); 16 leaves room for
# whitespace runs and rulers. Where the budget is not known yet (an older daemon), only the hard caps
# apply, which keep a frame under the protocol's limit (protocol.MAX_FRAME, 8 MiB: at most 4 bytes a
# code point in UTF-8, 4 MiB + 2 MiB here).
CHARS_PER_TOKEN = 16
PREFIX_CHARS = 1_000_000
SUFFIX_CHARS = 500_000
# the tail before the cursor starts at a line whose index is a multiple of WIRE_STEP, chosen from the
# lines above the cursor's line: typing on a line never moves it, moving down moves it every
# WIRE_STEP lines, so the daemon's prompt (and its KV cache) keeps its start while the user types.
# The head holds a multiple of WIRE_STEP lines too, so every line sent keeps its index modulo
# WIRE_STEP: the daemon's own line steps (daemon/prompt/ WINDOW_STEP 8, CLIP_STEP 16, divisors of 64)
# fall on the same lines as in the whole file, and its prompt is the one the whole text would give.
WIRE_STEP = 64


def wire_chars(budget_tokens: int, cap: int) -> int:
    """Characters of one part of the wire text for a daemon budget of `budget_tokens` (0: unknown)."""
    return min(cap, budget_tokens * CHARS_PER_TOKEN) if budget_tokens > 0 else cap


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

    def wire_prefix(self, budget_tokens: int = 0) -> str:
        """The prefix as sent. Longer than the daemon's budget could use (budget_tokens > 0): the file's
        first lines within wire_chars (a multiple of WIRE_STEP), then the lines before the cursor from
        a stable line start (WIRE_STEP) at least wire_chars before the cursor's line. Always within
        PREFIX_CHARS."""
        prefix = self.prefix
        if budget_tokens > 0:
            limit = wire_chars(budget_tokens, PREFIX_CHARS)
            above = len(prefix) - len(self.line_prefix)        # where the cursor's line starts
            if above > 2 * limit:                               # a head and a tail that do not meet
                start = stable_line_start(prefix, above - limit)
                head_end = stable_line_start(prefix, limit)     # whole lines, a multiple of WIRE_STEP
                prefix = prefix[:head_end] + prefix[start:] if 0 < head_end < start else prefix[start:]
        if len(prefix) <= PREFIX_CHARS:
            return prefix
        cut = len(prefix) - PREFIX_CHARS
        nl = prefix.find("\n", cut)
        return prefix[nl + 1:] if 0 <= nl < cut + 2000 else prefix[cut:]

    def wire_suffix(self, budget_tokens: int = 0) -> str:
        """The suffix as sent: its first lines within wire_chars (and SUFFIX_CHARS)."""
        limit = wire_chars(budget_tokens, SUFFIX_CHARS)
        if len(self.suffix) <= limit:
            return self.suffix
        nl = self.suffix.rfind("\n", 0, limit)
        return self.suffix[: nl + 1] if nl >= limit // 2 else self.suffix[:limit]


def stable_line_start(text: str, at: int) -> int:
    """The start of the last line at or before offset `at` whose index in `text` is a multiple of
    WIRE_STEP: it moves only when `at` crosses such a line, not with every character or line."""
    line = text.count("\n", 0, at)
    start = text.rfind("\n", 0, at) + 1
    for _ in range(line % WIRE_STEP):
        if start == 0:
            break
        start = text.rfind("\n", 0, start - 1) + 1
    return start


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
