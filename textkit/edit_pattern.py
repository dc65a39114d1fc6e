"""Generalised patterns of the user's recent edits, applied to a region as a draft of the next edit.

A history edit such as `super(A, self).f()` -> `super().f()` is cut into token-level replacements
(Python-ish tokens: identifiers, numbers, single punctuation, runs of spaces); each becomes a rule whose
removed identifiers are wildcards, anchored on the tokens around it: here `super ( <id> , <sp> <id> )`
-> `super ( )`, which then also rewrites `super(B, self).g()`. An identifier that is kept (appears in the
inserted tokens too) is carried over as a back-reference: `print x` -> `print(x)` becomes
`print <sp> (<id>)` -> `print(\\1)`.

What this module does not know: the model, prompts, files. Pure text; no torch.
"""
from __future__ import annotations

import difflib
import keyword
import re
from dataclasses import dataclass

_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+|\s+|.", re.S)
_IDENT = re.compile(r"[A-Za-z_]\w*\Z")
MAX_RULES = 24
MERGE_GAP = 2
MIN_LITERAL = 2       # characters a rule's pattern must match literally (not wildcards, not spacing)


def tokens(s: str) -> list[str]:
    return _TOKEN.findall(s)


@dataclass(frozen=True)
class Rule:
    pattern: str        # a regex over one line
    repl: str           # its replacement (re.sub syntax)

    def apply(self, line: str) -> str:
        return re.sub(self.pattern, self.repl, line)


def _is_ident(t: str) -> bool:
    return bool(_IDENT.match(t)) and not keyword.iskeyword(t)


def rules_from_edit(old: str, new: str) -> list[Rule]:
    """Rules from one edit: its changed lines paired in order (an edit that adds or drops lines gives none)."""
    ol, nl = old.splitlines(), new.splitlines()
    if not ol or len(ol) != len(nl):
        return []
    out: list[Rule] = []
    for a, b in zip(ol, nl):
        if a != b:
            out.extend(_line_rules(a, b))
    return out


def _spans(ta: list[str], tb: list[str]) -> list[tuple[int, int, int, int]]:
    """The changed token spans of a line; changes at most MERGE_GAP tokens apart are one span
    (`print x` -> `print(x)` is one change, not "( for space" and ") after x")."""
    sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)
    spans: list[list[int]] = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            continue
        if spans and i1 - spans[-1][1] <= MERGE_GAP and j1 - spans[-1][3] <= MERGE_GAP:
            spans[-1][1], spans[-1][3] = i2, j2
        else:
            spans.append([i1, i2, j1, j2])
    return [tuple(x) for x in spans]


def _line_rules(a: str, b: str) -> list[Rule]:
    ta, tb = tokens(a), tokens(b)
    rules = []
    for i1, i2, j1, j2 in _spans(ta, tb):
        # left anchor: an identifier or keyword at most 2 tokens back (kept literal) with what follows it;
        # none: the change must start a token. Right anchor: the next token.
        left: list[str] = []
        for k in (i1 - 1, i1 - 2):
            if k >= 0 and _IDENT.match(ta[k]):
                left = ta[k:i1]
                break
        right = ta[i2:i2 + 1]
        removed, inserted = ta[i1:i2], tb[j1:j2]
        if not removed and not left and not right:
            continue
        # identifiers are wildcards when they are a part of a larger removed text, or are carried over
        wild = {t for t in removed if _is_ident(t) and t not in left and t not in right
                and (len([x for x in removed if not x.isspace()]) > 1 or t in inserted)}
        groups: dict[str, int] = {}
        parts = [] if left else [r"(?<![\w])"]
        for t in left:
            parts.append(r"\s+" if t.isspace() else re.escape(t))
        for t in removed:
            if t in wild:
                if t not in groups:
                    groups[t] = len(groups) + 1
                    parts.append(r"([A-Za-z_]\w*)")
                else:
                    parts.append(f"(?:\\{groups[t]})")
            elif t.isspace():
                parts.append(r"\s*")
            else:
                parts.append(re.escape(t))
        for t in right:
            parts.append(r"\s+" if t.isspace() else re.escape(t))
        repl = [t.replace("\\", "\\\\") for t in left]
        for t in inserted:
            repl.append(f"\\g<{groups[t]}>" if t in groups else t.replace("\\", "\\\\"))
        repl += [t.replace("\\", "\\\\") for t in right]
        pattern = "".join(parts)
        if not [t for t in removed + inserted if not t.isspace()] and not left:
            continue                     # a change of spacing alone
        literal = sum(len(t) for t in left + [t for t in removed if t not in wild] + right if not t.isspace())
        if literal < MIN_LITERAL:
            continue                     # matches nearly anything (`x` -> `y` with nothing around): a wrong
                                         # edit costs more than a missed one
        rules.append(Rule(pattern, "".join(repl)))
    return rules


def rules_from_history(edits: list[tuple[str, str]], min_support: int = 1) -> list[Rule]:
    """Rules of the newest edits first, without duplicates, at most MAX_RULES; with `min_support`, only
    rules that at least that many of the edits give (a pattern the user has already repeated)."""
    support: dict[Rule, int] = {}
    out = []
    for old, new in reversed(edits):
        for r in dict.fromkeys(rules_from_edit(old, new)):
            if r not in support:
                out.append(r)
            support[r] = support.get(r, 0) + 1
    return [r for r in out if support[r] >= min_support][:MAX_RULES]


def apply_rules(region: str, rules: list[Rule], first_line_only: bool = False, from_line: int = 0) -> str:
    """The region with the rules applied to each line (newest rule first; each line once per rule).
    `first_line_only`: only one line is rewritten, the first that a rule changes counting from line
    `from_line` (the cursor's) down, then the lines above it (one edit, nearest the cursor)."""
    lines = region.split("\n")
    order = list(range(from_line, len(lines))) + list(range(0, min(from_line, len(lines))))
    for i in order:
        line = lines[i]
        new = line
        for r in rules:
            try:
                new = r.apply(new)
            except re.error:
                continue
        if new != line:
            lines[i] = new
            if first_line_only:
                break
    return "\n".join(lines)
