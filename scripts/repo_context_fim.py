"""How repository snippets should enter the pretrained inline format (prefix-only FIM,
daemon/prompt/fim.py BEST_FORMAT) of a real code model: one run over the seeded held-out cases of
scripts/repo_context_eval.py, each case answered without snippets (the daemon's prompt today) and
with each of several renderings/sources/budgets, through llama.cpp (bench/llamacpp.py plain_llama).

The prompt "off" is what the daemon builds for the model today: ``<|fim_prefix|>P<|fim_suffix|>
<|fim_middle|>`` with P the prefix's last PREFIX_TOKENS tokens (context_tokens 1024 - 64), its
trailing indentation left for the model (healed off the answer). A variant adds the snippets that
daemon/retrieval.py finds for the cursor (its `sources`, within `budget` tokens of the model's own
tokenizer; `held`: the file before the cursor's line, as the daemon's repo_held) rendered as

    repo      <|repo_name|>ROOT\\n <|file_sep|>path\\nsnippet ... <|file_sep|>current path\\n <off>
    comment   <|fim_prefix|># path\\n# snippet line ...\\n\\n P ...   (a comment block atop the prefix)

The cases are split in halves by their index in the seeded list (`--half tune`: even, `report`:
odd): choose on the tuning half, report the other. Rows go to --out as JSON lines as they finish
(partial results survive an interrupted run); a summary per variant is printed at the end.

    nice python scripts/repo_context_fim.py --cases 60 --half tune --out /tmp/w23_tune.jsonl \\
        --variants repo:definitions,signatures:160 comment:definitions,signatures:160
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.prompt import fim                       # noqa: E402
from daemon.repo_index import RepoIndex             # noqa: E402
from scripts.repo_context_eval import case_text, fetch, half, make_cases, retrieve_for, round_robin  # noqa: E402
from training.evaluate import edit_similarity, exact_match  # noqa: E402

PREFIX_TOKENS = 1024 - 64      # build_pretrained's prefix budget for fim-prefix at context_tokens 1024
T = fim.QWEN25_CODER


class Model:
    def __init__(self, gguf: str, threads: int):
        from bench.llamacpp import plain_llama
        self.llm = plain_llama(gguf, n_ctx=4096, n_batch=512, n_threads=threads, n_threads_batch=threads,
                               verbose=False, seed=0)
        self.ctl = {s: self.llm.tokenize(s.encode(), add_bos=False, special=True)[0] for s in T.all()}

    def encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def complete(self, pieces) -> tuple[str, int]:
        ids = fim.prompt_ids(pieces, self.encode, self.ctl.__getitem__)
        out = self.llm.create_completion(ids, max_tokens=48, temperature=0.0,
                                         stop=["\n", T.endoftext, T.file_sep, T.fim_pad])
        return out["choices"][0]["text"], len(ids)


def render(style: str, entries, prefix: str, path: str, root_name: str):
    """The prompt pieces (fim.Piece) for `style`, the snippets as `entries` (label, text)."""
    if not entries or style == "off":
        return fim.fim_psm(prefix, "")
    if style == "repo":
        return fim.repo(prefix, "", path, root_name, entries)
    if style == "comment":
        block = "".join(f"# {label}\n" + "".join(f"# {ln}\n" if ln else "#\n" for ln in text.rstrip("\n").split("\n"))
                        for label, text in entries)
        return fim.fim_psm(block + "\n" + prefix, "")
    raise ValueError(style)


def main(argv=None) -> int:
    from registry.models import model_arg
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/repo-eval")
    ap.add_argument("--work", default="/tmp/w23_fim_work")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--half", choices=("tune", "report", "all"), default="tune")
    ap.add_argument("--gguf", type=model_arg, default="qwen2.5-coder-0.5b", help="a pulled model's name or a .gguf file")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["repo:definitions,signatures:160"],
                    help="STYLE:SOURCES:BUDGET each (style repo|comment)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    roots = fetch(Path(a.data))
    work = Path(a.work)
    if work.exists():
        shutil.rmtree(work)
    wroots = {}
    for name, root in roots.items():
        wroots[name] = work / root.name
        shutil.copytree(root, wroots[name])
    cases = make_cases(roots, a.cases, 0)
    cases = round_robin(half(cases, a.half))
    model = Model(str(a.gguf), a.threads)
    from daemon.retrieval import as_entries
    variants = [(v.split(":")[0], tuple(v.split(":")[1].split(",")), int(v.split(":")[2])) for v in a.variants]
    indexes: dict[str, RepoIndex] = {}
    out = open(a.out, "a")
    for case in cases:
        root = wroots[case.package]
        if case.package not in indexes:
            indexes[case.package] = RepoIndex(root)
            indexes[case.package].build()
        prefix, _, _ = case_text(root, case)
        ws = fim.trailing_whitespace(prefix)
        p = fim.clip_prefix(prefix, PREFIX_TOKENS, model.count)
        p = p[:len(p) - len(ws)] if ws else p
        held = [prefix[:prefix.rfind("\n") + 1]]
        row = {"id": case.id, "target": case.target}
        t0 = time.time()
        gen, n = model.complete(render("off", [], p, case.path, root.name))
        got = fim.heal(gen, ws).strip()
        row["off"] = {"text": got, "exact": exact_match(got, case.target), "sim": edit_similarity(got, case.target),
                      "tokens": n}
        for style, sources, budget in variants:
            key = f"{style}:{','.join(sources)}:{budget}"
            snippets, _ = retrieve_for(indexes[case.package], root, case, budget, model.count, "bm25", held, sources)
            entries = as_entries(snippets)
            if not entries:
                row[key] = dict(row["off"], snippets=[], added=0)
                continue
            gen, m = model.complete(render(style, entries, p, case.path, root.name))
            got = fim.heal(gen, ws).strip()
            row[key] = {"text": got, "exact": exact_match(got, case.target), "sim": edit_similarity(got, case.target),
                        "added": m - n, "snippets": [f"{s.label}:{s.start}-{s.end} {s.why}" for s in snippets]}
        row["seconds"] = round(time.time() - t0, 1)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(case.id, {k: v["exact"] for k, v in row.items() if isinstance(v, dict)}, row["seconds"], flush=True)
    out.close()
    summarize(a.out)
    return 0


def summarize(path: str) -> dict:
    rows = [json.loads(ln) for ln in open(path)]
    keys = [k for k in rows[0] if isinstance(rows[0][k], dict)] if rows else []
    res = {}
    for k in keys:
        got = [r[k] for r in rows if k in r]
        res[k] = {"n": len(got), "exact": round(sum(g["exact"] for g in got) / len(got), 3),
                  "sim": round(sum(g["sim"] for g in got) / len(got), 3),
                  "with_snippets": sum(1 for g in got if g.get("snippets")),
                  "added_mean": round(sum(g.get("added", 0) for g in got) / len(got), 1)}
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summary":
        summarize(sys.argv[2])
    else:
        sys.exit(main())
