"""Next-edit evaluation on real edits: the diffs between consecutive releases of Python packages.

    python scripts/next_edit_eval.py cases --sdists DIR --out cases.json      # build the fixed case set
    python scripts/next_edit_eval.py score --cases cases.json --predictor pattern
    python scripts/next_edit_eval.py score --cases cases.json --predictor llama --format sweep \\
        --model /tmp/models/qwen2.5-coder-0.5b.gguf [--gate 0.5]

The sdists come from the registry (`python -m pip download --no-deps --no-binary :all: NAME==VER -d DIR`,
the pairs in RELEASES). A case is one change (a difflib hunk) of a file between two releases: the file
with its earlier hunks of the release already made is the current text, those hunks are the history
(unified diffs, as lsp/edit_history.py writes them), the cursor is at the change's first line. The
expected region is the region of the next release (every hunk inside it made). "none" cases are
places of such a file that the release leaves alone: the right answer there is no edit.

Scores: exact (the region after the predictor's edit equals the expected one, every change of the release
inside it made), exact_first (it equals the region with the case's own change made: the issue's "exact
match of the region after applying the first edit"), similarity gain
(difflib ratio toward the expected region after the edit, minus before; 0 for no edit), no-edit
precision (none cases answered with no edit), edit rate, latency p50/p95, tokens, tokens per forward.
Prompt formats and the region come from daemon/next_edit_prompt.py (the one home of the format).
"""
from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import statistics
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon import next_edit_prompt as nep          # noqa: E402
from textkit.edit_pattern import tokens              # noqa: E402
from lsp.edit_history import make_edit              # noqa: E402

RELEASES = [("idna", "2.10", "3.0"), ("itsdangerous", "1.1.0", "2.0.0"), ("markupsafe", "1.1.1", "2.0.0"),
            ("chardet", "4.0.0", "5.0.0"), ("jinja2", "2.11.3", "3.0.0"), ("click", "7.1.2", "8.0.0"),
            ("jsonschema", "3.2.0", "4.0.0")]
SEED = 24
MAX_EDIT_CASES, MAX_NONE_CASES = 50, 20
PER_FILE = 3
MAX_HUNK_LINES = 3
MAX_FILE_LINES = 2500


# -- cases ------------------------------------------------------------------------------------------------

def _sdist_files(sdists: Path, name: str, version: str) -> dict[str, str]:
    pats = [p for p in sdists.glob("*.tar.gz") if p.name.lower().startswith(f"{name.lower()}-{version}.tar")]
    if not pats:
        raise SystemExit(f"no sdist of {name}=={version} in {sdists}: run "
                         f"python -m pip download --no-deps --no-binary :all: {name}=={version} -d {sdists}")
    out = {}
    with tarfile.open(pats[0]) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")[1:]
            if not m.isfile() or not m.name.endswith(".py") or any(p in ("docs", "tests", "examples") for p in parts):
                continue
            rel = "/".join(p for p in parts if p != "src")
            f = tar.extractfile(m)
            try:
                out[rel] = f.read().decode("utf-8").replace("\r\n", "\n")
            except UnicodeDecodeError:
                continue
    return out


def _signature(old: str, new: str) -> set:
    """What a hunk does, with names abstracted: pairs of (removed, inserted) token runs."""
    ta, tb = tokens(old), tokens(new)
    sm = difflib.SequenceMatcher(None, ta, tb, autojunk=False)

    def norm(ts):
        return "".join("ID" if re.match(r"[A-Za-z_]\w+\Z", t) else t for t in ts if not t.isspace())
    return {(norm(ta[i1:i2]), norm(tb[j1:j2])) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"}


def _hunks(a: list[str], b: list[str]) -> list[tuple[int, int, int, int]]:
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(i1, i2, j1, j2) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal"]


def build_cases(sdists: Path) -> list[dict]:
    rng = random.Random(SEED)
    edit_pool, none_pool = [], []
    for name, v0, v1 in RELEASES:
        old_files, new_files = _sdist_files(sdists, name, v0), _sdist_files(sdists, name, v1)
        for rel in sorted(set(old_files) & set(new_files)):
            a = old_files[rel].splitlines(keepends=True)
            b = new_files[rel].splitlines(keepends=True)
            if a == b or len(a) > MAX_FILE_LINES:
                continue
            hunks = _hunks(a, b)
            path = f"{name}/{rel}"
            cur = list(a)           # the file with hunks[:k] made
            shift = 0               # line offset of cur relative to a, after the made hunks
            history, sigs = [], []
            file_edits = []
            for k, (i1, i2, j1, j2) in enumerate(hunks):
                old_s, new_s = "".join(a[i1:i2]), "".join(b[j1:j2])
                sig = _signature(old_s, new_s)
                small = 0 < i2 - i1 <= MAX_HUNK_LINES and 0 < j2 - j1 <= MAX_HUNK_LINES
                if history and small and any(sig & s for s in sigs):
                    line = i1 + shift
                    text = "".join(cur)
                    # the expected next release text of the whole file, with this and all later hunks made
                    file_edits.append({"path": path, "text": text, "line": line, "history": history[-nep.MAX_HISTORY:],
                                       "rest": [[x1 + shift, x2 + shift, "".join(b[y1:y2])] for x1, x2, y1, y2 in hunks[k:]],
                                       "repeat": True})
                before = "".join(cur)
                cur[i1 + shift:i2 + shift] = b[j1:j2]
                after = "".join(cur)
                history.append(make_edit("file:///" + path, before, after).diff.replace("a//", "a/").replace("b//", "b/"))
                sigs.append(sig)
                shift += (j2 - j1) - (i2 - i1)
            rng.shuffle(file_edits)
            edit_pool.extend(file_edits[:PER_FILE])
            # places the release leaves alone: 8+ lines from every hunk, in the text after 2+ hunks are made
            if len(hunks) >= 3:
                k = min(2, len(hunks) - 1)
                cur2 = list(a)
                sh = 0
                for (i1, i2, j1, j2) in hunks[:k]:
                    cur2[i1 + sh:i2 + sh] = b[j1:j2]
                    sh += (j2 - j1) - (i2 - i1)
                hist2 = []
                c3, sh3 = list(a), 0
                for (i1, i2, j1, j2) in hunks[:k]:
                    before = "".join(c3)
                    c3[i1 + sh3:i2 + sh3] = b[j1:j2]
                    sh3 += (j2 - j1) - (i2 - i1)
                    hist2.append(make_edit("file:///" + path, before, "".join(c3)).diff.replace("a//", "a/").replace("b//", "b/"))
                far = [ln for ln in range(hunks[k][0], len(a))
                       if all(abs(ln - h[0]) > 8 and abs(ln - h[1]) > 8 for h in hunks) and a[ln].strip()]
                if far:
                    ln = rng.choice(far)
                    line = ln + sh
                    text = "".join(cur2)
                    none_pool.append({"path": path, "text": text, "line": line, "history": hist2,
                                      "rest": [[x1 + sh, x2 + sh, "".join(b[y1:y2])] for x1, x2, y1, y2 in hunks[k:]],
                                      "repeat": False})
    rng.shuffle(edit_pool)
    rng.shuffle(none_pool)
    cases = edit_pool[:MAX_EDIT_CASES] + none_pool[:MAX_NONE_CASES]
    for i, c in enumerate(cases):
        c["id"] = i
    return cases


def expected_region(case: dict, start: int, end: int, first_only: bool = False) -> str | None:
    """The region text[start:end] (whole lines) as the next release has it: every remaining hunk inside
    it made. None when a hunk crosses the region's border (the case does not fit this region)."""
    text = case["text"]
    l0 = text.count("\n", 0, start)
    l1 = l0 + text[start:end].count("\n")
    lines = text[start:end].splitlines(keepends=True)
    rest = case["rest"][:1] if first_only else case["rest"]
    for i1, i2, new in sorted(rest, reverse=True):
        if i2 <= l0 and i1 < l0 or i1 >= l1:
            continue                      # wholly outside
        if i1 < l0 or i2 > l1:
            return None                   # crosses a border
        lines[i1 - l0:i2 - l0] = new.splitlines(keepends=True)
    return "".join(lines)


# -- predictors ---------------------------------------------------------------------------------------------

class Pattern:
    """The history's generalised pattern applied to the region: the first changed line only."""
    def __init__(self, min_support: int = 1):
        self.min_support = min_support
        self.name = "pattern" + (f":support{min_support}" if min_support > 1 else "")

    def predict(self, case, start, end, cursor):
        region = case["text"][start:end]
        t0 = time.perf_counter()
        out = nep.draft(region, case["history"], first_line_only=True,
                        cursor_line=case["text"].count("\n", start, cursor), min_support=self.min_support)
        return out, {"ms": (time.perf_counter() - t0) * 1e3, "tokens": 0, "forwards": 0}


class NoEdit:
    name = "none"

    def predict(self, case, start, end, cursor):
        return case["text"][start:end], {"ms": 0.0, "tokens": 0, "forwards": 0}


class Llama:
    """A prompt format through llama-cpp-python. Candidates: the greedy rewrite (`rewrite`), the history's
    pattern draft (`draft`), or both; each candidate and the region copied unchanged are scored
    teacher-forced under the same prompt (mean token log-probability, the stop marker included), so that
    the gate (keep a candidate only when its mean is above the copy's minus GATE) can be swept afterwards
    without decoding again (`gates` in the result)."""

    def __init__(self, model: str, fmt: str, gate: float | None, threads: int, candidates: str):
        from bench.llamacpp import plain_llama      # llama.cpp's extra weight buffers off (segfault here)
        self.llm = plain_llama(model, n_ctx=3072, n_batch=512, n_threads=threads, logits_all=False, seed=0)
        self.fmt, self.gate, self.candidates = fmt, gate, candidates
        self.name = f"llama:{fmt}:{candidates}" + (f":gate{gate}" if gate is not None else "")

    def _score(self, ptoks: list[int], answer: str) -> float:
        """Mean log-probability of `answer` after the prompt, in one decode of the answer's tokens (the
        prompt's KV cache is kept: the cache is cut back to the prompt first)."""
        import numpy as np
        llm = self.llm
        ans = llm.tokenize(answer.encode(), add_bos=False, special=True)
        if llm.n_tokens < len(ptoks) or list(llm.input_ids[:len(ptoks)]) != ptoks:
            llm.reset()
            llm.eval(ptoks)
        n_past = len(ptoks) - 1                      # re-decode the prompt's last token: its row predicts ans[0]
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        toks = [ptoks[-1]] + ans[:-1]
        llm._batch.set_batch(batch=toks, n_past=n_past, logits_all=True)
        llm._ctx.decode(llm._batch)
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(toks) * llm._n_vocab,))
        logits = logits.reshape(len(toks), llm._n_vocab).astype(np.float64)
        m = logits.max(axis=1, keepdims=True)
        lp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        llm.n_tokens = len(ptoks)                     # the answer is not kept in the cache's bookkeeping
        llm._ctx.kv_cache_seq_rm(-1, len(ptoks), -1)
        return float(np.mean([lp[i, t] for i, t in enumerate(ans)]))

    def predict(self, case, start, end, cursor):
        text = case["text"]
        region = text[start:end]
        prompt = nep.build(self.fmt, path=case["path"], text=text, cursor=cursor, region_start=start,
                           region_end=end, history=case["history"])
        t0 = time.perf_counter()
        llm = self.llm
        ptoks = llm.tokenize(prompt.text.encode(), add_bos=False, special=True)
        n_lines = region.count("\n")
        out, ntok = "", 0
        if self.candidates in ("rewrite", "both"):
            budget = len(llm.tokenize(region.encode(), add_bos=False, special=True)) + 24
            pieces = []
            for chunk in llm.create_completion(ptoks, max_tokens=budget, temperature=0.0, stop=list(prompt.stop),
                                               stream=True):
                pieces.append(chunk["choices"][0]["text"])
                ntok += 1
                if "".join(pieces).count("\n") > n_lines + 1:      # the region's lines + 2: enough
                    break
            out = prompt.parse("".join(pieces))
            out = "".join(out.splitlines(keepends=True)[:n_lines + 2])
            if out and not out.endswith("\n") and region.endswith("\n"):
                out += "\n"
        gen_ms = (time.perf_counter() - t0) * 1e3
        cands = []                  # (text, kind)
        if out and out != region:
            cands.append((out, "rewrite"))
        if self.candidates in ("draft", "both"):
            d = nep.draft(region, case["history"], first_line_only=True,
                          cursor_line=text.count("\n", start, cursor))
            if d != region:
                cands.append((d, "draft"))
        stop = prompt.stop[0]
        copy_lp = self._score(ptoks, region + stop) if cands else 0.0
        scored = [(c, self._score(ptoks, c + stop), kind) for c, kind in cands]
        choice = region
        if scored and self.gate is None:
            choice = scored[0][0]
        elif scored:
            ok = [(lp, c) for c, lp, _ in scored if lp - copy_lp > -self.gate]
            if ok:
                choice = max(ok)[1]
        return choice, {"ms": (time.perf_counter() - t0) * 1e3, "gen_ms": gen_ms, "tokens": ntok, "forwards": ntok,
                        "prompt_tokens": len(ptoks), "copy_lp": copy_lp, "cands": scored}


class Engine:
    """The daemon's next-edit stage without the socket: daemon/next_edit_run.py's `predict` (the pattern
    candidate, the model's greedy `spec` rewrite in the sweep_draft format, both scored teacher-forced
    against the copy) on a checkpoint loaded by the engine, exactly as the worker runs it; the answer is
    `choose`'s at the given margin (None: the daemon's default). Each case also times an inline
    completion at the same place (FIM prompt of daemon/prompt.py, spec, one line) for the latency ratio."""

    def __init__(self, model: str, margin: float | None, rewrite: bool = True, runner: str = "torch"):
        import torch
        torch.set_num_threads(1)
        from daemon import next_edit_run
        from daemon.prompt import PromptBuilder, protect_special_tokens
        from engine.checkpoint import load_checkpoint
        from textkit.tokenizer import Tokenizer
        self.ner = next_edit_run
        if runner == "llama":       # llama.cpp's kernels at the GGUF's own width (engine/llama_runner.py)
            from engine.checkpoint import Checkpoint
            from engine.llama_runner import LlamaModel
            lm = LlamaModel.load(model, threads=1, n_ctx=8192, n_seq=4)
            self.ck = Checkpoint(path=Path(model), config=lm.cfg, model=lm, device=torch.device("cpu"),
                                 dtype=torch.float32, format="gguf")
        else:
            self.ck = load_checkpoint(model, device="cpu", dtype="float32")
        self.tok = Tokenizer(Path(model))
        protect_special_tokens(self.tok)
        self.builder = PromptBuilder(self.tok)
        self.margin = next_edit_run.MARGIN if margin is None else margin
        self.rewrite = rewrite
        self.name = (f"engine:{Path(model).name}:{runner}:margin{self.margin}" + ("" if rewrite else ":norewrite"))

    def inline_ms(self, text: str, cursor: int) -> float:
        from daemon.finish import text_cut
        from engine.generate import DecodeParams, generate
        eol = text.find("\n", cursor)
        eol = len(text) if eol < 0 else eol
        t0 = time.perf_counter()
        prompt = self.builder.build(text[:eol], text[eol:], 1024, [])
        tok = self.tok
        generate(self.ck.model, prompt.ids, DecodeParams(mode="spec", max_new_tokens=64),
                 stop=lambda ids: None if text_cut(tok.decode(ids), 1) is None else len(ids))
        return (time.perf_counter() - t0) * 1e3

    def predict(self, case, start, end, cursor):
        import protocol
        text = case["text"]
        last = case["history"][-1] if case["history"] else ""
        lo, ln = nep.changed_lines(last) if last else ("", "")
        msg = protocol.NextEdit(id=1, doc=case["path"], path=case["path"], text=text, cursor=cursor,
                                region_start=start, region_end=end, history=tuple(case["history"]),
                                last_old=lo, last_new=ln)
        t0 = time.perf_counter()
        pred = self.ner.predict(self.ck.model, self.tok, msg, rewrite=self.rewrite)
        ms = (time.perf_counter() - t0) * 1e3
        best, _ = self.ner.choose(pred, self.margin)
        region = text[start:end]
        cands = [(c.rewrite, c.total, c.source, c.mean) for c in pred.candidates]
        return (best.rewrite if best else region), {
            "ms": ms, "tokens": pred.tokens, "forwards": pred.forwards, "prompt_tokens": pred.prompt_tokens,
            "copy_lp": pred.copy_total, "copy_mean": pred.copy, "cands": cands, "inline_ms": self.inline_ms(text, cursor)}


GATES = (None, 1.0, 0.5, 0.25, 0.0, -0.25)
SUM_GATES = (None, 4.0, 2.0, 1.0, 0.0, -1.0, -2.0, -4.0)


def gate_table(rows: list[dict]) -> list[dict]:
    """The scores again for each candidate set and gate value, from the log-probabilities kept in the rows
    (`lp`: what the predictor compares; rows with `lp_mean` too are re-gated on the per-token mean)."""
    out = []
    kinds = sorted({c["kind"] for r in rows for c in r["cands"]})
    sets = [(k,) for k in kinds] + ([tuple(kinds)] if len(kinds) > 1 else [])
    means = any("lp_mean" in c for r in rows for c in r["cands"])
    for ks in sets:
        sub = [{**r, "cands": [c for c in r["cands"] if c["kind"] in ks]} for r in rows]
        for row in _gate_rows(sub, SUM_GATES if means else GATES):
            out.append({"candidates": "+".join(ks), "stat": "sum" if means else "mean", **row})
        if means and len(ks) > 1:       # the daemon's rule (next_edit_run.choose): the pattern first when it passes
            for row in _gate_rows(sub, SUM_GATES, pattern_first=True):
                out.append({"candidates": "+".join(ks) + " (pattern first)", "stat": "sum", **row})
        if means:
            sub = [{**r, "copy_lp": r.get("copy_mean", 0.0),
                    "cands": [{**c, "lp": c["lp_mean"]} for c in r["cands"]]} for r in sub]
            for row in _gate_rows(sub, GATES):
                out.append({"candidates": "+".join(ks), "stat": "mean", **row})
    return out


def _gate_rows(rows: list[dict], gates=GATES, pattern_first: bool = False) -> list[dict]:
    out = []
    for g in gates:
        due = none = exact = first = edits = kept_none = 0
        gain = 0.0
        for r in rows:
            pick = None
            if r["cands"]:
                if g is None:
                    pick = r["cands"][0]
                else:
                    ok = [c for c in r["cands"] if c["lp"] - r["copy_lp"] > -g]
                    pat = [c for c in ok if pattern_first and c["kind"] == "pattern"]
                    pick = pat[0] if pat else max(ok, key=lambda c: c["lp"]) if ok else None
            if r["due"]:
                due += 1
                if pick:
                    edits += 1
                    exact += pick["exact"]
                    first += pick["exact_first"]
                    gain += pick["gain"]
            else:
                none += 1
                kept_none += pick is None
        out.append({"gate": g, "exact_first": first, "exact": exact, "exact_first_rate": round(first / max(1, due), 3),
                    "gain_mean": round(gain / max(1, due), 4), "edit_rate_due": round(edits / max(1, due), 3),
                    "no_edit_precision": round(kept_none / none, 3) if none else None})
    return out


# -- scoring --------------------------------------------------------------------------------------------------

def region_of(case: dict, region: str) -> tuple[int, int, int]:
    text = case["text"]
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    cursor = starts[min(case["line"], len(starts) - 1)]
    cursor += len(text[cursor:].split("\n", 1)[0]) - len(text[cursor:].split("\n", 1)[0].lstrip())
    if region == "copilot":
        s, e = nep.region_lines(text, cursor)
    else:
        s, e = nep.region_tokens(text, cursor)
    return s, e, cursor


def sample(cases: list[dict], n: int) -> list[dict]:
    """n cases spread evenly over the list (edits and no-edit places alike); all when n is 0."""
    if not n or n >= len(cases):
        return cases
    return [cases[int(i * len(cases) / n)] for i in range(n)]


def score(cases: list[dict], predictor, region: str, limit: int = 0, log=print, rows_out: Path | None = None) -> dict:
    rows = []
    for c in sample(cases, limit):
        s, e, cursor = region_of(c, region)
        want = expected_region(c, s, e)
        if want is None:
            continue
        first = expected_region(c, s, e, first_only=True) if c["repeat"] else want
        have = c["text"][s:e]
        got, info = predictor.predict(c, s, e, cursor)
        a, b, t = nep.smallest_edit(have, got)
        edited = have[:a] + t + have[b:]
        undo = False
        last = c["history"][-1] if c["history"] else ""
        if last:
            lo, ln = nep.changed_lines(last)
            if nep.undoes_last(have, edited, lo, ln):
                edited, undo = have, True
        sim0 = difflib.SequenceMatcher(None, have, want).ratio()
        sim1 = difflib.SequenceMatcher(None, edited, want).ratio()
        cands = []
        for cand, lp, kind, *mean in info.get("cands", []):
            ca, cb, ct = nep.smallest_edit(have, cand)
            ce = have[:ca] + ct + have[cb:]
            if last and nep.undoes_last(have, ce, *nep.changed_lines(last)):
                continue
            cands.append({"lp": lp, "kind": kind, "exact": ce == want, "exact_first": ce == first and first != have,
                          "gain": difflib.SequenceMatcher(None, ce, want).ratio() - sim0,
                          **({"lp_mean": mean[0]} if mean else {})})
        rows.append({"cands": cands, "copy_lp": info.get("copy_lp", 0.0), "id": c["id"], "repeat": c["repeat"], "due": want != have, "edit": edited != have,
                     "exact": edited == want, "exact_first": edited == first and first != have, "gain": sim1 - sim0, "ms": info.get("ms", 0.0),
                     "tokens": info.get("tokens", 0), "undo": undo, "gen_ms": info.get("gen_ms", 0.0), "prompt_tokens": info.get("prompt_tokens", 0),
                     "forwards": info.get("forwards", 0), "inline_ms": info.get("inline_ms", 0.0),
                     "copy_mean": info.get("copy_mean", 0.0)})
        if rows_out is not None:
            with rows_out.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
        log(f"case {c['id']:3d} {c['path']}:{c['line'] + 1} due={want != have} edit={edited != have} "
            f"exact={edited == want} gain={sim1 - sim0:+.3f} {info.get('ms', 0):.0f}ms")
    return summarize(rows, predictor.name, region)


def summarize(rows: list[dict], name: str, region: str) -> dict:
    due = [r for r in rows if r["due"]]
    none = [r for r in rows if not r["due"]]
    gen = sorted(r["gen_ms"] for r in rows if r.get("gen_ms"))
    ms = sorted(r["ms"] for r in rows)

    def pct(q):
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else 0.0
    return {
        "predictor": name, "region": region, "cases": len(rows), "due": len(due), "none": len(none),
        "exact": sum(r["exact"] for r in due), "exact_rate": round(sum(r["exact"] for r in due) / max(1, len(due)), 3),
        "exact_first": sum(r["exact_first"] for r in due),
        "exact_first_rate": round(sum(r["exact_first"] for r in due) / max(1, len(due)), 3),
        "gain_mean": round(statistics.mean(r["gain"] for r in due), 4) if due else 0.0,
        "edit_rate_due": round(sum(r["edit"] for r in due) / max(1, len(due)), 3),
        "no_edit_precision": round(sum(not r["edit"] for r in none) / len(none), 3) if none else None,
        "latency_p50_ms": pct(0.5), "latency_p95_ms": pct(0.95),
        "tokens_mean": round(statistics.mean(r["tokens"] for r in rows), 1) if rows else 0,
        "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in rows), 1) if rows else 0,
        "undo_refused": sum(r["undo"] for r in rows),
        "rewrite_tokens_per_forward": (round(sum(r.get("tokens", 0) for r in rows)
                                             / sum(r.get("forwards", 0) for r in rows), 2)
                                       if any(r.get("forwards") for r in rows) else None),
        "inline_p50_ms": (round(statistics.median(r["inline_ms"] for r in rows if r.get("inline_ms")), 1)
                          if any(r.get("inline_ms") for r in rows) else None),
        "gates": gate_table(rows) if any(r["cands"] for r in rows) else [],
    }


ap_default_model = "/tmp/models/qwen2.5-coder-0.5b.gguf"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases")
    c.add_argument("--sdists", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    m = sub.add_parser("summarize", help="the scores of a --rows file (also of a run still going)")
    m.add_argument("--rows", type=Path, required=True)
    m.add_argument("--name", default="")
    m.add_argument("--region", default="copilot")
    s = sub.add_parser("score")
    s.add_argument("--cases", type=Path, required=True)
    s.add_argument("--predictor", choices=("none", "pattern", "llama", "engine"), default="pattern")
    s.add_argument("--format", choices=nep.FORMATS, default="sweep")
    s.add_argument("--region", choices=("copilot", "zeta"), default="copilot")
    s.add_argument("--model", default=None, help="llama: a GGUF file; engine: a checkpoint "
                   "(default: the embedded model)")
    s.add_argument("--gate", type=float, default=None,
                   help="accept a candidate only if its mean token logprob is above the copy's minus GATE")
    s.add_argument("--candidates", choices=("rewrite", "draft", "both"), default="rewrite")
    s.add_argument("--margin", type=float, default=None, help="engine: the gate's margin (default: the daemon's)")
    s.add_argument("--no-rewrite", action="store_true", help="engine: the pattern candidate only, verified")
    s.add_argument("--runner", choices=("torch", "llama"), default="torch",
                   help="engine: the runner of a GGUF model (llama: llama.cpp's kernels, as the daemon on a CPU)")
    s.add_argument("--min-support", type=int, default=1, help="pattern: rules given by at least this many edits")
    s.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1: on a shared machine, OpenMP "
                   "threads that wait for each other cost more than they gain)")
    s.add_argument("--limit", type=int, default=0, help="score this many cases, spread evenly over the set")
    s.add_argument("--json", type=Path)
    s.add_argument("--rows", type=Path, help="append each case's row (JSON lines) as it is scored")
    args = ap.parse_args(argv)
    if args.cmd == "cases":
        cases = build_cases(args.sdists)
        args.out.write_text(json.dumps(cases))
        n_rep = sum(c["repeat"] for c in cases)
        print(f"{len(cases)} cases ({n_rep} edits, {len(cases) - n_rep} no-edit places) -> {args.out}")
        by = {}
        for c in cases:
            by[c["path"].split("/")[0]] = by.get(c["path"].split("/")[0], 0) + 1
        print(by)
        return 0
    if args.cmd == "summarize":
        rows = [json.loads(x) for x in args.rows.read_text().splitlines() if x.strip()]
        print(json.dumps(summarize(rows, args.name or str(args.rows), args.region), indent=1))
        return 0
    cases = json.loads(args.cases.read_text())
    if args.predictor == "none":
        pred = NoEdit()
    elif args.predictor == "pattern":
        pred = Pattern(args.min_support)
    elif args.predictor == "engine":
        from engine.embedded_model import default_model
        model = args.model or str(default_model())
        pred = Engine(model, args.margin, rewrite=not args.no_rewrite, runner=args.runner)
    else:
        pred = Llama(args.model or ap_default_model, args.format, args.gate, args.threads, args.candidates)
    res = score(cases, pred, args.region, args.limit, rows_out=args.rows)
    print(json.dumps(res))
    if args.json:
        args.json.write_text(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
