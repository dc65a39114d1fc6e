"""The loop guard: where a completion starts repeating itself (pure text; no torch, no tokenizer).

Small models fall into loops that greedy decoding never leaves: `def __init__(self, context, locals,
locals, locals, ...` within a line, or the same line (or pair of lines) again and again. Two rules,
both on what the model wrote, read together with the text before the cursor (`before`, the cursor
line's start and the lines above it), because a loop often begins in what the user typed:

1. Within a line: a unit of 1 to MAX_UNIT lexical tokens (words, numbers, single punctuation marks;
   whitespace ignored) repeated back to back. It counts as a loop when the run reaches
   - NAME_RUN occurrences for a unit that holds a name (`, locals` x3: `locals, locals, locals, locals`);
     `f(x, x)`, `(n, n, n)` (a 3-d shape: the unit `, n` occurs twice) stay;
   - LITERAL_RUN occurrences for a unit of literals only (numbers, strings, None/True/False):
     `[0, 0, 0, 0]`, `(None, None, None)` are ordinary code, a row of 12 zeros is rarely meant;
   - never for punctuation alone (`# ------`, `))))`: rulers and closers are not loops).
2. Across lines: a non-blank line with a word in it equal to the line before it (indentation
   included, so `    }` after `}` is not a repeat), or a block of 2 to MAX_BLOCK lines equal to the
   block before it.

`loop_cut(text, before)` returns where to cut `text` (keep the first occurrence, drop the repeats),
or None. The cut never lies before 0: a loop that began in `before` cuts the whole text. Once a text
has a loop every longer text has it too, so a decoder can stop at the first token that shows one.
"""
from __future__ import annotations

import re

MAX_UNIT = 8
NAME_RUN = 3
LITERAL_RUN = 12
MAX_BLOCK = 4
BEFORE_LINES = 4           # lines of `before` read (the loop may have begun there)

_LEX = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|[A-Za-z_]\w*|\d[\w.]*|\S")
_CONSTANTS = frozenset(("None", "True", "False", "null", "true", "false", "nil"))
_WORD = re.compile(r"\w")
_CLOSERS = frozenset(")]}\"'")


def _kind(tok: str) -> int:
    """2: a name, 1: a literal, 0: punctuation."""
    c = tok[0]
    if c.isalpha() or c == "_":
        return 1 if tok in _CONSTANTS else 2
    if c.isdigit() or c in "\"'":
        return 1
    return 0


def line_loop(line: str, start: int = 0) -> int | None:
    """Offset in `line` where a repeating run of tokens starts repeating (its second occurrence),
    counting only runs that reach into line[start:]; None when there is none."""
    toks = [(m.group(), m.start()) for m in _LEX.finditer(line)]
    words = [t for t, _ in toks]
    kinds = [_kind(t) for t in words]
    best = None
    for n in range(1, MAX_UNIT + 1):
        i = 0
        while i + 2 * n <= len(words):
            count = 1
            while i + (count + 1) * n <= len(words) and words[i + count * n:i + (count + 1) * n] == words[i:i + n]:
                count += 1
            if count > 1:
                kind = max(kinds[i:i + n])
                need = NAME_RUN if kind == 2 else LITERAL_RUN if kind == 1 else 0
                end = toks[i + count * n - 1][1] + len(words[i + count * n - 1])
                if need and count >= need and end > start:
                    k = i + n               # the second occurrence; keep no dangling `,` or `+`
                    while k - 1 > i and kinds[k - 1] == 0 and words[k - 1] not in _CLOSERS:
                        k -= 1
                    cut = toks[k - 1][1] + len(words[k - 1])
                    best = cut if best is None else min(best, cut)
                    break
            i += 1
    return best


def loop_cut(text: str, before: str = "") -> int | None:
    """Where to cut `text` (a completion that follows `before`) so that no loop is left; None: no loop."""
    at = len(before)
    for _ in range(BEFORE_LINES + 1):           # the cursor line's start and the lines above it
        at = before.rfind("\n", 0, at)
        if at < 0:
            break
    context = before[at + 1:]
    full = context + text
    base = len(context)
    lines = full.split("\n")
    starts, pos = [], 0
    for ln in lines:
        starts.append(pos)
        pos += len(ln) + 1
    first = context.count("\n")            # the cursor line: the first line that holds generated text
    cut = None

    def found(at: int) -> None:
        nonlocal cut
        at = max(at - base, 0)
        cut = at if cut is None else min(cut, at)

    for j in range(first, len(lines)):
        line = lines[j]
        k = line_loop(line, max(base - starts[j], 0))
        if k is not None:
            found(starts[j] + len(line[:k].rstrip()))
        complete = j < len(lines) - 1           # a line counts once its newline is there
        if not complete or not _WORD.search(line):
            continue
        if j >= 1 and line == lines[j - 1]:
            found(starts[j] - 1)                # before the newline that starts the repeat
            continue
        for b in range(2, MAX_BLOCK + 1):
            if j - 2 * b + 1 < 0:
                break
            if lines[j - b + 1:j + 1] == lines[j - 2 * b + 1:j - b + 1] and \
                    any(_WORD.search(x) for x in lines[j - b + 1:j + 1]):
                found(starts[j - b + 1] - 1)
                break
        if cut is not None:
            break
    return cut
