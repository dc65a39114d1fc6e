"""Single-line or multi-line: decided from the cursor's syntactic position.

Multi-line when the body of a block is still empty: the cursor at the end of a `def`/`class`/block
opener line whose body is not written yet, or on a blank line right after such an opener; or on a
blank line at the end of a block (the next code is dedented or there is none). Everything else is one
line. The plan also carries the indentation the suggestion must keep (`block_indent`): post-processing
stops a multi-line suggestion at the first line that leaves the block.
"""
from __future__ import annotations

from dataclasses import dataclass

from lsp.context import Context, indent_width
from lsp.languages import family, is_block_opener
from lsp.settings import Settings


@dataclass(frozen=True)
class Plan:
    multiline: bool
    max_lines: int
    max_tokens: int
    block_indent: int = 0       # lines after the first must be indented at least this much
    closer_indent: int = -1     # brace languages: a closing line at this indent ends the block (kept)
    reason: str = ""


def plan(ctx: Context, settings: Settings) -> Plan:
    kind, block_indent, closer_indent = _classify(ctx)
    if kind is None or settings.max_lines <= 1:
        return Plan(False, 1, settings.max_tokens, reason=kind and "max_lines is 1" or "inside a line")
    return Plan(True, settings.max_lines, settings.max_tokens, block_indent, closer_indent, kind)


def _classify(ctx: Context) -> tuple[str | None, int, int]:
    """(reason, block_indent, closer_indent) for a multi-line position, (None, 0, -1) otherwise."""
    if ctx.line_suffix.strip() and not _only_closers(ctx.line_suffix):
        return None, 0, -1
    lang = ctx.language
    braces = family(lang) == "brace"
    nxt = ctx.next_nonblank()
    if ctx.line_prefix.strip():
        # cursor after code: only the end of a block opener whose body is empty
        line = ctx.line_prefix + ctx.line_suffix
        if not is_block_opener(ctx.line_prefix, lang):
            return None, 0, -1
        own = indent_width(line)
        auto_closed = "}" in ctx.line_suffix
        if auto_closed or nxt is None or indent_width(nxt) <= own:
            return "empty block after an opener", own + 1, own if braces else -1
        return None, 0, -1
    # cursor on a blank (whitespace-only) line
    cur = indent_width(ctx.line_prefix)
    prev = ctx.prev_nonblank()
    if prev is not None and is_block_opener(prev, lang):
        p = indent_width(prev)
        if nxt is None or indent_width(nxt) <= p:
            return "empty block after an opener", p + 1, p if braces else -1
    if nxt is None:
        return "blank line at the end of the file", cur, -1
    if indent_width(nxt) < cur:
        return "blank line at the end of a block", cur, -1
    return None, 0, -1


def _only_closers(text: str) -> bool:
    return all(c in ")]}>\"'`;, \t" for c in text)
