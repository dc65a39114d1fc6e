"""Every prompt format in one place (this package; its modules: `chat` the instruct models' chat
template, `fim` the pretrained code models' inline formats; this module the rest): the local model's fill-in-the-middle layout (which the training
data and the evaluation use too, so training, eval, daemon and remote cannot drift), its budgeting and
clipping by tokens (PromptBuilder: the prefix is clipped here, once, by the side that owns the token
budget), and the per-family layouts of a model served by another machine (`render`).

Imports no torch (training/ and scripts/ import it without loading a model).

The local layout (THE INFERENCE PROMPT: `fim_layout` below; training/fim.py builds its samples and
training/evaluate.py its prompts with it; suffix first so that typing at the cursor only appends):

    [bos] + for each extra file: [file_sep] + enc(path + "\\n" + content)
          + [fim_suffix] + enc(suffix) + [fim_prefix] + enc(prefix) + [fim_middle]

prefix, suffix and each context entry are tokenized on their own (special-token strings in the text
are encoded as plain text). Without FIM tokens the prompt is `[bos] + enc(prefix)`.

Token budget B (config `context_tokens`): the suffix gets up to 15 % (clipped from the right at line
boundaries), the prefix most of the rest (clipped from the left at line boundaries), extra context
at least 25 % when there is any, and the share the prefix does not use. Everything that changes
rarely comes first, and the left clip of the prefix moves in steps of CLIP_STEP lines, so that a
keystroke at the cursor changes only the tail of the prompt and the KV cache keeps the rest.

The window layout (`layout="window"`, the daemon's default for inline completions; see
PromptBuilder.build_window) lays the same pieces out so that moving the cursor keeps the KV cache too:
extra files and the file's head (as a context entry of its own) first, sized from the whole file, and
only the cursor's window (near suffix, near prefix) as FIM; a prefetch without a cursor prepares the
part before the window (`Prompt.stable_tokens`).

Repository context (`repo`: snippets of the workspace index, daemon/repo_context.py) takes its fixed
share `repo_budget` out of the budget before every other share, and goes after the stable part and
before the cursor's FIM part, as further [file_sep] entries:

    [bos] + extra files (+ head) + repo snippets + [fim_suffix] ... [fim_middle]

The snippets depend on the cursor's line only (retrieval's query ends at the start of that line),
so a keystroke within a line keeps every token before the FIM part, and a move to another line
re-prefills the snippets and the window but not the files and the head.

Remote layouts (`backend = "openai"`; daemon/prompt/remote.py):

The daemon budgets and clips a prompt with its local tokenizer exactly as for the local model
(PromptBuilder: the same files, imports, prefix and suffix, in the same order); a layout
turns those pieces into what the served model was trained on:

    tokens     the local prompt's token ids, sent as a token list: the served model shares the local
               tokenizer (the embedded model exported to GGUF, the same NLD checkpoint), so it sees
               exactly the tokens the local model would. Only for such a server.
    tricode    the local model's own layout as text, its special tokens spelled out:
               <bos>[<|file_sep|>path\ncontent ...]<|fim_suffix|>S<|fim_prefix|>P<|fim_middle|> (the
               embedded model; llama.cpp's servers parse these strings as the special tokens)
    prefix     the prefix text alone (NLD has no FIM tokens; the local path is [bos] + prefix too)
    qwen       Qwen2.5-Coder: [<|repo_name|>R\\n <|file_sep|>path\\ncontent ...] <|file_sep|>path\\n
               <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>
    starcoder  StarCoder2: [<file_sep>path\\ncontent ...] <file_sep><fim_prefix>path\\nP<fim_suffix>S<fim_middle>
    deepseek   DeepSeek-Coder: <｜fim▁begin｜>[#path\\ncontent ...]P<｜fim▁hole｜>S<｜fim▁end｜>

`auto` picks one from the served model's name (`remote_model`, or the first model the server lists):
tricode -> tricode, qwen*coder -> qwen, starcoder -> starcoder, deepseek*coder -> deepseek, anything
else -> prefix.

Text layouts are tokenized by the server, which parses the layout's special-token strings. The same
strings inside the user's files would be parsed too and scramble the layout, so inside the pieces they
are broken up with a zero-width space after their first character (the local path encodes them as
plain text instead). Token counts are those of the local tokenizer: with another served tokenizer the
budget is approximate (code tokenizers are within a few per cent of each other on source text).
This module knows nothing of HTTP; daemon/remote.py sends what it renders.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from daemon.prompt import fim
from daemon.prompt.remote import (FIM_LAYOUTS, REMOTE_LAYOUTS, _repo_name, detect, needs_suffix,  # noqa: F401
                                  render, resolve)
from daemon.prompt.chat import (CHAT_SYSTEM, FILL, ChatTemplateError, chat_ids, chat_text,  # noqa: F401
                                chatml_template, fill_messages, rewrite_messages)

log = logging.getLogger(__name__)

LAYOUTS = ("window", "contiguous")     # the local model's layouts (config prompt_layout)
CLIP_STEP = 16            # lines: the prefix's left clip point moves in steps of this many lines
# window layout shares of the budget (measured with scripts/prompt_layout_eval.py on 80 held-out
# single-line tasks, embedded model, budget 1024: exact match 0.150 contiguous, 0.1625 window with
# 0.40/0.30 and with 0.25/0.45; edit similarity 0.411 / 0.401 / 0.411; the smaller window prefills less
# on a move)
NEAR_SHARE = 0.25         # the prefix part of the cursor's window, at least
NEAR_SLACK = 0.125        # ... and up to this much more: its start moves in WINDOW_STEP-line steps
HEAD_SHARE = 0.35         # the file's head (its first lines), a context entry
WINDOW_STEP = 8           # lines
CURSOR_LINE_ALLOWANCE = 24  # tokens the window keeps for the cursor's (partial) line
SUFFIX_SHARE = 0.15
EXTRA_MIN_SHARE = 0.25
PREFIX_QUANTUM = 256      # tokens: the prefix's reserved share grows in these steps
MIN_ENTRY_TOKENS = 32     # smaller leftovers are not worth a context entry


# -- THE INFERENCE PROMPT ------------------------------------------------------------------------------

def fim_layout(fim: Mapping[str, int], prefix_ids: Sequence[int], suffix_ids: Sequence[int],
               context_ids: Sequence[int] = (), bos: int | None = None) -> list[int]:
    """``[bos] + ctx + [fim_suffix] + suffix + [fim_prefix] + prefix + [fim_middle]``: the one
    fill-in-the-middle layout of the local model (suffix first, so typing at the cursor only appends).
    `fim` maps "suffix", "prefix", "middle" to token ids; `context_ids` are FILE_SEP entries. The
    training sample is this (without bos) + middle + EOS (training/fim.py)."""
    head = [] if bos is None else [bos]
    return (head + list(context_ids) + [fim["suffix"]] + list(suffix_ids) + [fim["prefix"]] + list(prefix_ids)
            + [fim["middle"]])


def plain_layout(bos: int, prefix_ids: Sequence[int]) -> list[int]:
    """``[bos] + prefix``: the layout without FIM tokens."""
    return [bos] + list(prefix_ids)


def unbudgeted_prompt(tok, prefix: str, suffix: str | None) -> list[int]:
    """The whole prefix and suffix, unclipped, in the local layout (FIM when the tokenizer has FIM
    tokens, else [bos] + prefix): what `tricode generate` sends."""
    if not tok.has_fim:
        return plain_layout(tok.bos_id, tok.encode(prefix))
    return fim_layout(tok.fim, tok.encode(prefix), tok.encode(suffix or ""), bos=tok.bos_id)


def protect_special_tokens(tok) -> None:
    """Make special-token strings inside source text encode as plain text (the `tokenizers` flag is
    not stored in tokenizer.json; see training/tokenizer.py). Otherwise a file that mentions
    `<|endoftext|>` would put a real EOS into the prompt."""
    inner = getattr(tok, "_tok", None)
    if inner is not None and hasattr(inner, "encode_special_tokens"):
        inner.encode_special_tokens = True


# -- the prompt -----------------------------------------------------------------------------------------

@dataclass
class Prompt:
    ids: list[int]
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    context_tokens: int = 0
    context_files: list[str] = field(default_factory=list)
    prefix_clipped_lines: int = 0
    fim: bool = True
    # the clipped pieces, as token ids of this tokenizer, for a backend that lays them out itself
    prefix_ids: list[int] = field(default_factory=list)
    suffix_ids: list[int] = field(default_factory=list)
    entry_ids: list[list[int]] = field(default_factory=list)   # enc(label + "\n" + content) per file
    stable_tokens: int = 0      # the leading ids that do not depend on the cursor (what a prefetch
                                # without a cursor prepares)
    stops: tuple[str, ...] = ()     # stop strings the format adds (a chat prompt's closing code fence)
    format: str = "tricode"         # which layout built `ids` (tricode | chat | a format of fim.FORMATS)
    heal: str = ""                  # the cursor line's whitespace the prompt left for the model to write
                                    # (fim.heal removes it from the completion again)
    repo_tokens: int = 0        # of context_tokens: the repository snippets'
    repo_files: list[str] = field(default_factory=list)        # their labels, in prompt order
    repo_context: list[dict] = field(default_factory=list)     # the snippets (path, lines), for the reply
    form: str = "full"          # full | window: the cursor's window alone (daemon/prompt_sizing.py)


def _split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def pretrained_format(tok, configured: str = "auto") -> str | None:
    """The inline format of a pretrained code model's tokenizer (a GGUF vocabulary with Qwen2.5-Coder's
    FIM and repository tokens): `configured`, or with "auto" the one measured best (fim.BEST_FORMAT);
    None for tricode's own models (their layout is fim_layout)."""
    special = getattr(tok, "special_tokens", None) or {}
    if getattr(tok, "pre_tokenizer", None) is None or not all(
            t in special for t in (fim.QWEN25_CODER.fim_prefix, fim.QWEN25_CODER.fim_middle)):
        return None
    return fim.BEST_FORMAT if configured == "auto" else configured


class PromptBuilder:
    """Builds prompts for one tokenizer, with a cache of per-line token counts. `fim_format`: a
    pretrained model's inline format (fim.FORMATS; pretrained_format picks it), else tricode's layout."""

    def __init__(self, tok, fim_format: str | None = None):
        self.tok = tok
        self.fim_format = fim_format
        self._counts: dict[str, int] = {}

    def _line_counts(self, lines: list[str]) -> list[int]:
        missing = [ln for ln in set(lines) if ln not in self._counts]
        if missing:
            if len(self._counts) > 100_000:
                self._counts.clear()
            inner = getattr(self.tok, "_tok", None)
            if inner is not None and len(missing) > 8:
                encs = inner.encode_batch(missing, add_special_tokens=False)
                for ln, e in zip(missing, encs):
                    self._counts[ln] = len(e.ids)
            else:
                for ln in missing:
                    self._counts[ln] = len(self.tok.encode(ln))
        return [self._counts[ln] for ln in lines]

    def clip_prefix(self, prefix: str, budget: int) -> tuple[list[int], int]:
        """enc(prefix) within `budget` tokens, dropping whole lines from the left; the clip point moves
        in steps of CLIP_STEP lines (stable while typing). Returns (ids, lines dropped)."""
        if budget <= 0:
            return [], 0
        lines = _split_lines(prefix)
        n = len(lines)
        # walk back from the cursor until the budget is exceeded (only lines near the cursor are counted)
        total, c_min = 0, 0
        i = n - 1
        chunk = 64
        while i >= 0:
            lo = max(0, i - chunk + 1)
            counts = self._line_counts(lines[lo:i + 1])
            stop = False
            for j in range(i, lo - 1, -1):
                total += counts[j - lo]
                if total > budget:
                    c_min = j + 1
                    stop = True
                    break
            if stop:
                break
            i = lo - 1
        if c_min == 0:
            ids = self.tok.encode(prefix)
            if len(ids) <= budget:
                return ids, 0
            c_min = 1
        c = min(-(-c_min // CLIP_STEP) * CLIP_STEP, max(n - 1, 0))
        if sum(self._line_counts(lines[c:])) < budget // 2:
            c = c_min
        c = min(c, max(n - 1, 0))
        ids = self.tok.encode("".join(lines[c:]))
        while len(ids) > budget and c < n - 1:
            c += 1
            ids = self.tok.encode("".join(lines[c:]))
        if len(ids) > budget:      # one enormous line: keep its end
            ids = ids[-budget:]
        return ids, c

    def clip_head(self, text: str, budget: int) -> list[int]:
        """enc(text) within `budget` tokens, dropping whole lines from the right."""
        if budget <= 0 or not text:
            return []
        lines = _split_lines(text)
        total, k, chunk = 0, 0, 64
        over = False
        while k < len(lines) and not over:           # count only the lines that can fit
            counts = self._line_counts(lines[k:k + chunk])
            for cnt in counts:
                if total + cnt > budget:
                    over = True
                    break
                total += cnt
                k += 1
        if not over:
            ids = self.tok.encode(text)
            if len(ids) <= budget:
                return ids
        ids = self.tok.encode("".join(lines[:k]))
        while len(ids) > budget and k > 0:
            k -= 1
            ids = self.tok.encode("".join(lines[:k]))
        if k == 0 and not ids:     # the first line alone is too long: keep its start
            ids = self.tok.encode(lines[0])[:budget]
        return ids

    def build(self, prefix: str, suffix: str, budget: int, extra: list[tuple[str, str]] = (),
              fim: bool | None = None, layout: str = "contiguous", label: str = "",
              repo: list[tuple[str, str]] = (), repo_budget: int = 0, repo_name: str = "") -> Prompt:
        """The prompt within `budget` tokens. `fim` (default: the tokenizer has FIM tokens) chooses the
        budgeting with suffix and extra context; `ids` holds this tokenizer's layout of the pieces
        (prefix only when it has no FIM tokens), the pieces themselves are kept for other layouts
        (the remote backend's). `layout="window"` is build_window (FIM tokenizers with a file separator).
        `repo`: repository snippets as (label, text) entries within `repo_budget` tokens (see the module
        docstring; FIM layouts with a file separator only)."""
        tok = self.tok
        if self.fim_format is not None:
            return self.build_pretrained(prefix, suffix, budget, extra, label, repo, repo_budget, repo_name)
        use_fim = tok.has_fim if fim is None else fim
        if layout == "window" and use_fim and tok.has_fim and tok.fim.get("file_sep") is not None:
            return self.build_window(prefix, suffix, budget, extra, label, repo, repo_budget)
        if not use_fim:
            ids, clipped = self.clip_prefix(prefix, budget - 1)
            return Prompt(plain_layout(tok.bos_id, ids), prefix_tokens=len(ids), prefix_clipped_lines=clipped, fim=False,
                          prefix_ids=ids)
        overhead = 4
        sep = tok.fim.get("file_sep")
        repo = list(repo) if repo and repo_budget > 0 and (sep is not None or not tok.has_fim) else []
        if repo:
            budget -= repo_budget       # the repository's share first: fixed, so the other shares are too
        suffix_ids = self.clip_head(suffix, int(budget * SUFFIX_SHARE))
        e_min = int(budget * EXTRA_MIN_SHARE) if extra else 0
        p_max = max(budget - overhead - len(suffix_ids) - e_min, 16)
        prefix_ids, clipped = self.clip_prefix(prefix, p_max)
        p_reserved = min(p_max, -(-(len(prefix_ids) + 1) // PREFIX_QUANTUM) * PREFIX_QUANTUM)
        extra_budget = budget - overhead - len(suffix_ids) - p_reserved
        # a FIM tokenizer without a file separator has no way to mark another file: no extra context
        ctx, files, entries = self._extra(extra if (sep is not None or not tok.has_fim) else (), extra_budget, sep)
        rctx, rfiles, rentries = self._repo(repo, repo_budget, sep)
        if tok.has_fim:
            ids = fim_layout(tok.fim, prefix_ids, suffix_ids, ctx + rctx, bos=tok.bos_id)
        else:  # FIM budgeting asked for a tokenizer without FIM tokens: its own layout is the prefix
            ids = plain_layout(tok.bos_id, prefix_ids)
        return Prompt(ids, prefix_tokens=len(prefix_ids), suffix_tokens=len(suffix_ids),
                      context_tokens=len(ctx) + len(rctx), context_files=files, prefix_clipped_lines=clipped,
                      prefix_ids=prefix_ids, suffix_ids=suffix_ids, entry_ids=entries + rentries,
                      stable_tokens=1 + len(ctx), repo_tokens=len(rctx), repo_files=rfiles)

    def build_pretrained(self, prefix: str, suffix: str, budget: int, extra=(), label: str = "",
                         repo: list[tuple[str, str]] = (), repo_budget: int = 0, repo_name: str = "") -> Prompt:
        """An inline prompt in the pretrained model's format (self.fim_format, fim.build_prompt): the
        prefix gets what the suffix (a quarter of the budget, for the formats that use one) and the
        other files (`repo`: up to a quarter, whole files clipped from the end) leave; text pieces are
        encoded as plain text, control tokens by id. The cursor line's trailing whitespace is left out
        (Prompt.heal). Repository snippets (`repo`, within `repo_budget`; formats of
        fim.REPO_SNIPPET_FORMATS only) put the prompt in the repository format behind them
        (fim.in_repository, `repo_name` the workspace root's name); their budget comes out of the
        prefix's whenever there are any, so the prefix does not move with their size."""
        tok, fmt = self.tok, self.fim_format
        count = lambda text: len(tok.encode(text))  # noqa: E731
        suffix_budget = budget // 4 if fmt in ("fim-short", "fim-full", "fim-spm", "chat") else 0
        files: list[tuple[str, str]] = []
        if fmt == "repo" and extra:
            left = budget // 4
            for name, content in extra:
                ids = self.clip_head(content, left - len(tok.encode(name)) - 2)
                if len(ids) >= MIN_ENTRY_TOKENS:
                    files.append((name, tok.decode(ids)))
                    left -= len(ids) + len(tok.encode(name)) + 2
                if left < MIN_ENTRY_TOKENS:
                    break
        used = sum(count(f"{n}\n{c}") + 2 for n, c in files)
        snippets = self._pretrained_snippets(repo, repo_budget) if fmt in fim.REPO_SNIPPET_FORMATS else []
        prefix_budget = max(budget - suffix_budget - used - 64 - (repo_budget if snippets else 0), 16)
        # the prefix's first line moves in CLIP_STEP-line steps (clip_prefix), not at every keystroke
        # that adds a token, so that typing in a long file keeps the prompt's start and its KV cache
        clipped = self.clip_prefix(prefix, prefix_budget)[1]
        if clipped:
            prefix = "".join(_split_lines(prefix)[clipped:])
        pieces = fim.build_prompt(fmt, prefix, suffix, count=count, prefix_tokens=prefix_budget,
                                  suffix_tokens=suffix_budget, path=label or "file", repo_name=_repo_name(""),
                                  repo_files=files)
        repo_tokens = 0
        if snippets:
            head = fim.in_repository((), label or "file", repo_name or "workspace", snippets)
            repo_tokens = len(fim.prompt_ids(head, tok.encode, lambda s: tok.special_tokens[s]))
            pieces = head + pieces
        ids = fim.prompt_ids(pieces, tok.encode, lambda s: tok.special_tokens[s])
        heal = fim.trailing_whitespace(prefix) if fmt != "chat" else ""
        return Prompt(ids, prefix_tokens=len(ids) - used - repo_tokens, context_tokens=used + repo_tokens,
                      prefix_clipped_lines=clipped,
                      context_files=[n for n, _ in files], fim=fmt != "plain", stable_tokens=1,
                      stops=("```",) if fmt == "chat" else (), format=fmt, heal=heal, repo_tokens=repo_tokens,
                      repo_files=[n for n, _ in snippets])

    def _pretrained_snippets(self, repo, budget: int) -> list[tuple[str, str]]:
        """The repository entries that fit `budget` tokens whole or cut at a line boundary (retrieval
        sized them with this tokenizer already), each counted with its label and separator."""
        out: list[tuple[str, str]] = []
        left = budget
        for label, content in repo or ():
            room = left - len(self.tok.encode(f"{label}\n")) - 1
            if room <= 0:
                break
            ids = self.clip_head(content, room)     # a header line is a few tokens: any whole line counts
            if ids:
                text = self.tok.decode(ids)
                out.append((label, text))
                left = room - len(ids)
        return out

    def build_chat(self, prefix: str, suffix: str, budget: int, language: str = "", path: str = "",
                   rewrite: tuple[str, str, int] | None = None) -> Prompt:
        """A refactor's prompt for an instruct model: prefix and suffix clipped by tokens (the suffix
        up to a quarter of the budget), asked for through the chat template (`fill_messages`); the
        reply stops at its closing code fence. `rewrite` = (original, instruction, scaffold): a rewrite,
        asked for directly (`rewrite_messages`), with up to an eighth of the budget of the code before
        (the prefix less its `scaffold` characters) and after the selection as context."""
        tok = self.tok
        if rewrite is not None:
            original, instruction, scaffold = rewrite
            before = prefix[:len(prefix) - scaffold] if 0 < scaffold <= len(prefix) else prefix
            overhead = len(chat_ids(tok, *rewrite_messages(original, instruction, language, path)))
            room = budget - overhead - len(tok.encode(original))
            suffix_ids = self.clip_head(suffix, max(min(budget // 8, room // 3), 0))
            prefix_ids, clipped = self.clip_prefix(before, max(min(budget // 8, room // 3), 0))
            messages, seed = rewrite_messages(original, instruction, language, path,
                                              tok.decode(prefix_ids), tok.decode(suffix_ids))
            return Prompt(chat_ids(tok, messages, seed), prefix_tokens=len(prefix_ids), suffix_tokens=len(suffix_ids),
                          prefix_clipped_lines=clipped, fim=False, prefix_ids=prefix_ids, suffix_ids=suffix_ids,
                          stops=("```",), format="chat")
        overhead = len(chat_ids(tok, *fill_messages("", "", language, path)))
        suffix_ids = self.clip_head(suffix, budget // 4)
        prefix_ids, clipped = self.clip_prefix(prefix, max(budget - overhead - len(suffix_ids), 16))
        pre, suf = tok.decode(prefix_ids), tok.decode(suffix_ids)
        messages, seed = fill_messages(pre, suf, language, path)
        ids = chat_ids(tok, messages, seed)
        return Prompt(ids, prefix_tokens=len(prefix_ids), suffix_tokens=len(suffix_ids), prefix_clipped_lines=clipped,
                      fim=False, prefix_ids=prefix_ids, suffix_ids=suffix_ids, stops=("```",), format="chat")

    def build_window(self, prefix: str, suffix: str, budget: int, extra: list[tuple[str, str]] = (),
                     label: str = "", repo: list[tuple[str, str]] = (), repo_budget: int = 0) -> Prompt:
        """The window layout: what does not depend on the cursor first, the cursor's window last.

            [bos] + extra files + [file_sep] enc(label + "\n" + head) + repository snippets
                  + [fim_suffix] enc(near suffix) + [fim_prefix] enc(near prefix) + [fim_middle]

        The near prefix is the last lines before the cursor (NEAR_SHARE of the budget and up to
        NEAR_SLACK more: its first line is a multiple of WINDOW_STEP, so that it stays put while the
        user types and presses Enter), the near suffix the first lines after it (SUFFIX_SHARE). The head is the
        file's first lines within HEAD_SHARE, stopped where the near prefix begins; its size and the
        extra files' budget are computed from the whole file, not the cursor, so that everything up
        to the file's FIM part stays the same while the cursor moves through the file (a move then
        prefills only the window; a prefetch without a cursor prepares the rest). The head is laid
        out as a context entry of its own file, which is how the model saw context in training
        (training/fim.py)."""
        tok = self.tok
        sep = tok.fim["file_sep"]
        overhead = 5
        repo = list(repo) if repo and repo_budget > 0 else []
        if repo:
            budget -= repo_budget       # the repository's share first: fixed, so the other shares are too
        suffix_ids = self.clip_head(suffix, int(budget * SUFFIX_SHARE))
        near_ids, c = self.clip_window(prefix, int(budget * NEAR_SHARE), int(budget * NEAR_SLACK))
        lines = _split_lines(prefix)
        head_label = f"{label or 'file'}\n"
        label_tokens = len(tok.encode(head_label))
        head_max = int(budget * HEAD_SHARE) - label_tokens - 1
        full_head, k = self.head_lines(prefix + suffix, head_max) if c > 0 else ([], 0)
        e_budget = (budget - overhead - int(budget * SUFFIX_SHARE) - int(budget * NEAR_SHARE)
                    - int(budget * NEAR_SLACK) - int(budget * HEAD_SHARE) + max(head_max - len(full_head), 0))
        ctx, files, _ = self._extra(extra, e_budget, sep)
        head: list[int] = []
        if c > 0 and k > 0:
            head = full_head if c >= k else self.head_lines("".join(lines[:c]), head_max)[0]
            if head:
                head = [sep] + tok.encode(head_label) + head
        rctx, rfiles, _ = self._repo(repo, repo_budget, sep)
        ids = fim_layout(tok.fim, near_ids, suffix_ids, ctx + head + rctx, bos=tok.bos_id)
        return Prompt(ids, prefix_tokens=len(near_ids), suffix_tokens=len(suffix_ids),
                      context_tokens=len(ctx) + len(head) + len(rctx), context_files=files, prefix_clipped_lines=c,
                      stable_tokens=1 + len(ctx) + len(head), repo_tokens=len(rctx), repo_files=rfiles)

    def clip_window(self, prefix: str, budget: int, slack: int) -> tuple[list[int], int]:
        """enc(the last lines of prefix) from a first line that is a multiple of WINDOW_STEP, within
        budget + slack tokens: the fewest lines that hold `budget` tokens, rounded to the step below
        (more lines, so the start stays where it was while the prefix grows at the cursor). Falls
        back to clip_prefix's clip when the step's lines do not fit the slack. Returns (ids, first line)."""
        ids, c_min = self.clip_prefix(prefix, budget)
        if c_min == 0:
            return ids, 0
        lines = _split_lines(prefix)
        # where `budget` tokens end, counted over whole lines only (the cursor's line gets a fixed
        # allowance), so that typing within a line never moves the start
        whole = len(lines) - (0 if prefix.endswith("\n") else 1)
        counts = self._line_counts(lines[:whole])
        total, i = CURSOR_LINE_ALLOWANCE, whole - 1
        while i >= 0 and total + counts[i] <= budget:
            total += counts[i]
            i -= 1
        c_exact = i + 1
        c = (c_exact // WINDOW_STEP) * WINDOW_STEP
        if sum(counts[c:]) <= budget + slack - CURSOR_LINE_ALLOWANCE:
            exact = self.tok.encode("".join(lines[c:]))
            if len(exact) <= budget + slack:
                return exact, c
        return ids, c_min

    def head_lines(self, text: str, budget: int) -> tuple[list[int], int]:
        """(enc(the first k lines of text), k) for the most whole lines that fit `budget` tokens."""
        lines = _split_lines(text)
        total, k, chunk = 0, 0, 64
        while k < len(lines):
            counts = self._line_counts(lines[k:k + chunk])
            for cnt in counts:
                if total + cnt > budget:
                    break
                total += cnt
                k += 1
            else:
                continue
            break
        ids = self.tok.encode("".join(lines[:k]))
        while len(ids) > budget and k > 0:
            k -= 1
            ids = self.tok.encode("".join(lines[:k]))
        return ids, k

    def _extra(self, extra, extra_budget: int, sep: int | None) -> tuple[list[int], list[str], list[list[int]]]:
        """The extra files within `extra_budget` tokens, in order: (ids, labels, each entry's ids). An
        entry is enc(label + "\n" + content), clipped at line boundaries, behind `sep` when there is one."""
        ctx: list[int] = []
        files: list[str] = []
        entries: list[list[int]] = []
        if extra:
            per_entry = max(extra_budget // 2, MIN_ENTRY_TOKENS)
            for label, content in extra:
                left = extra_budget - len(ctx)
                if left < MIN_ENTRY_TOKENS:
                    break
                if not content.endswith("\n"):
                    content += "\n"
                entry = self.clip_head(f"{label}\n{content}", min(left, per_entry) - 1)
                if len(entry) < MIN_ENTRY_TOKENS // 2:
                    continue
                ctx += ([sep] if sep is not None else []) + entry
                entries.append(entry)
                files.append(label)
        return ctx, files, entries


    def _repo(self, repo, budget: int, sep: int | None) -> tuple[list[int], list[str], list[list[int]]]:
        """The repository snippets' entries within `budget` tokens, in order (retrieval sized them with
        this tokenizer's count already; an entry that still does not fit is cut at a line boundary)."""
        ctx: list[int] = []
        files: list[str] = []
        entries: list[list[int]] = []
        for label, content in repo:
            left = budget - len(ctx) - (sep is not None)
            if left < MIN_ENTRY_TOKENS // 2:
                break
            entry = self.clip_head(f"{label}\n{content}", left)
            if len(entry) < MIN_ENTRY_TOKENS // 4:
                continue
            ctx += ([sep] if sep is not None else []) + entry
            entries.append(entry)
            files.append(label)
        return ctx, files, entries


CHARS_PER_TOKEN = 4       # an estimate for source text, where only a size in characters is needed


def repo_held(prefix: str, extra: list[tuple[str, str]], budget: int, layout: str) -> list[str]:
    """About what a prompt of `budget` tokens holds besides the repository snippets, as retrieval's
    `held` (snippets that repeat it are dropped): the start of each other file (an entry gets at most
    half of the extra files' share: 1 - the window's and head's shares in the window layout,
    EXTRA_MIN_SHARE and what the prefix leaves in the contiguous one; estimated at CHARS_PER_TOKEN),
    and the current file before the cursor's line (in the window layout only its head). Ends at the
    start of the cursor's line, so it does not change while the user types within that line."""
    start = prefix.rfind("\n") + 1
    if layout == "window":
        entry_share = (1 - SUFFIX_SHARE - NEAR_SHARE - NEAR_SLACK) / 2
        head = prefix[:min(start, int(budget * HEAD_SHARE) * CHARS_PER_TOKEN)]
    else:
        entry_share = (1 - SUFFIX_SHARE) / 2
        head = prefix[:start]
    cap = int(budget * entry_share) * CHARS_PER_TOKEN
    return [content[:cap] for _, content in extra] + [head]
