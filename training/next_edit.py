"""Next-edit training samples: edit pairs made from the training corpus's own files, rendered in the
prompt the daemon's `next_edit` gives the embedded model (daemon/next_edit_prompt.py `model_prompt`, the
one home of that format), for the objective that mixes them into the FIM sample stream (training/fim.py
`build_samples(next_edit_share=...)`).

How an edit pair is made. A *kind* of edit that users repeat inside a file is found in a real file and
turned into SITES: lines whose text before and after the edit differ, the same change at each place.
Some kinds take the file as the text after the edit and make the text before it (the Python 2 cleanups:
the file's `super()` written `super(Class, self)`, its strings `u'...'`, `print(x)` as `print x`,
`except E as e` as `except E, e`); the others take the file as the text before and make the edit (a
function parameter renamed in its `def` and in the body's later uses; a keyword argument added at every
call of one function). From the sites, in file order:

    edit sample     the first 1-2 sites made one by one, each a history diff exactly as the LSP server's
                    edit history writes it (lsp/edit_history.py `make_edit`); the cursor at the first
                    non-blank character of the next site's line; the region the LSP sends (textkit/edits.py
                    `region_lines`: Copilot's 2 above / 5 below); the target = that region with the next
                    site's line made (one line, as the daemon answers: the first place, not all of them)
    no-edit sample  the same history, the cursor on a line whose region holds no site (NO_EDIT_GAP lines
                    away from each): the target is the region unchanged

A sample's ids: enc(prompt) enc(target) EOS, each part tokenized on its own as the daemon does (the
prompt ids, then the rewrite's; special-token strings stay text, training/tokenizer.py). In a packed row
every sample follows an EOS, which is the BOS the daemon puts before the prompt. A sample longer than
the row is dropped (counted), never cut.

Files of the packages the next-edit evaluation is made of (scripts/next_edit_eval.py RELEASES) never give
samples: EVAL_PACKAGES (a test checks the two lists agree).

What this module does not know: models, the training loop. Torch-free.
"""
from __future__ import annotations

import ast
import builtins
import io
import keyword
import random
import re
import tokenize
from dataclasses import dataclass

from daemon.next_edit_prompt import model_prompt
from lsp.edit_history import make_edit
from textkit.edits import region_lines

EVAL_PACKAGES = frozenset({"idna", "itsdangerous", "markupsafe", "chardet", "jinja2", "click", "jsonschema"})
KINDS = ("rename", "add_arg", "super", "u_prefix", "print", "except")
NO_EDIT_SHARE = 0.25          # of the samples of a file: places with no edit
NO_EDIT_GAP = 8               # a no-edit place is this many lines away from every site
MAX_LINE = 200                # sites on longer lines are skipped
HISTORY_MAX = 2               # history edits before the next place: 1 or 2
_NAME_SUFFIXES = ("_value", "_name", "_list", "_id", "_obj", "s", "_")
_BUILTINS = frozenset(dir(builtins))
_NEW_KWARGS = ("timeout", "encoding", "strict", "verbose", "context", "default", "flags", "name")


@dataclass(frozen=True)
class EditPair:
    kind: str
    before: list[str]        # the file's lines (with their newlines) before the edit ...
    after: list[str]         # ... and after it; they differ exactly at `sites`
    sites: list[int]


@dataclass(frozen=True)
class NextEditSample:
    kind: str                # the edit's kind, or "none:<kind>" for a no-edit place
    path: str
    text: str                # the document when the request is made (the history made)
    cursor: int
    region_start: int
    region_end: int
    history: list[str]       # the diffs, oldest first
    target: str              # the region after the next edit (== the region for a no-edit place)
    prompt: str              # model_prompt(...).text

    @property
    def region(self) -> str:
        return self.text[self.region_start:self.region_end]


def is_eval_file(key: str) -> bool:
    """Is this corpus key (`site/jinja2/ext.py`, `stdlib/json/decoder.py`) a file of an evaluated package?"""
    parts = key.split("/")[1:]            # vendored copies too (pip/_vendor/idna/...)
    return any(p.split(".")[0].lower() in EVAL_PACKAGES for p in parts)


# -- kinds of edits --------------------------------------------------------------------------------------

def _pair(kind: str, lines: list[str], changed: dict[int, str], file_is_after: bool) -> EditPair | None:
    """An EditPair from the lines of the file and the other version of some of them."""
    changed = {i: s for i, s in changed.items() if s != lines[i] and len(s) <= MAX_LINE and len(lines[i]) <= MAX_LINE}
    if len(changed) < 2:
        return None
    other = [changed.get(i, s) for i, s in enumerate(lines)]
    before, after = (other, lines) if file_is_after else (lines, other)
    return EditPair(kind, before, after, sorted(changed))


def _tree(text: str):
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _rename(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """A parameter of one function renamed in its `def` line and the body's later lines."""
    if tree is None:
        return None
    words = set(re.findall(r"[A-Za-z_]\w*", text))
    options = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
            continue
        for a in node.args.args + node.args.kwonlyargs:
            if a.arg in ("self", "cls") or len(a.arg) < 2 or a.lineno != node.lineno:
                continue
            pat = re.compile(rf"(?<![\w.]){re.escape(a.arg)}(?!\w)")
            uses = [i for i in range(node.lineno, node.end_lineno) if pat.search(lines[i])]
            if uses:
                options.append((node.lineno - 1, uses, a.arg, pat))
    if not options:
        return None
    first, uses, name, pat = rng.choice(options)
    new = next((n for n in (name + s for s in rng.sample(_NAME_SUFFIXES, len(_NAME_SUFFIXES))) if n not in words), None)
    if new is None or keyword.iskeyword(new):
        return None
    return _pair("rename", lines, {i: pat.sub(new, lines[i]) for i in [first] + uses}, file_is_after=False)


def _calls(line: str, name: str) -> list[tuple[int, int]]:
    """(open, close) paren offsets of the calls `name(...)` that close on this line."""
    out = []
    for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\(", line):
        depth, i = 0, m.end() - 1
        for j in range(i, len(line)):
            if line[j] in "([{":
                depth += 1
            elif line[j] in ")]}":
                depth -= 1
                if depth == 0:
                    out.append((i, j))
                    break
    return out


def _add_arg(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """A keyword argument added at every one-line call of one function."""
    if tree is None:
        return None
    counts: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.lineno == node.end_lineno:
            counts[node.func.id] = counts.get(node.func.id, 0) + 1
    names = sorted(n for n, c in counts.items() if c >= 3 and n not in _BUILTINS)
    if not names:
        return None
    name = rng.choice(names)
    kw = rng.choice([k for k in _NEW_KWARGS if k not in text] or ["option"])
    changed = {}
    for i, line in enumerate(lines):
        calls = _calls(line, name)
        if len(calls) != 1:
            continue
        o, c = calls[0]
        inner = line[o + 1:c]
        if "*" in inner or "\n" in inner:
            continue
        sep = ", " if inner.strip() else ""
        changed[i] = line[:c] + f"{sep}{kw}={kw}" + line[c:]
    return _pair("add_arg", lines, changed, file_is_after=False)


def _super(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """`super()` in a class's methods written `super(Class, self)` before the edit (a Python 2 cleanup)."""
    if tree is None:
        return None
    changed = {}
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.args.args:
                continue
            first = fn.args.args[0].arg
            for i in range(fn.lineno - 1, (fn.end_lineno or fn.lineno)):
                if "super()" in lines[i] and i not in changed:
                    changed[i] = lines[i].replace("super()", f"super({cls.name}, {first})")
    return _pair("super", lines, changed, file_is_after=True)


def _u_prefix(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """The file's plain one-line string literals written `u'...'` before the edit."""
    changed: dict[int, str] = {}
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    by_line: dict[int, list[int]] = {}
    for t in toks:
        if t.type == tokenize.STRING and t.start[0] == t.end[0] and t.string[0] in "'\"":
            by_line.setdefault(t.start[0] - 1, []).append(t.start[1])
    for i, cols in by_line.items():
        if i < len(lines) and not lines[i].lstrip().startswith(('"""', "'''")):
            line = lines[i]
            for c in sorted(cols, reverse=True):
                line = line[:c] + "u" + line[c:]
            changed[i] = line
    return _pair("u_prefix", lines, changed, file_is_after=True)


_PRINT = re.compile(r"^(\s*)print\((.*)\)(\s*(?:#.*)?)$")


def _print(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """`print(x)` written as Python 2's `print x` before the edit (no keyword arguments)."""
    changed = {}
    for i, line in enumerate(lines):
        body = line.rstrip("\n")
        m = _PRINT.match(body)
        if not m or "=" in m.group(2) or not m.group(2).strip():
            continue
        ind = len(m.group(1))
        if _calls(body, "print") != [(ind + 5, ind + 6 + len(m.group(2)))]:   # one call, the whole statement
            continue
        changed[i] = f"{m.group(1)}print {m.group(2)}{m.group(3)}" + line[len(body):]
    return _pair("print", lines, changed, file_is_after=True)


_EXCEPT = re.compile(r"^(\s*except\s+)([\w.]+|\([^()]*\)) as (\w+):")


def _except(lines: list[str], text: str, tree, rng: random.Random) -> EditPair | None:
    """`except E as e:` written as Python 2's `except E, e:` before the edit."""
    changed = {i: _EXCEPT.sub(r"\1\2, \3:", line) for i, line in enumerate(lines) if _EXCEPT.match(line)}
    return _pair("except", lines, changed, file_is_after=True)


_MAKERS = {"rename": _rename, "add_arg": _add_arg, "super": _super, "u_prefix": _u_prefix, "print": _print,
           "except": _except}


def edit_pairs(text: str, rng: random.Random, kinds=KINDS) -> list[EditPair]:
    """Every kind of edit this file allows (one pair per kind)."""
    lines = text.splitlines(keepends=True)
    if not lines or not lines[-1].endswith("\n"):
        return []          # a last line without a newline: keep the region rule simple
    tree = _tree(text)
    out = []
    for k in kinds:
        p = _MAKERS[k](lines, text, tree, rng)
        if p is not None:
            out.append(p)
    return out


# -- samples ---------------------------------------------------------------------------------------------

def _uri(path: str) -> str:
    return "file:///" + path.lstrip("/")


def _diff(path: str, before: str, after: str) -> str:
    # as the evaluation's cases write them (scripts/next_edit_eval.py): the path relative, `a/` + path
    return make_edit(_uri(path), before, after).diff.replace("a//", "a/").replace("b//", "b/")


def _offset(lines: list[str], i: int) -> int:
    return sum(len(s) for s in lines[:i])


def samples_from_pair(pair: EditPair, path: str, rng: random.Random, no_edit: bool = False) -> NextEditSample | None:
    """One sample of `pair`: an edit at the next site after 1-2 made ones, or (`no_edit`) a place with none."""
    k = rng.randint(1, min(HISTORY_MAX, len(pair.sites) - 1))
    start = rng.randrange(0, len(pair.sites) - k)          # the history: sites[start:start+k]
    cur = list(pair.before)
    history = []
    for i in pair.sites[start:start + k]:
        nxt = cur[:i] + [pair.after[i]] + cur[i + 1:]
        history.append(_diff(path, "".join(cur), "".join(nxt)))
        cur = nxt
    text = "".join(cur)
    if no_edit:
        far = [i for i in range(len(cur)) if cur[i].strip()
               and all(abs(i - s) >= NO_EDIT_GAP for s in pair.sites)]
        if not far:
            return None
        line = rng.choice(far)
    else:
        line = pair.sites[start + k]
    cursor = _offset(cur, line) + len(cur[line]) - len(cur[line].lstrip())
    a, b = region_lines(text, cursor)
    region = text[a:b]
    if no_edit:
        target = region
    else:
        ls = _offset(cur, line)
        target = text[a:ls] + pair.after[line] + text[ls + len(cur[line]):b]
    p = model_prompt(path=path, text=text, cursor=cursor, region_start=a, region_end=b, history=history)
    return NextEditSample(("none:" if no_edit else "") + pair.kind, path, text, cursor, a, b, history, target, p.text)


def file_samples(key: str, text: str, n: int, rng: random.Random) -> list[NextEditSample]:
    """Up to `n` samples from one corpus file (none from an evaluated package's file)."""
    if n <= 0 or is_eval_file(key):
        return []
    pairs = edit_pairs(text, rng)
    if not pairs:
        return []
    path = key.split("/", 1)[1] if "/" in key else key
    out = []
    for _ in range(n):
        s = samples_from_pair(rng.choice(pairs), path, rng, no_edit=rng.random() < NO_EDIT_SHARE)
        if s is not None:
            out.append(s)
    return out


def sample_pieces(s: NextEditSample) -> tuple[str, str]:
    """The two texts a sample's ids are made of, each tokenized on its own: the prompt and the target."""
    return s.prompt, s.target
