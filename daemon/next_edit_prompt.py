"""Next-edit prompts (the daemon's prompt stage for `next_edit`; a module of its own beside
daemon/prompt.py, which would pass 600 lines with it): the prompt formats that ask a model to rewrite
the editable region, and the parse of its answer. The region, the smallest edit, the take-back check and
the pattern draft are torch-free text tools that `tricode lsp` uses too: textkit/edits.py (re-exported
here for the prompt stage's callers).

Formats (measured in docs/next_edit.md; `FORMATS` names them):
    zeta    the recent edits as diffs, then the file excerpt with the region between markers and the
            cursor marked; the model writes the region again (raw completion, no chat template)
    sweep   each recent edit as an `original:` / `updated:` pair of blocks (the edits are worked
            examples), then the region as `original:`; the model writes `updated:` (raw completion)
    chat    the instruct model's chat template: the edits as diffs, the region, "rewrite it applying the
            next edit" (what was tried first; kept as the baseline)
    sweep_draft  sweep, with the history's generalised pattern (textkit/edit_pattern.py) applied to the
            region offered as a `suggested:` block before `updated:`

The one home of these formats: the daemon's prompt stage and scripts/next_edit_eval.py import them.
What this module does not know: tokenizers, models, sockets, LSP. Pure text; no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from textkit.edits import (ABOVE, BELOW, CHARS_PER_TOKEN, REGION_TOKENS, changed_lines, diff_sides,  # noqa: F401
                            draft, region_lines, region_tokens, smallest_edit, undoes_last)

CURSOR = "<|user_cursor_is_here|>"
START, END = "<|editable_region_start|>", "<|editable_region_end|>"
FORMATS = ("zeta", "sweep", "chat", "sweep_draft")
MODEL_FORMAT = "sweep_draft"   # the format the daemon's next_edit asks its model in (and training renders)
MAX_HISTORY = 6                # edits shown in a prompt (the newest) ...
HISTORY_CHARS = 2400           # ... as many of them as fit this many characters (~700 tokens)
CONTEXT_LINES = 12             # lines of the file shown above and below the region (zeta, sweep)


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


def model_prompt(*, path: str, text: str, cursor: int, region_start: int, region_end: int,
                 history: list[str]) -> Prompt:
    """The prompt the daemon's `next_edit` gives its model (daemon/next_edit_run.py), in MODEL_FORMAT; the
    next-edit training samples (training/next_edit.py) are this prompt followed by the region's rewrite."""
    return build(MODEL_FORMAT, path=path, text=text, cursor=cursor, region_start=region_start,
                 region_end=region_end, history=history)


def rewrite_cut(text: str, stops: tuple[str, ...], lines: int) -> int | None:
    """Where a model's rewrite of a region of `lines` lines ends in `text`, or None to go on: at the
    first stop marker, or just after the `lines`-th newline (a rewrite never grows the region)."""
    cut = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (cut is None or i < cut):
            cut = i
    if lines > 0:
        pos = -1
        for _ in range(lines):
            pos = text.find("\n", pos + 1)
            if pos < 0:
                break
        if pos >= 0 and (cut is None or pos + 1 < cut):
            cut = pos + 1
    return cut
