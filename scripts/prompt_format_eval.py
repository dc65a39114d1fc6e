"""Which inline-completion prompt format suits a pretrained code model (GGUF): measured, per format.

    nice python scripts/prompt_format_eval.py run --model /tmp/models/qwen2.5-coder-0.5b.gguf \\
        --formats fim-prefix,fim-short,fim-full,fim-spm,plain,repo,chat --fim-tasks 100 --humaneval 120 \\
        --out /tmp/pf_05b.jsonl
    python scripts/prompt_format_eval.py embedded --out /tmp/pf_05b.jsonl     # the embedded model, same tasks
    python scripts/prompt_format_eval.py summary --out /tmp/pf_05b.jsonl --json docs/prompt_formats_0.5b.json

A format name may end in ``:raw``: the same format without whitespace healing
(:func:`daemon.prompt.fim.heal`).

Tasks (the same as tricode's own evaluation, so the figures sit beside the embedded model's):

* held-out single-line FIM: :func:`training.evaluate.make_fim_tasks` on the embedded model's
  ``heldout_files.txt`` with seed 0 and the embedded tokenizer's 40-token line filter, exactly as
  ``tricode eval --fim-tasks N`` picks them (the first N of its list);
* HumanEval single-line infilling: the fixed random 120 of the 1033 tasks that
  ``tricode eval --humaneval-limit 120`` takes (``random.Random("tricode-eval-humaneval/0")``),
  mapped by :func:`training.evaluate.humaneval_fim_task` and tested by
  :func:`training.evaluate.check_humaneval` (sandboxed subprocesses).

Prompts come from :mod:`daemon.prompt.fim`. Budget: every prompt fits ``--context-tokens`` (1024,
the daemon's default): the prefix is clipped to ``--prefix-tokens`` (default 1024 - 256 - 64 = 704)
counted back from the cursor, the suffix to 256 tokens, 64 are left for the format's own text (chat
instructions, repository header). All formats see the same prefix, so they differ only in what
surrounds it. Text pieces are tokenized as plain text and control tokens one by one.

Decoding: llama-cpp-python on the GGUF, greedy (argmax of the logits), one thread, at most 48
new tokens, stopped at the first newline or a control token (:func:`daemon.prompt.fim.is_stop_token`).
A format whose prompt ids equal an earlier format's on the same task takes that answer
(``same_prompt_as``): llama.cpp's logits for a prompt differ in the last bits with how it was split
into batches, which can flip a near tie, and the daemon would not decode the same prompt twice.
The KV cache keeps the longest common prefix with the previous prompt (formats that share a
prefix are run back to back: ``fim-prefix`` is cold, ``fim-short`` and ``fim-full`` reuse its
prefix), so ``prefilled`` (tokens actually evaluated) and the milliseconds are recorded apart from
``prompt_tokens``. Scores: exact match and edit similarity of :mod:`training.evaluate`.

Results go to a JSON-lines file, one record per (task, format), appended as they come: a run
can be stopped and resumed, and ``summary`` tables whatever is there (over the tasks every listed
format has done, so formats are compared on the same tasks).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.prompt import fim as ff  # noqa: E402

DEFAULT_FORMATS = "fim-prefix,fim-short,fim-full,fim-prefix:raw,plain,repo,fim-spm,chat"
HUMANEVAL_SEED = 0          # tricode eval's default --seed: the subset of `--humaneval-limit 120`


# ----------------------------------------------------------------------------- model


def open_gguf(path: str, threads: int, n_ctx: int = 4096):
    """``llama_cpp.Llama`` on ``path`` (bench.llamacpp.plain_llama: llama.cpp's extra weight buffers off)."""
    from bench.llamacpp import plain_llama
    return plain_llama(path, n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads)


class Greedy:
    """Greedy single-line decoding on a llama.cpp model, reusing the KV cache's common prefix."""

    def __init__(self, llm, tokens: ff.SpecialTokens = ff.QWEN25_CODER):
        import numpy as np
        self.np, self.llm, self.tokens = np, llm, tokens
        self.n_vocab = llm.n_vocab()
        self.cache: list[int] = []
        self.stop_ids = {self.control_id(s): s for s in tokens.all()}
        self.stop_ids.setdefault(llm.token_eos(), "eos")

    def encode_text(self, s: str) -> list[int]:
        return self.llm.tokenize(s.encode("utf-8"), add_bos=False, special=False)

    def count(self, s: str) -> int:
        return len(self.encode_text(s)) if s else 0

    def control_id(self, s: str) -> int:
        ids = self.llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            raise ValueError(f"{s!r} is not one token in this vocabulary ({ids})")
        return ids[0]

    def _eval(self, ids: list[int]) -> int:
        """Make the cache hold ``ids`` (evaluating only what differs); returns tokens evaluated."""
        common = 0
        for a, b in zip(self.cache, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)          # at least one token, for fresh logits
        self.llm.n_tokens = common                  # eval() drops the cache beyond n_tokens
        self.llm.eval(ids[common:])
        self.cache = list(ids)
        return len(ids) - common

    def _argmax(self) -> int:
        logits = self.np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
        return int(self.np.argmax(logits))

    def line(self, ids: list[int], max_new: int, skip_blank: bool = True) -> dict:
        """Generate after ``ids`` until a newline, a stop token or ``max_new`` tokens. With
        ``skip_blank``, newlines before any other text do not stop it (so the record also shows
        what the model writes after an empty first line: the alternative stop rule)."""
        if not ids:
            raise ValueError("an empty prompt: nothing to decode from")
        t0 = time.perf_counter()
        prefilled = self._eval(ids)
        t1 = time.perf_counter()
        out: list[int] = []
        stop = "max_tokens"
        text = ""
        while len(out) < max_new:
            t = self._argmax()
            if t in self.stop_ids:
                stop = self.stop_ids[t]
                break
            out.append(t)
            text = self.llm.detokenize(out, special=False).decode("utf-8", errors="replace")
            if "\n" in text and (not skip_blank or text.strip()
                                 and "\n" in text.lstrip(" \t\r\n")):
                stop = "newline"
                break
            self.llm.eval([t])
            self.cache.append(t)
        t2 = time.perf_counter()
        return {"text": text, "gen_tokens": len(out), "stop": stop, "prefilled": prefilled,
                "prefill_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1), "ms": 1e3 * (t2 - t0)}


# ----------------------------------------------------------------------------- tasks


def fim_tasks(n: int) -> list:
    """The first ``n`` held-out FIM tasks of ``tricode eval`` (seed 0, embedded tokenizer filter)."""
    from textkit.tokenizer import Tokenizer
    from training.evaluate import (DEFAULT_MAX_LINE_TOKENS, DEFAULT_MAX_NEW_TOKENS, make_fim_tasks,
                                   read_heldout_files)
    emb = REPO / "engine" / "embedded"
    files, info = read_heldout_files(emb, None)
    if not files:
        raise SystemExit(f"no held-out files found on this machine ({info})")
    tok = Tokenizer(emb)
    return make_fim_tasks(files, n, 0, count_tokens=lambda s: len(tok.encode(s)),
                          max_line_tokens=min(DEFAULT_MAX_LINE_TOKENS, DEFAULT_MAX_NEW_TOKENS - 2))


def humaneval_tasks(n: int) -> list:
    """``(InfillTask, FimTask)`` of the fixed subset ``tricode eval --humaneval-limit n`` takes."""
    from training.evaluate import humaneval_fim_task
    from training.humaneval import load_tasks
    he_all = load_tasks()
    pick = sorted(random.Random(f"tricode-eval-humaneval/{HUMANEVAL_SEED}").sample(range(len(he_all)), n)) \
        if n < len(he_all) else range(len(he_all))
    return [(he_all[i], humaneval_fim_task(he_all[i])) for i in pick]


def repo_place(task_id: str) -> tuple[str, str]:
    """``(repo_name, path)`` for the repository format: a held-out key ``site/<pkg>/...`` is file
    ``<pkg>/...`` of repository ``<pkg>``; HumanEval tasks are ``solution.py`` of ``humaneval``."""
    if task_id.startswith("HumanEval/"):
        return "humaneval", "solution.py"
    key = task_id.rsplit(":", 1)[0]
    parts = key.split("/")
    if parts[0] == "stdlib":
        return "cpython", "Lib/" + "/".join(parts[1:])
    if parts[0] == "site" and len(parts) > 1:
        parts = parts[1:]
    name = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
    return name, "/".join(parts)


# ----------------------------------------------------------------------------- run


def first_nonblank_line(text: str) -> str:
    """The alternative stop rule: the first line with text, its indentation dropped (the cursor
    already stands after the line's indentation)."""
    return next((ln.strip(" \t\r") for ln in text.split("\n") if ln.strip()), "")


def run(args) -> int:
    from training.evaluate import check_humaneval, edit_similarity, exact_match
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f.partition(":")[0] not in ff.FORMATS or f.partition(":")[2] not in ("", "raw")]
    if bad:
        print(f"unknown format(s) {bad}: choose from {', '.join(ff.FORMATS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["set"], r["task"], r["format"]))
    ft = fim_tasks(args.fim_tasks) if args.fim_tasks else []
    ht = humaneval_tasks(args.humaneval) if args.humaneval else []
    print(f"{len(ft)} FIM tasks, {len(ht)} HumanEval tasks, formats {formats}; {len(done)} records already in {out}",
          file=sys.stderr, flush=True)
    t_load = time.perf_counter()
    llm = open_gguf(args.model, args.threads)
    g = Greedy(llm)
    print(f"model loaded in {time.perf_counter() - t_load:.1f} s", file=sys.stderr, flush=True)
    prefix_tokens = args.prefix_tokens or (args.context_tokens - args.suffix_tokens - 64)

    def one(kind: str, task, he=None) -> None:
        todo = [f for f in formats if (kind, task.task_id, f) not in done]
        if not todo:
            return
        name, path = repo_place(task.task_id)
        recs = []
        seen: dict[tuple[int, ...], dict] = {}     # the same prompt ids twice: the same answer
        for fmt in todo:
            base, _, variant = fmt.partition(":")
            healed = variant != "raw" and base != "chat"
            pr = ff.build_prompt(base, task.prefix, task.suffix, count=g.count, prefix_tokens=prefix_tokens,
                                 suffix_tokens=args.suffix_tokens, path=path, repo_name=name,
                                 heal_whitespace=healed)
            ids = ff.prompt_ids(pr, g.encode_text, g.control_id)
            if tuple(ids) in seen:
                r = dict(seen[tuple(ids)], same_prompt_as=seen[tuple(ids)]["format"])
            else:
                r = g.line(ids, args.max_new_tokens)
                seen[tuple(ids)] = dict(r, format=fmt)
            r = {k: v for k, v in r.items() if k != "format"}
            if healed:
                ws = ff.trailing_whitespace(ff.clip_prefix(task.prefix, prefix_tokens, g.count))
                r["text"] = ff.heal(r["text"], ws)
            line = ff.chat_line(r["text"]) if base == "chat" else ff.single_line(r["text"])
            alt = line if line.strip() else first_nonblank_line(r["text"])
            recs.append({"set": kind, "task": task.task_id, "format": fmt, "model": Path(args.model).name,
                         "line": line, "reference": task.middle, "exact": exact_match(line, task.middle),
                         "edit_sim": round(edit_similarity(line, task.middle), 4), "prompt_tokens": len(ids),
                         "line_skip_blank": alt, "exact_skip_blank": exact_match(alt, task.middle),
                         **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items() if k != "text"},
                         "raw": r["text"]})
        if he is not None:
            passed = check_humaneval([he] * len(recs), [x["line"] for x in recs], timeout=5.0, workers=1)
            for x, p in zip(recs, passed):
                x["passed"] = bool(p)
        with out.open("a") as f:
            for x in recs:
                f.write(json.dumps(x) + "\n")
        print(f"  {kind} {task.task_id}: " + ", ".join(
            f"{x['format']} {'Y' if x['exact'] else '-'}{('P' if x.get('passed') else '') if he else ''} "
            f"{x['ms'] / 1e3:.0f}s" for x in recs), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    for i in range(max(len(ft), len(ht))):
        if args.minutes and time.perf_counter() - t0 > 60 * args.minutes:
            print(f"stopping after {args.minutes} min (resume with the same command)", file=sys.stderr)
            break
        if i < len(ft):
            one("fim", ft[i])
        if i < len(ht):
            one("humaneval", ht[i][1], ht[i][0])
    return 0


def embedded(args) -> int:
    """The embedded model (``tricode eval``'s own prompt and greedy ``ar`` decoding, through
    :func:`training.evaluate.run_completions`) on the tasks already in ``--out``, recorded as
    format ``embedded``, so the table has it on the same tasks."""
    import torch
    from engine.checkpoint import load_checkpoint
    from textkit.tokenizer import Tokenizer
    from training.evaluate import check_humaneval, edit_similarity, exact_match, run_completions
    torch.set_num_threads(1)
    out = Path(args.out)
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    have = {(r["set"], r["task"]) for r in recs if r["format"] != "embedded"}
    done = {(r["set"], r["task"]) for r in recs if r["format"] == "embedded"}
    emb = REPO / "engine" / "embedded"
    ck, tok = load_checkpoint(emb, device="cpu"), Tokenizer(emb)
    ft = [t for t in fim_tasks(args.fim_tasks) if ("fim", t.task_id) in have - done]
    ht = [p for p in humaneval_tasks(args.humaneval) if ("humaneval", p[1].task_id) in have - done]
    new = []
    for kind, tasks in (("fim", ft), ("humaneval", [p[1] for p in ht])):
        gens = run_completions(ck.model, tok, tasks, "ar", block_size=None, threshold=None, quiet=True)
        passed = check_humaneval([p[0] for p in ht], [g["line"] for g in gens], workers=1) \
            if kind == "humaneval" else [None] * len(gens)
        for t, g, ok in zip(tasks, gens, passed):
            line = g["line"]
            new.append({"set": kind, "task": t.task_id, "format": "embedded", "model": "engine/embedded",
                        "line": line, "reference": t.middle, "exact": exact_match(line, t.middle),
                        "edit_sim": round(edit_similarity(line, t.middle), 4),
                        "prompt_tokens": g["prompt_tokens"], "line_skip_blank": line,
                        "exact_skip_blank": exact_match(line, t.middle), "gen_tokens": len(g["tokens"]),
                        "stop": "newline" if g["stop_reason"] == "stop" else g["stop_reason"],
                        "prefilled": g["prompt_tokens"], "prefill_ms": round(g["prefill_ms"], 1),
                        "decode_ms": round(g["ms"] - g["prefill_ms"], 1), "ms": round(g["ms"], 1),
                        **({"passed": bool(ok)} if ok is not None else {})})
    with out.open("a") as f:
        for x in new:
            f.write(json.dumps(x) + "\n")
    print(f"embedded: {len(new)} records added", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- summary


def summarize(records: list[dict], formats: list[str] | None = None) -> dict:
    """Per set and format, over the tasks that every format has done."""
    out: dict = {}
    for kind in ("fim", "humaneval"):
        rs = [r for r in records if r["set"] == kind]
        fmts = formats or sorted({r["format"] for r in rs},
                                 key=lambda f: (ff.FORMATS.index(f.partition(":")[0]) if f != "embedded" else 99, f))
        by_task: dict[str, dict[str, dict]] = {}
        for r in rs:
            by_task.setdefault(r["task"], {})[r["format"]] = r
        common = [t for t, d in by_task.items() if all(f in d for f in fmts)]
        sec: dict = {"tasks": len(common), "formats": {}}
        for f in fmts:
            xs = [by_task[t][f] for t in common]
            if not xs:
                continue
            stops: dict[str, int] = {}
            for x in xs:
                stops[x["stop"]] = stops.get(x["stop"], 0) + 1
            s = {"exact_match": sum(x["exact"] for x in xs) / len(xs),
                 "edit_similarity": sum(x["edit_sim"] for x in xs) / len(xs),
                 "exact_match_skip_blank": sum(x["exact_skip_blank"] for x in xs) / len(xs),
                 "blank_first_line": sum(not x["line"].strip() for x in xs),
                 "prompt_tokens_mean": sum(x["prompt_tokens"] for x in xs) / len(xs),
                 "prefilled_mean": sum(x["prefilled"] for x in xs) / len(xs),
                 "ms_median": statistics.median(x["ms"] for x in xs),
                 "decode_ms_median": statistics.median(x["decode_ms"] for x in xs),
                 "gen_tokens_mean": sum(x["gen_tokens"] for x in xs) / len(xs),
                 "stops": stops}
            if kind == "humaneval":
                s["pass_at_1"] = sum(x.get("passed", False) for x in xs) / len(xs)
                s["passed"] = sum(x.get("passed", False) for x in xs)
            sec["formats"][f] = s
        out[kind] = sec
    return out


def markdown(summary: dict) -> str:
    F, H = summary.get("fim", {}), summary.get("humaneval", {})
    fmts = list(dict.fromkeys(list(F.get("formats", {})) + list(H.get("formats", {}))))
    rows = [f"| format | FIM-{F.get('tasks', 0)} exact | edit sim | HumanEval-{H.get('tasks', 0)} pass@1 | "
            "HE exact | mean prompt tokens (FIM / HE) | median ms (FIM / HE) | stops (FIM) |",
            "|---|---|---|---|---|---|---|---|"]
    for f in fmts:
        a, b = F.get("formats", {}).get(f), H.get("formats", {}).get(f)
        rows.append("| `{}` | {} | {} | {} | {} | {} / {} | {} / {} | {} |".format(
            f, f"{100 * a['exact_match']:.1f}%" if a else "-", f"{a['edit_similarity']:.3f}" if a else "-",
            f"{100 * b['pass_at_1']:.1f}% ({b['passed']})" if b else "-",
            f"{100 * b['exact_match']:.1f}%" if b else "-",
            f"{a['prompt_tokens_mean']:.0f}" if a else "-", f"{b['prompt_tokens_mean']:.0f}" if b else "-",
            f"{a['ms_median']:.0f}" if a else "-", f"{b['ms_median']:.0f}" if b else "-",
            ", ".join(f"{k} {v}" for k, v in sorted(a["stops"].items())) if a else "-"))
    return "\n".join(rows)


def summary_cmd(args) -> int:
    recs = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    formats = [f for f in args.formats.split(",") if f] if args.formats else None
    s = summarize(recs, formats)
    print(markdown(s))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": s, "records": recs}, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="generate and score; appends to --out")
    r.add_argument("--model", required=True, help="a GGUF file")
    r.add_argument("--formats", default=DEFAULT_FORMATS)
    r.add_argument("--fim-tasks", type=int, default=100, dest="fim_tasks")
    r.add_argument("--humaneval", type=int, default=120)
    r.add_argument("--context-tokens", type=int, default=1024, dest="context_tokens")
    r.add_argument("--suffix-tokens", type=int, default=256, dest="suffix_tokens")
    r.add_argument("--prefix-tokens", type=int, default=0, dest="prefix_tokens",
                   help="default: context - suffix - 64")
    r.add_argument("--max-new-tokens", type=int, default=48, dest="max_new_tokens")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--minutes", type=float, default=0, help="stop starting tasks after this long (0: no limit)")
    r.add_argument("--out", required=True, help="JSON-lines results (appended; a rerun resumes)")
    r.set_defaults(func=run)
    e = sub.add_parser("embedded", help="add the embedded model's answers on the tasks in --out")
    e.add_argument("--out", required=True)
    e.add_argument("--fim-tasks", type=int, default=100, dest="fim_tasks")
    e.add_argument("--humaneval", type=int, default=120)
    e.set_defaults(func=embedded)
    s = sub.add_parser("summary", help="the table of a results file")
    s.add_argument("--out", required=True)
    s.add_argument("--formats", default="")
    s.add_argument("--json", default="", help="write summary + per-task records here")
    s.set_defaults(func=summary_cmd)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
