"""Next-edit prompts: the editable region around the cursor, the prompt formats that ask a model to
rewrite it, the parse of its answer, and the reduction of a rewrite to the smallest edit.

Formats (measured in docs/next_edit.md; `FORMATS` names them):
    zeta    the recent edits as diffs, then the file excerpt with the region between markers and the
            cursor marked; the model writes the region again (raw completion, no chat template)
    sweep   each recent edit as an `original:` / `updated:` pair of blocks (the edits are worked
            examples), then the region as `original:`; the model writes `updated:` (raw completion)
    chat    the instruct model's chat template: the edits as diffs, the region, "rewrite it applying the
            next edit" (what was tried first; kept as the baseline)
    sweep_draft  sweep, with the history's generalised pattern (daemon/edit_pattern.py) applied to the
            region offered as a `suggested:` block before `updated:`

The one home of these formats: the daemon's prompt stage and scripts/next_edit_eval.py import them.
What this module does not know: tokenizers, models, sockets, LSP. Pure text; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from daemon.edit_pattern import apply_rules, rules_from_history

ABOVE, BELOW = 2, 5            # Copilot's window: 2 lines above the cursor line, 5 below
REGION_TOKENS = 350            # Zeta's editable region, in tokens (estimated at CHARS_PER_TOKEN)
CHARS_PER_TOKEN = 3.5
CURSOR = "<|user_cursor_is_here|>"
START, END = "<|editable_region_start|>", "<|editable_region_end|>"
FORMATS = ("zeta", "sweep", "chat", "sweep_draft")
MAX_HISTORY = 6                # edits shown in a prompt (the newest) ...
HISTORY_CHARS = 2400           # ... as many of them as fit this many characters (~700 tokens)
CONTEXT_LINES = 12             # lines of the file shown above and below the region (zeta, sweep)


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
    """The region with the generalised pattern of the history's edits applied (daemon/edit_pattern.py);
    `first_line_only`: to one line only, the first it changes from the cursor's line (of the region) down,
    then above (one edit, nearest the cursor)."""
    rules = rules_from_history([changed_lines(d) for d in history], min_support)
    return apply_rules(region, rules, first_line_only, cursor_line) if rules else region


# -- prompts --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    text: str              # what the model reads (for `chat`: already in the chat template)
    stop: tuple[str, ...]  # where the answer ends
    answer_prefix: str = ""  # text the answer starts with, already in `text` (stripped by parse)

    def parse(self, completion: str) -> str:
        """The region rewrite out of the model's answer."""
        out = completion
        for s in self.stop:
            i = out.find(s)
            if i >= 0:
                out = out[:i]
        return out


def _context(text: str, start: int, end: int, lines: int = CONTEXT_LINES) -> tuple[str, str]:
    before = text[:start].split("\n")
    after = text[end:].split("\n")
    return "\n".join(before[-lines - 1:]), "\n".join(after[:lines])


def build(fmt: str, *, path: str, text: str, cursor: int, region_start: int, region_end: int,
          history: list[str]) -> Prompt:
    """The prompt of format `fmt` for rewriting text[region_start:region_end]. The region ends with a
    newline (whole lines); every format asks for the region ending with one, then the stop marker."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown next-edit format {fmt!r}; known: {', '.join(FORMATS)}")
    region = text[region_start:region_end]
    hist: list[str] = []
    for h in reversed(history[-MAX_HISTORY:]):       # the newest first, while they fit
        if sum(map(len, hist)) + len(h) > HISTORY_CHARS:
            break
        hist.insert(0, h)
    before, after = _context(text, region_start, region_end)
    if fmt == "zeta":
        marked = text[region_start:cursor] + CURSOR + text[cursor:region_end]
        edits = "".join(h if h.endswith("\n") else h + "\n" for h in hist)
        p = (f"User edits:\n```diff\n{edits}```\n\nUser excerpt:\n```{path}\n{before}{START}\n{marked}{END}\n"
             f"{after}\n```\n\nThe excerpt with the next edit made in the editable region:\n```{path}\n{START}\n")
        return Prompt(p, (END, "```"))
    if fmt == "chat":
        edits = "".join(h if h.endswith("\n") else h + "\n" for h in hist)
        user = (f"I am editing {path}. My recent edits:\n```diff\n{edits}```\n\nThe code around my cursor:\n"
                f"```python\n{region}```\nRewrite this code applying the next edit I am likely to make "
                f"(the same kind of change as my recent edits). Answer with the code only, in one block.")
        p = (f"<|im_start|>system\nYou are a coding assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
             f"<|im_start|>assistant\n```python\n")
        return Prompt(p, ("```", "<|im_end|>"))
    # sweep and sweep_draft: the history's edits as worked original/updated pairs
    blocks = []
    for h in hist:
        hp, old, new = diff_sides(h)
        blocks.append(f"<|file_sep|>{hp}\noriginal:\n{old}updated:\n{new}")
    p = "".join(blocks) + f"<|file_sep|>{path}\n{before}\n" if before else "".join(blocks) + f"<|file_sep|>{path}\n"
    p += f"original:\n{region}"
    if fmt == "sweep_draft":
        p += f"suggested:\n{draft(region, hist)}"
    p += "updated:\n"
    return Prompt(p, ("<|file_sep|>", "original:", "updated:", "suggested:", "<|endoftext|>"))
