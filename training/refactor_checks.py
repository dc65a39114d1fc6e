"""Refactor checks: does a refactor asked of tricode come back right? (issue 21, "refactor success")

Twelve small Python modules, each with an instruction of the kinds an editor sends (add a docstring,
add type hints, rename a variable, loop to comprehension, extract a constant, f-strings, input
validation, simplify a condition, enumerate), written for this check. A task is asked the way the
editor's code action asks it: `lsp.refactor.build` makes the job (the cursor on the function's `def`
line), a `Generate` goes to a real daemon (greedy, AR, the daemon's own prompt: the chat template for
an instruct model, FIM otherwise), `job.finish` turns the answer into the replacement, which is applied
to the module. The result counts as a success only when both hold:

* behaviour: the refactored module plus the task's assertions exit 0 in training/sandbox.py (a separate
  restricted process, with a timeout);
* change: the requested change is in the code (checked on its ast: a docstring, annotations on every
  parameter and the return, the new name and not the old one, no `for` loop and a comprehension, ...),
  and nothing of the prompt is left in the file (its comment scaffold, the original commented out).

An unusable answer (`finish` gives None: nothing would be applied in the editor) is a failure. The
checker is deterministic; it knows nothing of models. `run_checks` starts a daemon (own XDG folders,
one CPU thread, under the caller's nice) and writes one JSON record per task.

    python -m training.refactor_checks --model qwen2.5-coder-0.5b --out refactor.jsonl
    python -m training.refactor_checks --model embedded
    tricode eval --refactor-checks --model qwen2.5-coder-0.5b --threads 1 --records refactor.jsonl
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from training.sandbox import run_python

REPO = Path(__file__).resolve().parent.parent


# -- the change checks (each returns None when the change is there, else what is missing) -----------

def _func(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    return next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _names(node: ast.AST) -> set[str]:
    out = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    out |= {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
    return out


_SPHINX_PARAM = re.compile(r"^\s*:param\s+(?:[\w\[\], ]+\s+)?\*{0,2}(\w+)\s*:", re.M)
_SECTION = re.compile(r"^(args|arguments|parameters|params)\s*:?\s*$", re.I)
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\(.*\))?\s*:")


def documented_params(doc: str) -> list[str]:
    """The parameter names a docstring documents: `:param x:` (Sphinx) and the entries of an
    Args/Parameters section (Google `x (int): ...`, NumPy `x : int`)."""
    names = _SPHINX_PARAM.findall(doc)
    lines = doc.split("\n")
    for i, ln in enumerate(lines):
        if not _SECTION.match(ln.strip()):
            continue
        body = [x for x in lines[i + 1:]]
        while body and set(body[0].strip()) <= set("-="):      # a NumPy underline (or blank)
            if not body[0].strip():
                break
            body.pop(0)
        indent = None
        for x in body:
            if not x.strip():
                if indent is not None:
                    break
                continue
            w = len(x) - len(x.lstrip())
            if indent is None:
                indent = w
            if w < indent:
                break
            m = _ENTRY.match(x.strip())
            if w == indent and m:
                names.append(m.group(1))
    return names


def has_docstring(tree, f) -> str | None:
    """A docstring, and none that documents a parameter the function does not have (its examples,
    if any, are run with the behaviour tests: see `check`)."""
    doc = ast.get_docstring(f)
    if not doc:
        return "no docstring"
    params = {a.arg for a in f.args.posonlyargs + f.args.args + f.args.kwonlyargs}
    params |= {a.arg for a in (f.args.vararg, f.args.kwarg) if a is not None}
    invented = [n for n in documented_params(doc) if n not in params]
    return f"the docstring documents parameters it does not have: {', '.join(invented)}" if invented else None


def fully_annotated(tree, f) -> str | None:
    args = f.args.posonlyargs + f.args.args + f.args.kwonlyargs
    bare = [a.arg for a in args if a.annotation is None]
    if bare:
        return f"parameters without a type: {', '.join(bare)}"
    return None if f.returns is not None else "no return type"


def renamed(old: str, new: str) -> Callable:
    def check(tree, f):
        names = _names(f)
        if old in names:
            return f"{old!r} is still used"
        return None if new in names else f"{new!r} is not used"
    return check


def no_loop_with(comp: type) -> Callable:
    def check(tree, f):
        if any(isinstance(n, (ast.For, ast.While)) for n in ast.walk(f)):
            return "still has a loop"
        return None if any(isinstance(n, comp) for n in ast.walk(f)) else f"no {comp.__name__}"
    return check


def constant_extracted(name: str, value) -> Callable:
    def check(tree, f):
        top = [n for n in tree.body if isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in n.targets)]
        if not top or not isinstance(top[0].value, ast.Constant) or top[0].value.value != value:
            return f"no module-level {name} = {value!r}"
        if any(isinstance(n, ast.Constant) and n.value == value and type(n.value) is type(value) for n in ast.walk(f)):
            return f"{value!r} still written in the function"
        return None if name in _names(f) else f"the function does not use {name}"
    return check


def uses_fstrings(tree, f) -> str | None:
    for n in ast.walk(f):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) and isinstance(n.left, ast.Constant):
            return "still formats with %"
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "format":
            return "still calls .format"
    return None if any(isinstance(n, ast.JoinedStr) for n in ast.walk(f)) else "no f-string"


def raises_value_error(tree, f) -> str | None:
    for n in ast.walk(f):
        if isinstance(n, ast.Raise) and n.exc is not None:
            e = n.exc.func if isinstance(n.exc, ast.Call) else n.exc
            if isinstance(e, ast.Name) and e.id == "ValueError":
                return None
    return "no raise ValueError"


def no_if_or_bool_literal(tree, f) -> str | None:
    if any(isinstance(n, (ast.If, ast.IfExp)) for n in ast.walk(f)):
        return "still has an if"
    if any(isinstance(n, ast.Constant) and isinstance(n.value, bool) for n in ast.walk(f)):
        return "still writes True/False"
    return None


def uses_enumerate(tree, f) -> str | None:
    calls = {n.func.id for n in ast.walk(f) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    if "range" in calls or "len" in calls:
        return "still uses range(len(...))"
    return None if "enumerate" in calls else "no enumerate"


# -- the tasks --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RefactorTask:
    name: str
    kind: str
    action: str                 # lsp.refactor action: docstring | type_hints | rewrite
    instruction: str            # for rewrite
    source: str                 # the module before the refactor
    function: str               # the function the cursor is on (and the change check looks at)
    tests: str                  # assertions appended to the refactored module
    change: Callable            # (tree, function node) -> None | what is missing

    def cursor(self) -> int:
        return self.source.index(f"def {self.function}(")


TASKS: tuple[RefactorTask, ...] = (
    RefactorTask("docstring_average", "docstring", "docstring", "",
                 "def average(numbers):\n    if not numbers:\n        return 0.0\n    return sum(numbers) / len(numbers)\n",
                 "average", "assert average([2, 4]) == 3.0\nassert average([]) == 0.0\n", has_docstring),
    RefactorTask("docstring_clamp", "docstring", "docstring", "",
                 "def clamp(value, low, high):\n    return max(low, min(value, high))\n",
                 "clamp", "assert clamp(5, 0, 3) == 3\nassert clamp(-1, 0, 3) == 0\nassert clamp(2, 0, 3) == 2\n",
                 has_docstring),
    RefactorTask("hints_scale", "type_hints", "type_hints", "",
                 "def scale(values, factor):\n    return [v * factor for v in values]\n",
                 "scale", "assert scale([1, 2], 3) == [3, 6]\nassert scale([], 2) == []\n", fully_annotated),
    RefactorTask("hints_join", "type_hints", "type_hints", "",
                 "def join_words(words, sep):\n    return sep.join(w.strip() for w in words)\n",
                 "join_words", "assert join_words([' a', 'b '], '-') == 'a-b'\n", fully_annotated),
    RefactorTask("rename_total", "rename", "rewrite", "rename the variable t to total",
                 "def order_total(prices, qty):\n    t = 0\n    for p, q in zip(prices, qty):\n        t += p * q\n    return t\n",
                 "order_total", "assert order_total([2, 3], [1, 4]) == 14\nassert order_total([], []) == 0\n",
                 renamed("t", "total")),
    RefactorTask("comp_squares", "comprehension", "rewrite", "convert the for loop to a list comprehension",
                 "def even_squares(n):\n    out = []\n    for i in range(n):\n        if i % 2 == 0:\n"
                 "            out.append(i * i)\n    return out\n",
                 "even_squares", "assert even_squares(7) == [0, 4, 16, 36]\nassert even_squares(0) == []\n",
                 no_loop_with(ast.ListComp)),
    RefactorTask("comp_index", "comprehension", "rewrite", "convert the for loop to a dict comprehension",
                 "def index_by_id(records):\n    result = {}\n    for rec in records:\n        result[rec['id']] = rec['name']\n"
                 "    return result\n",
                 "index_by_id", "assert index_by_id([{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}]) == {1: 'a', 2: 'b'}\n"
                 "assert index_by_id([]) == {}\n", no_loop_with(ast.DictComp)),
    RefactorTask("constant_tax", "constant", "rewrite",
                 "extract the number 0.2 into a module-level constant TAX_RATE defined above the function",
                 "def price_with_tax(net):\n    return round(net * (1 + 0.2), 2)\n",
                 "price_with_tax", "assert price_with_tax(10) == 12.0\nassert price_with_tax(0) == 0\n",
                 constant_extracted("TAX_RATE", 0.2)),
    RefactorTask("fstring_greeting", "fstring", "rewrite", "use f-strings instead of % formatting",
                 "def greeting(name, count):\n    return 'Hello %s, you have %d new messages' % (name, count)\n",
                 "greeting", "assert greeting('Ann', 3) == 'Hello Ann, you have 3 new messages'\n", uses_fstrings),
    RefactorTask("validate_sqrt", "validation", "rewrite", "raise ValueError if n is negative",
                 "def int_sqrt(n):\n    r = 0\n    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r\n",
                 "int_sqrt", "assert int_sqrt(17) == 4\nassert int_sqrt(0) == 0\ntry:\n    int_sqrt(-4)\n"
                 "except ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError for -4')\n",
                 raises_value_error),
    RefactorTask("simplify_adult", "simplify", "rewrite", "simplify: return the condition directly, without if",
                 "def is_adult(age):\n    if age >= 18:\n        return True\n    else:\n        return False\n",
                 "is_adult", "assert is_adult(18) is True\nassert is_adult(17) is False\n", no_if_or_bool_literal),
    RefactorTask("enumerate_find", "enumerate", "rewrite", "use enumerate instead of range(len(...))",
                 "def first_negative(values):\n    for i in range(len(values)):\n        if values[i] < 0:\n"
                 "            return i\n    return -1\n",
                 "first_negative", "assert first_negative([3, -1, -2]) == 1\nassert first_negative([1]) == -1\n",
                 uses_enumerate),
)


# -- the checker ------------------------------------------------------------------------------------

def leftovers(source: str, new_source: str) -> str | None:
    """What a refactor must not leave in the file: the prompt's scaffold (`Original version:` /
    `Rewritten version`) or the original code commented out (a comment line, new in the file, that is
    one of the original's code lines)."""
    old_lines = {ln.strip() for ln in source.split("\n") if ln.strip()}
    new_comments = [ln.strip() for ln in new_source.split("\n") if ln.strip().startswith("#")
                    and ln.strip() not in old_lines]
    if any("Original version" in c or "Rewritten version" in c for c in new_comments):
        return "the refactor's scaffold is left in the file"
    commented = [c for c in new_comments if c.lstrip("#").strip() in old_lines]
    return f"the original is left commented out ({len(commented)} lines)" if commented else None


# the function's docstring examples, if it has any, must hold too (a docstring that shows a wrong call
# is not a right refactor)
_DOCTESTS = """
import doctest as _doctest
_runner = _doctest.DocTestRunner(verbose=False)
for _t in _doctest.DocTestFinder().find({f}, "{f}", globs=dict(globals())):
    _runner.run(_t, out=lambda s: None)
assert _runner.failures == 0, "the docstring's examples fail"
"""


def check(task: RefactorTask, new_source: str | None, timeout: float = 10.0) -> dict:
    """{"success", "behaviour", "change", "detail"} for the refactored module `new_source` (None: the
    answer was unusable, nothing applied)."""
    if new_source is None:
        return {"success": False, "behaviour": False, "change": False, "detail": "answer not usable"}
    try:
        tree = ast.parse(new_source)
    except SyntaxError as e:
        return {"success": False, "behaviour": False, "change": False, "detail": f"syntax error: {e.msg} (line {e.lineno})"}
    f = _func(tree, task.function)
    missing = "function gone" if f is None else task.change(tree, f)
    left = leftovers(task.source, new_source)
    if left:
        missing = "; ".join(x for x in (missing, left) if x)
    passed, detail = run_python(new_source + "\n\n" + task.tests + _DOCTESTS.format(f=task.function), timeout)
    return {"success": passed and missing is None, "behaviour": passed, "change": missing is None,
            "detail": "; ".join(x for x in ((None if passed else detail[-300:]), missing) if x) or "ok"}


def request(task: RefactorTask, max_tokens: int = 512):
    """(job, Generate) for `task`, the way lsp/actions.py asks the daemon."""
    from lsp import refactor
    from protocol import Generate
    at = task.cursor()
    job = refactor.build(task.action, task.source, "python", at, at, instruction=task.instruction,
                         max_tokens=max_tokens)
    path = f"/tmp/refactor_checks/{task.name}.py"
    msg = Generate(doc=Path(path).as_uri(), prefix=job.prefix, suffix=job.suffix, path=path, language="python",
                   mode="ar", max_tokens=job.max_tokens, max_lines=job.max_lines, stop=job.stop,
                   deadline_ms=600000, temperature=0.0, action=job.action, original=job.original,
                   instruction=job.instruction, scaffold=job.scaffold)
    return job, msg


def apply(task: RefactorTask, job, generated: str) -> str | None:
    new = job.finish(generated)
    return None if new is None else task.source[:job.start] + new + task.source[job.end:]


# -- running a model through a daemon ------------------------------------------------------------------

def model_path(name: str) -> Path:
    if name == "embedded":
        from engine.embedded_model import default_model
        p = default_model()
        if p is None:
            raise SystemExit("the embedded model is not installed")
        return p
    from registry.models import resolve
    return resolve(name)


class Daemon:
    """A `tricode daemon run` of its own (temporary XDG folders, CPU, `threads` threads)."""

    def __init__(self, model: Path, threads: int = 1):
        self.base = Path(tempfile.mkdtemp(prefix="trc", dir="/tmp"))  # short: sockets have a 107-byte limit
        self.sock = self.base / "run" / "tricode" / "daemon.sock"
        cfg = self.base / "cfg" / "tricode" / "config.toml"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(f'device = "cpu"\ncpu_threads = {threads}\nrefactor_deadline_ms = 600000\n'
                       'refactor_max_tokens = 1024\nextra_context = false\n')
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.base / "run"), XDG_CONFIG_HOME=str(self.base / "cfg"),
                   XDG_STATE_HOME=str(self.base / "state"), XDG_DATA_HOME=str(self.base / "data"))
        for k in ("TRICODE_SOCKET", "TRICODE_MODEL"):
            env.pop(k, None)
        self.err = open(self.base / "daemon.err", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(model)],
                                     env=env, cwd=REPO, stdout=self.err, stderr=self.err)

    def wait_ready(self, timeout: float = 600.0) -> dict:
        from protocol import Status
        from protocol.client import DaemonUnavailable, call
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("the daemon exited: " + (self.base / "daemon.err").read_text()[-2000:])
            try:
                st = call(Status(), socket_path=self.sock, timeout=5)[0]
                if st["state"] == "ready":
                    return st
                if st["state"] == "error":
                    raise RuntimeError(st.get("error"))
            except (DaemonUnavailable, OSError, TimeoutError):
                pass                    # not listening yet
            time.sleep(0.2)
        raise RuntimeError("the daemon did not become ready")

    def generate(self, msg) -> dict:
        from protocol.client import call
        return call(msg, socket_path=self.sock, timeout=900)[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.err.close()
        shutil.rmtree(self.base, ignore_errors=True)


def run_checks(model: str, tasks=TASKS, out: Path | None = None, threads: int = 1, log=print) -> dict:
    """Every task through a daemon serving `model`; the records (also written to `out`, JSON lines)
    and the summary."""
    path = model_path(model)
    d = Daemon(path, threads)
    records = []
    try:
        runner = d.wait_ready().get("runner")
        for t in tasks:
            job, msg = request(t)
            t0 = time.perf_counter()
            reply = d.generate(msg)
            secs = time.perf_counter() - t0
            if reply.get("type") != "result":
                rec = {"task": t.name, "kind": t.kind, "success": False, "behaviour": False, "change": False,
                       "detail": f"daemon error: {reply.get('code')}: {reply.get('message')}", "generated": None}
            else:
                new = apply(t, job, reply["text"])
                rec = {"task": t.name, "kind": t.kind, **check(t, new), "generated": reply["text"],
                       "refactored": new, "tokens": reply.get("tokens")}
            rec.update(model=model, runner=runner, seconds=round(secs, 2))
            records.append(rec)
            log(f"{t.name:18s} {'PASS' if rec['success'] else 'fail'}  {rec['detail'][:100]}  ({secs:.1f} s)")
            if out is not None:
                with open(out, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
    finally:
        d.close()
    return {"model": model, "runner": runner, "records": records, **summarize(records)}


def summarize(records) -> dict:
    kinds: dict[str, list[int]] = {}
    for r in records:
        k = kinds.setdefault(r["kind"], [0, 0])
        k[0] += bool(r["success"])
        k[1] += 1
    return {"success": sum(bool(r["success"]) for r in records), "total": len(records),
            "by_kind": {k: f"{a}/{b}" for k, (a, b) in kinds.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.refactor_checks", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="'embedded', a pulled model's name, or a path")
    ap.add_argument("--out", type=Path, help="JSON lines, one record per task (appended)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", help="comma-separated task names (default: all)")
    a = ap.parse_args(argv)
    tasks = TASKS
    if a.tasks:
        want = a.tasks.split(",")
        unknown = set(want) - {t.name for t in TASKS}
        if unknown:
            ap.error(f"unknown task(s) {', '.join(sorted(unknown))}; known: {', '.join(t.name for t in TASKS)}")
        tasks = tuple(t for t in TASKS if t.name in want)
    s = run_checks(a.model, tasks, a.out, a.threads)
    print(json.dumps({k: v for k, v in s.items() if k != "records"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
