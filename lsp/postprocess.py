"""Post-processing: turn the model's raw continuation into the suggestion an editor shows.

In order: cut where the suggestion begins to repeat itself (textkit/loops.py: a run of repeated
tokens within a line, a repeated line or block; the daemon cuts there too and stops decoding); keep one line (single-line) or the lines that stay in the block (multi-line, "keep the
indentation of the block"); cut where the suggestion starts repeating the code below the cursor; drop
closing brackets/quotes the rest of the line already has, or replace that rest when the suggestion
closes them and goes on (the replace range for auto-closed brackets); drop a suggestion that repeats
the line above or below; never return whitespace only.
"""
from __future__ import annotations

from dataclasses import dataclass

from textkit.loops import loop_cut
from lsp.context import Context, indent_width, split_lines
from lsp.languages import is_closer_line, scan_code
from lsp.multiline import Plan

OPEN = {"(": ")", "[": "]", "{": "}"}
CLOSE = {")": "(", "]": "[", "}": "{"}
SEPARATORS = ";,"


@dataclass(frozen=True)
class Suggestion:
    text: str                 # inserted at the cursor ("" = nothing to show)
    replace: int = 0          # code points after the cursor (on its line) that the text replaces
    reason: str = ""          # why it is empty or was changed (for logs and tricode/status)

    def __bool__(self) -> bool:
        return bool(self.text)


def process(raw: str, ctx: Context, plan: Plan, *, truncated: bool = False) -> Suggestion:
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    notes = []
    cut = loop_cut(text, ctx.prefix[-4000:].replace("\r\n", "\n").replace("\r", "\n"))   # reads its last lines
    if cut is not None:
        text = text[:cut]
        notes.append("cut where it began to repeat itself")
        if not text.strip():
            return Suggestion("", 0, "repeats itself")
    lines = split_lines(text)

    # the first line continues the cursor line: no second indentation after an indented cursor
    if ctx.line_prefix and not ctx.line_prefix.strip():
        lines[0] = lines[0].lstrip(" \t")

    if not plan.multiline:
        lines = lines[:1]
    else:
        lines = _keep_block(lines, plan)
        if truncated and len(lines) > 1 and lines[-1].strip():
            lines = lines[:-1]        # the budget ran out mid-line
            notes.append("unfinished last line dropped")
        lines = _cut_at_suffix(lines, ctx)
        budget = plan.max_lines + (1 if lines and not lines[0].strip() else 0)
        lines = lines[:budget]

    lines = [ln.rstrip(" \t") for ln in lines]
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    text = "\n".join(lines)
    if not text.strip():
        return Suggestion("", 0, "whitespace only")

    text, replace, note = _closers(text, ctx)
    if note:
        notes.append(note)
    if not text.strip():
        return Suggestion("", 0, "nothing left after the closing brackets")

    if _repeats_neighbour(text, replace, ctx):
        return Suggestion("", 0, "repeats the line above or below")

    if ctx.eol != "\n":
        text = text.replace("\n", ctx.eol)
    return Suggestion(text, replace, "; ".join(notes))


# -- multi-line: stay in the block, stop before the code below ----------------------------------------

def _keep_block(lines: list[str], plan: Plan) -> list[str]:
    for i in range(1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        w = indent_width(line)
        if w < plan.block_indent:
            if plan.closer_indent >= 0 and w == plan.closer_indent and is_closer_line(line):
                return lines[: i + 1]
            return lines[:i]
    return lines


def _cut_at_suffix(lines: list[str], ctx: Context) -> list[str]:
    below = ctx.next_nonblank()
    if below is None:
        return lines
    needle = below.strip()
    for i in range(1, len(lines)):
        if lines[i].strip() == needle:
            return lines[:i]
    return lines


# -- closing brackets the rest of the line already has --------------------------------------------

def open_quote(line_prefix: str) -> str | None:
    """The quote character of a string the cursor is in (on this line), if any."""
    quote = None
    for _, quote in scan_code(line_prefix):
        pass
    return quote


def external_closers(text: str, in_string: str | None = None) -> list[int]:
    """Positions in `text` of the brackets/quotes that close something opened before the cursor."""
    out: list[int] = []
    stack: list[str] = []
    outer = in_string             # the string the cursor is in: the first character outside strings closes it
    for i, _ in scan_code(text, quote=in_string):
        c = text[i]
        if outer:
            out.append(i)
            outer = None
        elif c in OPEN:
            stack.append(c)
        elif c in CLOSE:
            if stack and stack[-1] == CLOSE[c]:
                stack.pop()
            else:
                out.append(i)
                stack.clear()
    return out


def _closers(text: str, ctx: Context) -> tuple[str, int, str]:
    """(text, replace, note) after reconciling the suggestion with closers after the cursor."""
    rest = ctx.line_suffix
    have = "".join(rest.split())
    if not have:
        return text, 0, ""
    ext = external_closers(text, open_quote(ctx.line_prefix))
    if not ext:
        return text, 0, ""
    first = ext[0]
    tail = "".join(text[first:].split())
    closes = "".join(text[i] for i in ext)
    ext_set = set(ext)
    if all(i in ext_set or text[i] in SEPARATORS or text[i].isspace() for i in range(first, len(text))):
        if have.startswith(tail):
            return _cut(text, first), 0, "closing brackets already after the cursor dropped"
        if tail.startswith(have):
            return text, len(rest.rstrip()), "replaces the closing brackets after the cursor"
        return _cut(text, first), 0, "mismatched closing brackets dropped"
    # the suggestion closes brackets and goes on: it replaces the closers it re-types
    if have.startswith(closes):
        return text, _span_of(rest, len(closes)), "replaces the closing brackets after the cursor"
    if closes.startswith(have):
        return text, len(rest.rstrip()), "replaces the closing brackets after the cursor"
    return _cut(text, first), 0, "mismatched closing brackets dropped"


def _cut(text: str, at: int) -> str:
    head = text[:at]
    stripped = head.rstrip(" \t")
    if stripped.endswith("\n"):
        return head               # the closer sat on its own line: keep the line break and indentation
    return stripped


def _span_of(rest: str, n: int) -> int:
    """Length of the shortest prefix of `rest` holding `n` non-whitespace characters."""
    seen = 0
    for i, c in enumerate(rest):
        if not c.isspace():
            seen += 1
            if seen == n:
                return i + 1
    return len(rest.rstrip())


# -- repeats ------------------------------------------------------------------------------------------

def _repeats_neighbour(text: str, replace: int, ctx: Context) -> bool:
    first = text.split("\n", 1)[0]
    if not first.strip():
        return False
    line = ctx.line_prefix + first + ctx.line_suffix[replace:]
    s = line.strip()
    if not s or is_closer_line(s):
        return False
    before = ctx.lines_before()
    above = next((ln for ln in reversed(before) if ln.strip()), None)
    below = ctx.next_nonblank()
    return s == (above or "").strip() or s == (below or "").strip()
