"""Torch-free text tools of next-edit suggestions: the editable region around the cursor, the reduction
of a rewrite to the smallest edit, the take-back check, the sides of a history diff, and the draft (the
history's generalised pattern, textkit/edit_pattern.py, applied to the region).

Used by both sides: the daemon's prompt stage (daemon/next_edit_prompt.py, daemon/next_edit_run.py) and
`tricode lsp` (lsp/next_edit.py: the region it sends, the checks it repeats, the fallback source while the
daemon is starting). What this module does not know: prompts, tokenizers, models, LSP.
"""
from __future__ import annotations

from textkit.edit_pattern import apply_rules, rules_from_history

ABOVE, BELOW = 2, 5            # Copilot's window: 2 lines above the cursor line, 5 below
REGION_TOKENS = 350            # Zeta's editable region, in tokens (estimated at CHARS_PER_TOKEN)
CHARS_PER_TOKEN = 3.5


# -- the region -----------------------------------------------------------------------------------------

def _line_starts(text: str) -> list[int]:
    starts = [0]
    i = text.find("\n")
    while i >= 0:
        starts.append(i + 1)
        i = text.find("\n", i + 1)
    return starts


def region_lines(text: str, cursor: int, above: int = ABOVE, below: int = BELOW) -> tuple[int, int]:
    """(start, end) offsets of whole lines: `above` lines over the cursor's line to `below` lines under it."""
    starts = _line_starts(text)
    line = max(0, text.count("\n", 0, max(0, min(cursor, len(text)))))
    first = max(0, line - above)
    last = min(len(starts) - 1, line + below)
    end = starts[last + 1] if last + 1 < len(starts) else len(text)
    return starts[first], end


def region_tokens(text: str, cursor: int, budget: int = REGION_TOKENS) -> tuple[int, int]:
    """Whole lines around the cursor up to about `budget` tokens, one line above for every two below."""
    starts = _line_starts(text)
    n = len(starts)
    line = text.count("\n", 0, max(0, min(cursor, len(text))))

    def span(a, b):
        return (starts[b + 1] if b + 1 < n else len(text)) - starts[a]
    first = last = line
    limit = budget * CHARS_PER_TOKEN
    step = 0
    while True:
        grow_up = step % 3 == 0
        a, b = (first - 1, last) if grow_up else (first, last + 1)
        if a < 0 or b >= n or span(a, b) > limit:
            a, b = (first, last + 1) if grow_up else (first - 1, last)
            if a < 0 or b >= n or span(a, b) > limit:
                break
        first, last = a, b
        step += 1
    return starts[first], (starts[last + 1] if last + 1 < n else len(text))


# -- edits ----------------------------------------------------------------------------------------------

def smallest_edit(old: str, new: str) -> tuple[int, int, str]:
    """The smallest single replacement turning `old` into `new`: (start, end, text) with
    old[:start] + text + old[end:] == new. (0, 0, "") when they are equal."""
    if old == new:
        return 0, 0, ""
    n = min(len(old), len(new))
    p = 0
    while p < n and old[p] == new[p]:
        p += 1
    s = 0
    while s < n - p and old[len(old) - 1 - s] == new[len(new) - 1 - s]:
        s += 1
    return p, len(old) - s, new[p:len(new) - s]


def undoes_last(region: str, rewrite: str, last_old: str, last_new: str) -> bool:
    """Does the rewrite only take back the user's newest edit (its new lines back into its old ones)?"""
    if not last_new and not last_old or last_old == last_new or region == rewrite:
        return False
    if last_new and last_new in region:
        return region.replace(last_new, last_old, 1) == rewrite
    return False


def diff_sides(diff: str) -> tuple[str, str, str]:
    """(path, old, new) of a one-hunk unified diff as lsp/edit_history.py writes it (context in both)."""
    path, old, new = "", [], []
    for line in diff.splitlines(keepends=True):
        if line.startswith("+++ "):
            path = line[4:].strip()
            path = path[2:] if path.startswith("b/") else path
        elif line.startswith("--- ") or line.startswith("@@"):
            continue
        elif line.startswith("-"):
            old.append(line[1:])
        elif line.startswith("+"):
            new.append(line[1:])
        elif line.startswith(" "):
            old.append(line[1:])
            new.append(line[1:])
    return path, "".join(old), "".join(new)


def changed_lines(diff: str) -> tuple[str, str]:
    """Only the '-' and '+' lines of a diff (the edit itself, for edit_pattern's rules)."""
    old = "".join(x[1:] for x in diff.splitlines(keepends=True) if x.startswith("-") and not x.startswith("---"))
    new = "".join(x[1:] for x in diff.splitlines(keepends=True) if x.startswith("+") and not x.startswith("+++"))
    return old, new


def draft(region: str, history: list[str], first_line_only: bool = False, cursor_line: int = 0,
          min_support: int = 1) -> str:
    """The region with the generalised pattern of the history's edits applied (textkit/edit_pattern.py);
    `first_line_only`: to one line only, the first it changes from the cursor's line (of the region) down,
    then above (one edit, nearest the cursor)."""
    rules = rules_from_history([changed_lines(d) for d in history], min_support)
    return apply_rules(region, rules, first_line_only, cursor_line) if rules else region
