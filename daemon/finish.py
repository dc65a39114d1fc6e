"""The finish of a request: where a suggestion's text ends (stop strings, the line budget, the loop
cut, a deadline) and the one Result built from it, for the local worker and the remote backend alike.

This is the one place a suggestion's text is cut; `tricode lsp` only fits it to the editor (line
endings, the text after the cursor).
"""
from __future__ import annotations

import re
import time

import protocol
from textkit.loops import loop_cut


# -- stop rules ----------------------------------------------------------------------------------------

def text_cut(text: str, max_lines: int = 0, stops=(), before: str | None = None) -> int | None:
    """Where the completion text ends, or None to go on: before the newline that completes the
    `max_lines`-th line (lines count from the first non-whitespace character), before a stop string,
    or (with `before`, the text before the cursor) where it starts repeating itself (loops.py)."""
    cut = None
    if before is not None:
        cut = loop_cut(text, before)
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
    if max_lines > 0:
        m = re.search(r"\S", text)
        if m is not None:
            pos, count = m.start(), 0
            while True:
                j = text.find("\n", pos)
                if j < 0:
                    break
                count += 1
                if count >= max_lines:
                    if cut is None or j < cut:
                        cut = j
                    break
                pos = j + 1
    return cut


def _cut_at(text: str, cut: int | None, stop_reason: str) -> str:
    if cut is None and stop_reason == "deadline":
        cut = max(text.rfind("\n"), 0)
    if cut is None:
        return text
    at_newline = cut < len(text) and text[cut] == "\n"
    out = text[:cut]
    if at_newline and out.endswith("\r"):
        out = out[:-1]
    return out


def finish(text: str, stop_reason: str, max_lines: int = 0, stops=(), before: str | None = None) -> tuple[str, bool]:
    """(the final completion text, whether the loop guard cut it). The text is cut exactly at the stop
    rule (and the loop guard, with `before`); after a deadline, at the last complete line. It never
    ends with the newline that ended its last line. The rules are read once: the loop cut counts when
    it changed the text."""
    rule = text_cut(text, max_lines, stops)
    plain = _cut_at(text, rule, stop_reason)
    loop = loop_cut(text, before) if before is not None else None
    if loop is None:
        return plain, False
    out = _cut_at(text, loop if rule is None or loop < rule else rule, stop_reason)
    return out, out != plain


def finish_text(text: str, stop_reason: str, max_lines: int = 0, stops=(), before: str | None = None) -> str:
    """The final completion text (see `finish`)."""
    return finish(text, stop_reason, max_lines, stops, before)[0]


def loop_context(job) -> str | None:
    """The text the loop guard reads before a completion (textkit/loops.py): inline completions only
    (a refactor may rewrite repeated code on purpose)."""
    return job.msg.prefix if job.kind == "complete" else None


LAST_RESULT_KEYS = ("mode", "stop_reason", "tokens", "nfe", "tokens_per_forward", "prefill_tokens", "reused_tokens",
                    "prefill_ms", "total_ms")


def result_frame(job, raw: str, stop_reason: str, stats, *, mode: str, tokens: int, prefill_ms: float,
                 decode_ms: float, nfe: int = 0, accept_lengths=(), prefill_tokens: int = 0, reused_tokens: int = 0,
                 loop_guard: bool = False, post_from: float | None = None, budget_tokens: int = 0) -> dict:
    """The one result of `job` (a daemon.admission.Job with its prompt built), for the local worker and
    the remote backend alike: the text finished by the job's stop rules (and the loop guard when
    `loop_guard`), the counters of `stats` (daemon.admission.Stats) advanced, the wire frame returned.
    `post_from`: when the post-processing began (perf_counter; default now). `budget_tokens`: the
    config's context_tokens, reported for `tricode lsp` (protocol Result)."""
    t0 = time.perf_counter() if post_from is None else post_from
    stops = tuple(job.msg.stop) + (job.prompt.stops if job.prompt is not None else ())
    text, looped = finish(raw, stop_reason, job.msg.max_lines, stops,
                          loop_context(job) if loop_guard else None)
    post_ms = (time.perf_counter() - t0) * 1e3
    stats.tokens += tokens
    stats.nfe += nfe
    stats.accept_sum += sum(accept_lengths)
    stats.accept_n += len(accept_lengths)
    stats.prefill_tokens += prefill_tokens
    stats.reused_tokens += reused_tokens
    if stop_reason == "deadline":
        stats.deadline += 1
    stats.loop_cuts += looped
    now = time.perf_counter()
    prompt = job.prompt
    result = protocol.Result(
        id=job.id, text=text, mode=mode, stop_reason=stop_reason, tokens=tokens,
        nfe=nfe, tokens_per_forward=round(tokens / nfe, 4) if nfe else 0.0,
        accept_length=round(sum(accept_lengths) / len(accept_lengths), 4) if accept_lengths else 0.0,
        prefill_tokens=prefill_tokens, reused_tokens=reused_tokens,
        queue_ms=round(((job.started or now) - job.arrived) * 1e3, 3),
        prefill_ms=round(prefill_ms, 3), decode_ms=round(decode_ms, 3), post_ms=round(post_ms, 3),
        total_ms=round((now - job.arrived) * 1e3, 3), prompt_tokens=len(prompt.ids) if prompt is not None else 0,
        context_ms=round(job.context_ms, 3), context_files=tuple(prompt.context_files if prompt is not None else ()),
        loop_cut=looped, repo_context=tuple(getattr(prompt, "repo_context", None) or ()), budget_tokens=budget_tokens,
        prompt_form=getattr(prompt, "form", ""))
    frame = protocol.to_wire(result)
    stats.last_result = {k: frame[k] for k in LAST_RESULT_KEYS}
    return frame
