"""Inline-completion prompt formats for pretrained code models (Qwen2.5-Coder family), as pure functions
(part of daemon.prompt, the one home of every prompt format; the daemon uses BEST_FORMAT through
PromptBuilder.build_pretrained).

What this module knows
----------------------
How to lay out the text around the cursor for a single-line (inline) completion in each of the
formats measured in docs/model_card.md ("Prompt formats for the real models"):

=============  ==============================================================================
``fim-prefix``  ``<|fim_prefix|>{prefix}<|fim_suffix|><|fim_middle|>`` (no suffix at all)
``fim-short``   the same with a short suffix: the rest of the cursor's line and the next lines
``fim-full``    the same with the whole (clipped) suffix
``fim-spm``     suffix first: ``<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>``
``plain``       the prefix alone, no control tokens (left-to-right continuation)
``chat``        the instruct model's chat template, asking for the line at a marker, the answer
                opened with a code fence
``repo``        the repository format, ``<|repo_name|>{name}\\n<|file_sep|>{path}\\n{text}`` per
                other file, then the current file's path and FIM (prefix-only) inside it
=============  ==============================================================================

A prompt is a tuple of :class:`Piece` s: file text (``control=False``) and control tokens
(``control=True``). Text pieces must be tokenized as plain text, so that a file which spells
``<|fim_prefix|>`` keeps it as text; :func:`prompt_ids` encodes each piece on its own and joins the
ids (the safe way: no tokenizer ever sees file text with special-token parsing on).
The cursor line's trailing whitespace can be left for the model to write (:func:`heal`).
Clipping to a token budget (:func:`clip_prefix`, :func:`clip_suffix`) keeps the cursor's side: the
end of the prefix and the start of the suffix, cut at line boundaries where possible.
The single-line stop rule (:func:`single_line`, :func:`is_stop_token`) is here too.

What it does not know
---------------------
Tokenizers, models, files on disk, the daemon's workspace context selection or its KV cache: every
function takes strings and callables (``count``, ``encode_text``, ``control_id``) and returns strings,
pieces or ids. No torch, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

FORMATS = ("fim-prefix", "fim-short", "fim-full", "fim-spm", "plain", "chat", "repo")
# the daemon's inline format for these models ("auto"): the one that won the measurement, prefix-only
# FIM with whitespace healing (docs/model_card.md, "Prompt formats for the real models": best or tied
# on 42 + 42 tasks, and the cheapest to keep warm while typing)
BEST_FORMAT = "fim-prefix"

CHAT_SYSTEM = ("You are a code completion engine. You are shown a source file with one place "
               "marked {marker}. Reply with only the code that belongs at {marker}: the rest of "
               "that one line, with no explanation.")
CURSOR_MARKER = "<CURSOR>"


@dataclass(frozen=True)
class SpecialTokens:
    """The control-token strings of a checkpoint's vocabulary (defaults: Qwen2.5-Coder's)."""
    fim_prefix: str = "<|fim_prefix|>"
    fim_suffix: str = "<|fim_suffix|>"
    fim_middle: str = "<|fim_middle|>"
    fim_pad: str = "<|fim_pad|>"
    repo_name: str = "<|repo_name|>"
    file_sep: str = "<|file_sep|>"
    endoftext: str = "<|endoftext|>"
    im_start: str = "<|im_start|>"
    im_end: str = "<|im_end|>"

    def all(self) -> tuple[str, ...]:
        return (self.fim_prefix, self.fim_suffix, self.fim_middle, self.fim_pad, self.repo_name,
                self.file_sep, self.endoftext, self.im_start, self.im_end)


QWEN25_CODER = SpecialTokens()


@dataclass(frozen=True)
class Piece:
    """One part of a prompt: file/instruction text, or one control token (``control=True``)."""
    text: str
    control: bool = False


Prompt = tuple[Piece, ...]


def _ctl(s: str) -> Piece:
    return Piece(s, True)


def _txt(s: str) -> Piece:
    return Piece(s, False)


# ----------------------------------------------------------------------------- rendering


def prompt_text(prompt: Prompt) -> str:
    """The prompt as one string (for display and logs only: tokenizing it with special-token
    parsing on would turn file text that spells a control token into that token)."""
    return "".join(p.text for p in prompt)


def prompt_ids(prompt: Prompt, encode_text: Callable[[str], list[int]],
               control_id: Callable[[str], int]) -> list[int]:
    """Token ids of ``prompt``: each text piece through ``encode_text`` (plain text, no special
    tokens parsed), each control piece through ``control_id``; joined in order."""
    ids: list[int] = []
    for p in prompt:
        if p.control:
            ids.append(control_id(p.text))
        elif p.text:
            ids.extend(encode_text(p.text))
    return ids


def is_stop_token(piece: str, tokens: SpecialTokens = QWEN25_CODER) -> bool:
    """True for a generated control token that ends an inline completion: any of the
    checkpoint's FIM, repository, chat and end-of-text tokens (a model that writes
    ``<|file_sep|>`` or ``<|fim_pad|>`` has finished the middle and starts something else)."""
    return piece in tokens.all()


def single_line(generated: str) -> str:
    """The single-line stop rule on decoded text: everything before the first newline."""
    return generated.split("\n", 1)[0]


def chat_line(reply: str) -> str:
    """The completion in a ``chat`` reply (the answer was opened with a code fence by the
    prompt): its first line, without a closing fence and without leading indentation (the
    cursor already stands after the indentation)."""
    line = single_line(reply)
    if line.strip().startswith("```"):
        return ""
    return line.split("```", 1)[0].lstrip(" \t")


# ----------------------------------------------------------------------------- whitespace healing


def trailing_whitespace(prefix: str) -> str:
    """The spaces and tabs that end ``prefix`` on the cursor's line (its indentation, or the
    space after ``x =``)."""
    return prefix[len(prefix.rstrip(" \t")):]


def heal(generated: str, whitespace: str) -> str:
    """The text to insert at the cursor when the prompt left out ``whitespace`` (the prefix's
    :func:`trailing_whitespace`): the model writes it itself, so it is removed again; a model that
    writes other whitespace has it stripped (the cursor already stands after the original).

    Why: BPE vocabularies of code models fold a line's indentation into the following token
    (Qwen2's pre-tokenizer gives ``"   "`` + ``" return"`` for ``"    return"``), so a prompt that
    ends in the bare indentation is a token sequence never seen in training, and the model
    answers with more whitespace or odd tokens (measured in docs/model_card.md)."""
    if not whitespace:
        return generated
    if generated.startswith(whitespace):
        return generated[len(whitespace):]
    return generated.lstrip(" \t")


# ----------------------------------------------------------------------------- clipping


def _fit_tail(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest character tail of a single line within ``budget`` tokens (binary search)."""
    lo, hi = 0, len(text)              # answer: smallest start with count(text[start:]) <= budget
    while lo < hi:
        mid = (lo + hi) // 2
        if count(text[mid:]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return text[lo:]


def _fit_head(text: str, budget: int, count: Callable[[str], int]) -> str:
    lo, hi = 0, len(text)              # answer: largest end with count(text[:end]) <= budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def clip_prefix(prefix: str, budget: int, count: Callable[[str], int]) -> str:
    """The end of ``prefix`` (the text just before the cursor) within ``budget`` tokens: whole
    lines counted back from the cursor; the cursor's (partial) line is always kept, cut from the
    left only when it alone exceeds the budget."""
    if budget <= 0:
        return ""
    if count(prefix) <= budget:
        return prefix
    lines = prefix.splitlines(keepends=True)
    if prefix.endswith("\n") or not lines:
        lines.append("")               # the cursor line is empty
    start, total = len(lines) - 1, count(lines[-1])
    if total > budget:
        return _fit_tail(lines[-1], budget, count)
    while start > 0:
        c = count(lines[start - 1])
        if total + c > budget:
            break
        total += c
        start -= 1
    out = "".join(lines[start:])
    while count(out) > budget and start < len(lines) - 1:   # per-line counts can undercount joins
        start += 1
        out = "".join(lines[start:])
    return out


def clip_suffix(suffix: str, budget: int, count: Callable[[str], int]) -> str:
    """The start of ``suffix`` (the text just after the cursor) within ``budget`` tokens: whole
    lines from the cursor on; the rest of the cursor's line is cut from the right only when it
    alone exceeds the budget."""
    if budget <= 0:
        return ""
    if count(suffix) <= budget:
        return suffix
    lines = suffix.splitlines(keepends=True)
    total = count(lines[0])
    if total > budget:
        return _fit_head(lines[0], budget, count)
    end = 1
    while end < len(lines):
        c = count(lines[end])
        if total + c > budget:
            break
        total += c
        end += 1
    out = "".join(lines[:end])
    while count(out) > budget and end > 1:
        end -= 1
        out = "".join(lines[:end])
    return out


def short_suffix(suffix: str, lines: int = 2) -> str:
    """The rest of the cursor's line and the next ``lines`` lines of ``suffix``."""
    parts = suffix.split("\n")
    return "\n".join(parts[:lines + 1]) + ("\n" if len(parts) > lines + 1 else "")


# ----------------------------------------------------------------------------- formats


def fim_psm(prefix: str, suffix: str, tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """Prefix-suffix-middle: ``<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>``
    (``suffix=""`` gives the prefix-only FIM prompt)."""
    return (_ctl(tokens.fim_prefix), _txt(prefix), _ctl(tokens.fim_suffix), _txt(suffix),
            _ctl(tokens.fim_middle))


def fim_spm(prefix: str, suffix: str, tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """Suffix first: ``<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>`` (the order
    tricode's own models use: typing at the cursor only appends to the prompt)."""
    return (_ctl(tokens.fim_suffix), _txt(suffix), _ctl(tokens.fim_prefix), _txt(prefix),
            _ctl(tokens.fim_middle))


def plain(prefix: str, tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """Left-to-right continuation: the prefix alone (at the start of a file, where there is no
    prefix, the end-of-text token that separates documents, so the model has a token to follow)."""
    return (_txt(prefix),) if prefix else (_ctl(tokens.endoftext),)


def chat(prefix: str, suffix: str, language: str = "python", tokens: SpecialTokens = QWEN25_CODER,
         marker: str = CURSOR_MARKER) -> Prompt:
    """The instruct chat template (``<|im_start|>role\\n...<|im_end|>\\n``): a system message
    saying what to do, the code with ``marker`` at the cursor as the user message, and the
    assistant's answer opened with a code fence, so the first generated line is the code
    (read it with :func:`chat_line`)."""
    system = CHAT_SYSTEM.format(marker=marker)
    user = f"```{language}\n{prefix}{marker}{suffix}\n```"
    return (_ctl(tokens.im_start), _txt(f"system\n{system}"), _ctl(tokens.im_end), _txt("\n"),
            _ctl(tokens.im_start), _txt(f"user\n{user}"), _ctl(tokens.im_end), _txt("\n"),
            _ctl(tokens.im_start), _txt(f"assistant\n```{language}\n"))


def repo(prefix: str, suffix: str, path: str, repo_name: str,
         repo_files: Sequence[tuple[str, str]] = (), tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """Qwen2.5-Coder's repository format with FIM in the current file, which comes last::

        <|repo_name|>{repo_name}\\n
        <|file_sep|>{path}\\n{text}\\n          (for each (path, text) of repo_files)
        <|file_sep|>{path}\\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
    """
    return in_repository(fim_psm(prefix, suffix, tokens), path, repo_name, repo_files, tokens)


# Repository snippets (daemon/retrieval.py) in an inline prompt of the real model (docs/repo_context.md,
# "The pretrained inline format"): only the header lines of the definitions of the names used near the
# cursor and of the workspace names the file imports (whole chunks and long definitions distracted the
# 0.5B model: 384 tokens of them cost 1.7 points of exact match), within a small budget (192 tokens
# held a used name's definition in 30 % of the tuning cases, 160 in 27 %, 256 in 37 %), in the family's
# own repository format around the current file (`in_repository`).
# Off by default (config repo_context_pretrained): on the report half it gave no gain (docs).
REPO_SNIPPET_SOURCES = ("definition-headers", "signatures")
REPO_SNIPPET_TOKENS = 192
REPO_SNIPPET_FORMATS = frozenset({"fim-prefix"})    # the formats measured with snippets


def in_repository(prompt: Prompt, path: str, repo_name: str, repo_files: Sequence[tuple[str, str]],
                  tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """An inline prompt of the file at `path` placed last in the repository format, behind the other
    files' (path, text) pieces (repository snippets): what does not depend on the cursor's column
    comes first, so typing within a line keeps every token before the FIM part."""
    out: list[Piece] = [_ctl(tokens.repo_name), _txt(f"{repo_name}\n")]
    for p, text in repo_files:
        out += [_ctl(tokens.file_sep), _txt(f"{p}\n{text}" + ("" if text.endswith("\n") else "\n"))]
    out += [_ctl(tokens.file_sep), _txt(f"{path}\n")]
    return tuple(out) + tuple(prompt)


def build_prompt(fmt: str, prefix: str, suffix: str, *, count: Callable[[str], int],
                 prefix_tokens: int, suffix_tokens: int, path: str = "", repo_name: str = "",
                 repo_files: Sequence[tuple[str, str]] = (), language: str = "python",
                 suffix_lines: int = 2, heal_whitespace: bool = True,
                 tokens: SpecialTokens = QWEN25_CODER) -> Prompt:
    """The prompt of format ``fmt`` (one of :data:`FORMATS`) for the cursor between ``prefix``
    and ``suffix``: the prefix clipped to ``prefix_tokens`` (from the cursor backwards), the
    suffix to ``suffix_tokens`` (from the cursor forwards; ``fim-short`` and ``chat`` take the
    rest of the line + ``suffix_lines`` lines of it; ``fim-prefix``, ``plain`` and ``repo`` none).
    ``count`` counts the tokens of plain text. ``repo_files`` (``repo`` only) go in as given:
    the caller chooses and clips them. With ``heal_whitespace`` (all formats but ``chat``) the
    prefix's :func:`trailing_whitespace` is left out of the prompt: pass the generated text
    through :func:`heal` with it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}: choose from {', '.join(FORMATS)}")
    p = clip_prefix(prefix, prefix_tokens, count)
    if heal_whitespace and fmt != "chat":
        p = p[:len(p) - len(trailing_whitespace(p))]
    if fmt in ("fim-short", "chat"):
        s = clip_suffix(short_suffix(suffix, suffix_lines), suffix_tokens, count)
    elif fmt in ("fim-full", "fim-spm"):
        s = clip_suffix(suffix, suffix_tokens, count)
    else:
        s = ""
    if fmt in ("fim-prefix", "fim-short", "fim-full"):
        return fim_psm(p, s, tokens)
    if fmt == "fim-spm":
        return fim_spm(p, s, tokens)
    if fmt == "plain":
        return plain(p, tokens)
    if fmt == "chat":
        return chat(p, s, language, tokens)
    return repo(p, s, path, repo_name, repo_files, tokens)
