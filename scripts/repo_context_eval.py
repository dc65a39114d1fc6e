"""Repository-context evaluation: single-line completions inside held-out repositories, with the
workspace index's snippets in the prompt and without.

Data: the source trees (sdists) of PACKAGES, pure-Python libraries whose modules import each other,
none of them in the embedded model's corpus (training/corpus.py walked the build machine's venv:
see docs/repo_context.md) and all released in 2025-2026. Fetched with
`python -m pip download --no-deps --no-binary :all: NAME==VER -d DIR`, checked against the sha256
below, unpacked (tarfile's `data` filter).

A case removes one line from a .py file of the package (not its tests): a line that is one whole
simple statement (2 to 160 characters; not an import, a def/class line, a docstring, a compound
statement's header) and uses a name defined in another file of the same tree (`ast`): a name the
file imports from its own package, or a `.name(` call of a function or method that another file
defines and this one does not. The cursor is at the line's
indentation; the target is the rest of the line. Cases are drawn with a fixed seed, the same number
per package (`--cases`, default 100).

For each case the tree is indexed (daemon/repo_index.py) with the case's file as the editor holds
it (the line removed), and daemon/retrieval.py retrieves snippets for the cursor within
`--context-tokens` tokens (the embedded tokenizer counts them). A completion function
`complete(case, prefix, suffix, context, today) -> str` (prefix ends at the cursor, at the line's
indentation; `today`: today's context, the (label, text) of the workspace files the current file
imports, as daemon/context.py resolves them; `context`: the snippets as (label, text) entries, most
relevant last, [] for "off") answers each case twice (its first line counts); exact match and edit similarity (training/evaluate.py's metrics) are
reported for off and on, with the tokens the snippets add. Built in:

    --completer none      retrieval only: how often a snippet holds the definition of a name the
                          target uses (`def_hit`), and the share of the target's identifiers that
                          appear in the snippets but not in the file (`ident_recall`)
    --completer MODULE:FUNC   any function with that signature (a model behind it)

    python scripts/repo_context_eval.py --data /tmp/repo-eval [--cases 100] [--completer none]
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.repo_index import RepoIndex           # noqa: E402
from daemon.retrieval import SOURCES, Retriever, as_entries  # noqa: E402
from training.evaluate import edit_similarity, exact_match  # noqa: E402

# name, version, sha256 of the sdist, the package's import directory inside the sdist
PACKAGES = (
    ("tomlkit", "0.15.2", "83e32755ba1d20d9340bd069ee97e9f6232ba2346b63ffcba425de01f7e327a6", "tomlkit"),
    ("marshmallow", "4.4.0", "9e6ffa8511012ca89732324c1c253efd7b4d35632dcbdf80aa793fe01804af3e", "src/marshmallow"),
    ("mistune", "3.4.0", "2eaf7952af928ca8d33b779762effc1da517b62c6ad85ec8ca957e3b07b9782a", "src/mistune"),
    ("tinydb", "4.9.0", "6928b1fa785186bda7952a0ba05aaeedc883ede565ca9c7d608de44e5e75de70", "tinydb"),
)
# what of each imported file the prompt holds today, for the near-duplicate check: the window layout
# gives the extra files ~120 of 1024 tokens, each entry at most half of that
HELD_TOKENS = 128
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Case:
    id: str
    package: str
    path: str           # relative to the tree's root
    line: int           # 0-based line removed
    indent: str
    target: str         # the line without its indentation
    names: list[str]    # the names it uses that other files define


# -- data ------------------------------------------------------------------------------------------

def fetch(data: Path) -> dict[str, Path]:
    """Download (once), verify and unpack the sdists; returns package -> tree root."""
    data.mkdir(parents=True, exist_ok=True)
    roots = {}
    for name, ver, sha, _ in PACKAGES:
        tgz = data / f"{name}-{ver}.tar.gz"
        if not tgz.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"{name}=={ver}", "-d", str(data)], check=True, capture_output=True)
        got = hashlib.sha256(tgz.read_bytes()).hexdigest()
        if got != sha:
            raise SystemExit(f"{tgz}: sha256 {got} is not the expected {sha}; delete it and run again")
        root = data / "src" / f"{name}-{ver}"
        if not root.exists():
            with tarfile.open(tgz) as tf:
                tf.extractall(data / "src", filter="data")
        (root / ".git").mkdir(exist_ok=True)           # the workspace root marker
        roots[name] = root
    return roots


def defined_names(text: str) -> tuple[set[str], set[str]]:
    """(callables, all): top-level functions, classes and their methods; plus module-level assigned names."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set(), set()
    calls, names = set(), set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            calls.add(node.name)
            if isinstance(node, ast.ClassDef):
                calls.update(n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return calls, calls | names


def candidate_lines(text: str, package: str, calls_elsewhere: set[str], names_elsewhere: set[str],
                    own: set[str]) -> dict[int, list[str]]:
    """1-based line -> the cross-file names it uses, for the lines holding one whole simple statement
    (not an import, def, class, docstring, pass, or a compound statement's header) that use a name
    the file imports from its own package (and another file defines), or call a function or method
    as `.name(` that another file defines and this one does not."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == package):
            imported.update(a.asname or a.name for a in node.names)
    imported &= names_elsewhere
    out: dict[int, list[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt) or node.lineno != node.end_lineno:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Pass, ast.Global, ast.Nonlocal, ast.If, ast.For, ast.While, ast.With, ast.Try)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        used = []
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in imported:
                used.append(n.id)
            elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in calls_elsewhere
                  and n.func.attr not in own and not n.func.attr.startswith("__")):
                used.append(n.func.attr)
        if used:
            out[node.lineno] = list(dict.fromkeys(used))
    return out


def make_cases(roots: dict[str, Path], n: int, seed: int = 0, packages=PACKAGES) -> list[Case]:
    """The seeded sample of cases (n split evenly over the packages)."""
    rnd = random.Random(seed)
    out: list[Case] = []
    per = [n // len(packages) + (1 if i < n % len(packages) else 0) for i in range(len(packages))]
    for (name, ver, _, pkg_dir), quota in zip(packages, per):
        root = roots[name]
        files = sorted(p for p in root.rglob("*.py") if ".git" not in p.parts)
        texts = {p: p.read_text(encoding="utf-8", errors="replace") for p in files}
        defs = {p: defined_names(t) for p, t in texts.items()}
        candidates = []
        for p in sorted(p for p in files if p.is_relative_to(root / pkg_dir)):
            text = texts[p]
            calls = set().union(*(d[0] for q, d in defs.items() if q != p))
            names = set().union(*(d[1] for q, d in defs.items() if q != p))
            lines = text.split("\n")
            for ln, used in sorted(candidate_lines(text, name, calls, names, defs[p][1]).items()):
                raw = lines[ln - 1]
                body = raw.strip()
                if not 2 <= len(body) <= 160 or body.startswith("#"):
                    continue
                candidates.append(Case(f"{name}:{p.relative_to(root).as_posix()}:{ln}", name,
                                       p.relative_to(root).as_posix(), ln - 1, raw[:len(raw) - len(raw.lstrip())],
                                       body, used))
        out += rnd.sample(candidates, min(quota, len(candidates)))
    return out


def half(cases: list[Case], which: str = "all") -> list[Case]:
    """The tuning half (even places of the seeded list), the report half (odd places) or all."""
    if which == "all":
        return cases
    return [c for i, c in enumerate(cases) if i % 2 == (0 if which == "tune" else 1)]


def round_robin(cases: list[Case]) -> list[Case]:
    """The cases interleaved by package (one of each in turn), so that a partial run covers all."""
    by: dict[str, list[Case]] = {}
    for c in cases:
        by.setdefault(c.package, []).append(c)
    out: list[Case] = []
    for i in range(max((len(v) for v in by.values()), default=0)):
        out += [v[i] for v in by.values() if i < len(v)]
    return out


def case_text(root: Path, case: Case) -> tuple[str, str, str]:
    """(prefix, suffix, the file as the editor holds it: the line removed, the cursor at its indent)."""
    lines = (root / case.path).read_text(encoding="utf-8").split("\n")
    prefix = "\n".join(lines[:case.line]) + "\n" + case.indent
    suffix = "\n" + "\n".join(lines[case.line + 1:])
    return prefix, suffix, prefix + suffix


# -- running ---------------------------------------------------------------------------------------

def token_counter():
    """Token counts with the embedded model's tokenizer (torch-free), else characters / 4."""
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(Path(__file__).resolve().parent.parent / "engine/embedded/tokenizer.json"))
        return lambda s: len(tok.encode(s, add_special_tokens=False).ids)
    except Exception:  # noqa: BLE001
        return lambda s: max(1, len(s) // 4)


def today_context(root: Path, case: Case, text: str) -> list[tuple[str, str]]:
    """What the prompt holds today besides the file: the workspace files it imports (daemon/workspace.py)."""
    from daemon.workspace import MAX_IMPORTS, resolve_imports
    f = (root / case.path).resolve()
    out = []
    for g in resolve_imports(text, f, root.resolve(), MAX_IMPORTS):
        out.append((g.relative_to(root.resolve()).as_posix(), g.read_text(encoding="utf-8")))
    return out


def retrieve_for(idx: RepoIndex, root: Path, case: Case, budget: int, count, method: str = "bm25",
                 held_texts=(), sources=SOURCES) -> tuple[list, float]:
    """Snippets for the case with the file as the editor holds it (written into the tree while asked)."""
    f = root / case.path
    original = f.read_text(encoding="utf-8")
    prefix, suffix, held = case_text(root, case)
    f.write_text(held, encoding="utf-8")
    try:
        idx.update(f)
        t0 = time.perf_counter()
        snippets = Retriever(idx, method=method).retrieve(str(f), held, case.line, budget, held=list(held_texts),
                                                          count=count, sources=sources)
        ms = (time.perf_counter() - t0) * 1000
    finally:
        f.write_text(original, encoding="utf-8")
        idx.update(f)
    return snippets, ms


def head_of(text: str, tokens: int, count) -> str:
    """The first whole lines of text within `tokens`."""
    out, used = [], 0
    for ln in text.split("\n"):
        n = count(ln + "\n")
        if used + n > tokens:
            break
        out.append(ln)
        used += n
    return "\n".join(out)


def evaluate(roots: dict[str, Path], cases: list[Case], budget: int, complete=None, method: str = "bm25",
             with_today: bool = True, held_tokens: int = HELD_TOKENS, sources=SOURCES, rows_out: str = "") -> dict:
    count = token_counter()
    indexes = {}
    rows = []
    for case in cases:
        root = roots[case.package]
        if case.package not in indexes:
            indexes[case.package] = RepoIndex(root)
            indexes[case.package].build()
        prefix, suffix, held = case_text(root, case)
        today = today_context(root, case, held) if with_today else []
        snippets, ms = retrieve_for(indexes[case.package], root, case, budget, count, method,
                                    [head_of(t, held_tokens, count) for _, t in today], sources)
        ctx = "".join(s.text for s in snippets)
        in_file = set(IDENT.findall(held))
        want = [t for t in dict.fromkeys(IDENT.findall(case.target)) if t not in in_file and len(t) > 2]
        row = {"id": case.id, "snippets": len(snippets), "tokens_added": sum(count(f"{s.label}\n{s.text}") + 1
                                                                            for s in snippets),
               "retrieve_ms": round(ms, 2), "ranges": [f"{s.label}:{s.start}-{s.end}" for s in snippets],
               "kinds": [s.why.split()[0] for s in snippets],
               "def_hit": any(s.why.startswith("definition of ") and s.why.split()[2] in case.names for s in snippets)
               or any(re.search(rf"^\s*(def|class)\s+{re.escape(n)}\b|^{re.escape(n)}\s*=", s.text, re.M)
                      for s in snippets for n in case.names),
               "line_sim": max((edit_similarity(ln.strip(), case.target) for s in snippets
                                for ln in s.text.split("\n") if ln.strip()), default=0.0),
               "ident_recall": (sum(1 for t in want if re.search(rf"\b{re.escape(t)}\b", ctx)) / len(want)) if want else None}
        if complete is not None:
            for mode, context in (("off", []), ("on", as_entries(snippets))):
                got = complete(case, prefix, suffix, context, today)
                got = got.split("\n", 1)[0]
                row[f"exact_{mode}"] = exact_match(got.strip(), case.target)
                row[f"edit_sim_{mode}"] = edit_similarity(got.strip(), case.target)
                row[f"completion_{mode}"] = got
        rows.append(row)
        if rows_out:            # partial results survive an interrupted run
            with open(rows_out, "a") as f:
                f.write(json.dumps(row) + "\n")
    n = len(rows)
    recall = [r["ident_recall"] for r in rows if r["ident_recall"] is not None]
    summary = {"cases": n, "context_tokens": budget, "method": method, "today_context": with_today,
               "held_tokens": held_tokens, "sources": ",".join(sources),
               "def_hit": round(sum(r["def_hit"] for r in rows) / n, 3) if n else 0.0,
               "ident_recall": round(sum(recall) / len(recall), 3) if recall else None,
               "line_sim": round(sum(r["line_sim"] for r in rows) / n, 3) if n else 0.0,
               "tokens_added_mean": round(sum(r["tokens_added"] for r in rows) / n, 1) if n else 0.0,
               "retrieve_ms_median": sorted(r["retrieve_ms"] for r in rows)[n // 2] if n else 0.0}
    if complete is not None:
        for k in ("exact_off", "exact_on", "edit_sim_off", "edit_sim_on"):
            summary[k] = round(sum(r[k] for r in rows) / n, 3)
    return {"summary": summary, "rows": rows}


def load_completer(spec: str):
    if spec == "none":
        return None
    mod, _, fn = spec.partition(":")
    if not fn:
        raise SystemExit(f"--completer {spec!r}: give MODULE:FUNCTION (or none)")
    return getattr(importlib.import_module(mod), fn)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/repo-eval", help="where the sdists are downloaded and unpacked")
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--half", choices=("all", "tune", "report"), default="all",
                    help="the seeded cases at even (tune) or odd (report) places of the list: choose settings on "
                         "one half, report the other")
    ap.add_argument("--context-tokens", type=int, default=384, help="the snippets' token budget")
    ap.add_argument("--completer", default="none")
    ap.add_argument("--method", default="bm25", choices=("bm25", "jaccard"), help="how chunks are ranked")
    ap.add_argument("--no-today", action="store_true", help="no imported files in either run (snippets alone)")
    ap.add_argument("--sources", default=",".join(SOURCES), help="which snippet sources retrieval uses")
    ap.add_argument("--held-tokens", type=int, default=HELD_TOKENS,
                    help="how much of each imported file counts as already in the prompt (near-duplicates)")
    ap.add_argument("--work", default="", help="a scratch copy of the trees (default: DATA/work); the cases "
                                              "write into it")
    ap.add_argument("--json", default="")
    ap.add_argument("--rows", default="", help="append each case's row to this JSON-lines file as it completes")
    ap.add_argument("--list", action="store_true", help="print the cases and stop")
    a = ap.parse_args(argv)
    data = Path(a.data)
    roots = fetch(data)
    work = Path(a.work) if a.work else data / "work"
    if work.exists():
        shutil.rmtree(work)
    work_roots = {}
    for name, root in roots.items():
        work_roots[name] = work / root.name
        shutil.copytree(root, work_roots[name])
    cases = half(make_cases(roots, a.cases, a.seed), a.half)
    if a.half != "all":
        cases = round_robin(cases)
    if a.list:
        for c in cases:
            print(json.dumps(asdict(c)))
        return 0
    res = evaluate(work_roots, cases, a.context_tokens, load_completer(a.completer), a.method, not a.no_today,
                   a.held_tokens, tuple(a.sources.split(",")), a.rows)
    print(json.dumps(res["summary"], indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
