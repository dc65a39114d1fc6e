"""The typed messages of a next-edit suggestion between `tricode lsp` and the model's side.

Torch-free and msgpack-ready (frozen dataclasses of str/int/float/tuple fields, with `id` and `type` like
daemon/protocol.py's messages): they move into the protocol package as they are, and the daemon then
answers `next_edit` with `next_edit_result` (or `error`).

Offsets are code-point indices into `text` (the request's snapshot of the document), never LSP
positions: the LSP side converts, in the document's negotiated encoding.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NextEdit:
    """Predict the next edit in text[region_start:region_end] of one document."""
    id: int = 0
    doc: str = ""                  # document URI (the key for supersede, like Complete.doc)
    version: int = 0               # the document version `text` is
    path: str = ""                 # file path (the prompt names it; context from the workspace)
    language: str = "python"
    text: str = ""                 # the whole document
    cursor: int = 0                # offset of the cursor in `text`
    region_start: int = 0          # the editable region: whole lines around the cursor
    region_end: int = 0
    history: tuple[str, ...] = ()  # the user's recent edits as unified diffs, oldest first
    last_old: str = ""             # the user's newest edit of this document (lines before/after), so the
    last_new: str = ""             # model side can refuse a rewrite that only takes it back
    max_tokens: int = 256
    deadline_ms: int = 0
    type: str = "next_edit"


@dataclass(frozen=True)
class NextEditResult:
    """The answer: the region's rewrite and the smallest edit it makes (start == end == -1: no edit)."""
    id: int = 0
    rewrite: str = ""              # the whole region as the model wrote it ("" when nothing was decoded)
    start: int = -1                # the smallest edit, in offsets of the request's `text`
    end: int = -1
    text: str = ""
    confidence: float = 0.0        # mean token log-probability of the rewrite (<= 0)
    min_logprob: float = 0.0       # the lowest token log-probability in the changed part
    copy_logprob: float = 0.0      # mean log-probability of the region copied unchanged, for the gate
    reason: str = ""               # why there is no edit (same | undo | gate | deadline | ...), or ""
    tokens: int = 0
    forwards: int = 0
    tokens_per_forward: float = 0.0
    prompt_tokens: int = 0
    total_ms: float = 0.0
    format: str = ""               # the prompt format used (daemon/next_edit_prompt.py)
    type: str = "next_edit_result"

    @property
    def has_edit(self) -> bool:
        return self.start >= 0 and self.end >= self.start
