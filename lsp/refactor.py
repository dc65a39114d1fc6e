"""Refactor commands as fill-in-the-middle prompts for a code-completion model (not instruction tuned).

Each action becomes a `RefactorEdit`: a prefix and a suffix for the daemon (`generate`, AR, refactor priority),
stop strings and budgets, the document span the result replaces, and `finish()`, which turns the
generated middle into the replacement text (or None when the output is unusable: nothing is applied).

    docstring      prefix = code through the `def` line + newline + indent + '\"\"\"'; suffix starts with
                   the closing '\"\"\"' and the body; generated until '\"\"\"'  (C-like: a /** */ comment)
    type_hints     prefix = code through `def name(`; suffix = the header's ':' and the body; the middle
                   is the annotated parameter list and return type; the parameter names must not change
    rewrite        prefix = code before the selection + a comment holding the original (commented out)
                   and the instruction; suffix = code after the selection; the middle replaces it.
                   The job also carries the original, the instruction and the scaffold's length: a
                   daemon serving a chat model asks it directly (daemon/prompt/chat.py rewrite_messages)
                   and gets the whole code back, which finish() re-indents
    complete_body  prefix = code through the header (and docstring) + body indentation; suffix = code
                   after the function; the middle is the body (placeholders such as `pass` replaced)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from lsp.context import indent_width, leading_ws, split_lines
from lsp.languages import family, line_comment, scan_code, strip_comment

ACTIONS = {
    "docstring": "Add docstring",
    "type_hints": "Add type hints",
    "rewrite": "Rewrite selection as instructed",
    "complete_body": "Complete this function body",
}
DOC_COMMENT_LANGS = {"javascript", "javascriptreact", "typescript", "typescriptreact", "java", "c", "cpp",
                     "csharp", "php", "kotlin", "scala", "swift", "dart", "go", "rust", "objective-c"}

_PY_DEF = re.compile(r"^([ \t]*)(async[ \t]+def|def|class)[ \t]+([A-Za-z_]\w*)")
_BRACE_CONTROL = re.compile(r"^\s*(}\s*)?(if|for|while|switch|catch|else|do|try|return|with|using|lock)\b")
_PLACEHOLDER = re.compile(r"^\s*(pass|\.\.\.|raise\s+NotImplementedError(\(.*\))?|#\s*TODO.*|//\s*TODO.*)\s*$")


class RefactorError(Exception):
    """The action does not apply here (shown to the user)."""


@dataclass
class RefactorEdit:
    action: str
    title: str
    prefix: str
    suffix: str
    start: int                  # the replaced span of the document text (offsets)
    end: int
    max_lines: int = 0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    finisher: Callable[[str], str | None] = field(default=lambda g: g, repr=False)
    original: str = ""          # rewrite: the replaced code, the instruction, and how many characters
    instruction: str = ""       # at the end of `prefix` are the FIM scaffold (protocol Generate)
    scaffold: int = 0

    def finish(self, generated: str) -> str | None:
        generated = generated.replace("\r\n", "\n").replace("\r", "\n")
        return self.finisher(generated)


# -- finding functions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Func:
    kind: str                   # "def" | "class" | "function" (brace languages)
    name: str
    start: int                  # offset of the header line's start
    header_end: int             # offset just after the header (after ':' or '{')
    header_line_end: int        # offset of the end of the header's last line (before its newline)
    body_start: int             # offset of the first body line's start (== end when the body is empty)
    end: int                    # offset of the end of the body's last line (before its newline)
    indent: str                 # the header's indentation
    body_indent: str            # the body's indentation (guessed when the body is empty)
    params_open: int = -1       # offset of "(" of the parameter list (def)


class _Lines:
    def __init__(self, text: str):
        self.text = text
        self.lines = split_lines(text)
        self.starts = []
        pos = 0
        for m in re.finditer(r"\r\n|\r|\n", text):
            self.starts.append(pos)
            pos = m.end()
        self.starts.append(pos)

    def line_of(self, offset: int) -> int:
        import bisect
        return max(0, bisect.bisect_right(self.starts, offset) - 1)

    def end_of(self, i: int) -> int:
        return self.starts[i] + len(self.lines[i])


def _indent_unit(text: str) -> str:
    return "\t" if re.search(r"^\t", text, re.M) and not re.search(r"^    ", text, re.M) else "    "


def find_function(text: str, offset: int, language: str, kinds=("def", "class")) -> Func | None:
    """The innermost function (or class) whose header or body contains `offset`."""
    fam = family(language)
    if fam == "indent":
        return _find_python(text, offset, kinds)
    if fam == "brace":
        return _find_brace(text, offset)
    return None


def _find_python(text: str, offset: int, kinds) -> Func | None:
    L = _Lines(text)
    target = L.line_of(offset)
    for i in range(target, -1, -1):
        m = _PY_DEF.match(L.lines[i])
        if not m:
            continue
        kind = "class" if m.group(2) == "class" else "def"
        if kind not in kinds:
            continue
        f = _python_span(L, i, m, kind)
        if f is not None and f.start <= offset <= max(f.end, f.header_line_end):
            return f
    return None


def _python_span(L: _Lines, i: int, m, kind: str) -> Func | None:
    indent = m.group(1)
    own = indent_width(indent)
    # the header runs until the brackets balance and the code ends with ':'
    depth = 0
    j = i
    header_end = -1
    while j < len(L.lines):
        code = strip_comment(L.lines[j], "python")
        for k, c in enumerate(code):
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth -= 1
            elif c == ":" and depth == 0 and not code[k + 1:].strip().startswith("="):
                # the first top-level ':' ends the header (a one-line body may follow)
                header_end = L.starts[j] + k + 1
                break
        if header_end >= 0:
            break
        j += 1
    if header_end < 0:
        return None
    params_open = -1
    if kind == "def":
        p = L.text.find("(", L.starts[i] + m.end(3))
        params_open = p if 0 <= p < header_end else -1
    header_line = j
    rest_of_header_line = L.text[header_end:L.end_of(j)]
    body_indent = None
    last = header_line
    if strip_comment(rest_of_header_line, "python").strip():
        return None                                     # one-line body: nothing to refactor here
    k = header_line + 1
    while k < len(L.lines):
        line = L.lines[k]
        if line.strip():
            if indent_width(line) <= own:
                break
            if body_indent is None:
                body_indent = leading_ws(line)
            last = k
        k += 1
    if body_indent is None:
        body_indent = indent + _indent_unit(L.text)
    body_start = L.starts[header_line + 1] if header_line + 1 < len(L.starts) and last > header_line else L.end_of(header_line)
    return Func(kind=kind, name=m.group(3), start=L.starts[i], header_end=header_end,
                header_line_end=L.end_of(header_line), body_start=body_start, end=L.end_of(last),
                indent=indent, body_indent=body_indent, params_open=params_open)


def _find_brace(text: str, offset: int) -> Func | None:
    L = _Lines(text)
    target = L.line_of(offset)
    for i in range(target, -1, -1):
        line = L.lines[i]
        code = strip_comment(line, "c").rstrip()
        if not code.endswith("{") or "(" not in code or _BRACE_CONTROL.match(code):
            continue
        open_at = L.starts[i] + len(code) - 1
        close_at = _match_brace(text, open_at)
        if close_at < 0:
            continue
        if not (L.starts[i] <= offset <= close_at + 1):
            continue
        name_m = re.search(r"([A-Za-z_$][\w$]*)\s*\([^()]*\)?[^()]*$", code[: code.rfind("(") + 1] + ")")
        indent = leading_ws(line)
        close_line = L.line_of(close_at)
        body_indent = None
        for k in range(i + 1, close_line):
            if L.lines[k].strip():
                body_indent = leading_ws(L.lines[k])
                break
        if body_indent is None:
            body_indent = indent + _indent_unit(text)
        last = close_line - 1 if close_line > i else i
        end = L.end_of(last) if last > i else open_at + 1
        return Func(kind="function", name=name_m.group(1) if name_m else "", start=L.starts[i],
                    header_end=open_at + 1, header_line_end=L.end_of(i),
                    body_start=L.starts[i + 1] if i + 1 < len(L.starts) and close_line > i else open_at + 1,
                    end=end, indent=indent, body_indent=body_indent,
                    params_open=L.starts[i] + code.find("("))
    return None


def _match_brace(text: str, open_at: int) -> int:
    depth = 0
    for i, _ in scan_code(text, open_at):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


# -- which actions apply -------------------------------------------------------------------------------

def has_docstring(text: str, f: Func) -> bool:
    body = text[f.body_start:f.end].lstrip()
    return bool(re.match(r"[rRbBuU]?('''|\"\"\"|'|\")", body))


def has_doc_comment(text: str, f: Func) -> bool:
    before = text[:f.start].rstrip()
    return before.endswith("*/") or before.split("\n")[-1].lstrip().startswith("///")


def needs_type_hints(text: str, f: Func) -> bool:
    if f.kind != "def" or f.params_open < 0:
        return False
    header = text[f.params_open:f.header_end]
    params, ret = _split_signature(header[1:-1])
    if params is None:
        return False
    missing = [p for p in _param_items(params) if _param_name(p) not in ("self", "cls", "") and ":" not in p.split("=")[0]]
    return bool(missing) or ret is None


def available(text: str, language: str, start: int, end: int) -> list[str]:
    """The actions that apply to the selection start..end (offsets); cheap, used to list them."""
    fam = family(language)
    out = []
    f = find_function(text, start, language) if fam in ("indent", "brace") else None
    fdef = find_function(text, start, language, kinds=("def",)) if fam == "indent" else f
    if f is not None:
        if fam == "indent" and not has_docstring(text, f):
            out.append("docstring")
        elif fam == "brace" and language in DOC_COMMENT_LANGS and not has_doc_comment(text, f):
            out.append("docstring")
    if fam == "indent" and fdef is not None and needs_type_hints(text, fdef):
        out.append("type_hints")
    if end > start or fdef is not None:
        out.append("rewrite")
    if fdef is not None:
        out.append("complete_body")
    return out


# -- the jobs ------------------------------------------------------------------------------------------

def build(action: str, text: str, language: str, start: int, end: int, *, instruction: str = "",
          max_tokens: int = 512) -> RefactorEdit:
    """The job for `action` on the selection start..end of `text`. Raises RefactorError."""
    if action not in ACTIONS:
        raise RefactorError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
    fam = family(language)
    if action == "rewrite":
        return _rewrite(text, language, start, end, instruction, max_tokens)
    kinds = ("def", "class") if action == "docstring" else ("def",)
    f = find_function(text, start, language, kinds=kinds) if fam in ("indent", "brace") else None
    if f is None:
        raise RefactorError(f"{ACTIONS[action]}: no function at the cursor")
    if action == "docstring":
        return _docstring(text, language, f, max_tokens) if fam == "indent" else _doc_comment(text, language, f, max_tokens)
    if action == "type_hints":
        if fam != "indent":
            raise RefactorError("Add type hints: Python only")
        return _type_hints(text, f, max_tokens)
    return _complete_body(text, language, f, max_tokens)


def _docstring(text: str, language: str, f: Func, max_tokens: int) -> RefactorEdit:
    if has_docstring(text, f):
        raise RefactorError(f"{f.name} already has a docstring")
    ind = f.body_indent
    insert_at = f.body_start if f.body_start > f.header_line_end else f.header_line_end
    prefix = text[:f.header_line_end] + "\n" + ind + '"""'
    if f.body_start > f.header_line_end:
        suffix = '"""\n' + text[f.body_start:]
    else:
        suffix = '"""' + text[f.header_line_end:]

    def finish(g: str) -> str | None:
        body = g.split('"""')[0].rstrip()
        if not body.strip():
            return None
        lines = [ln.rstrip() for ln in body.split("\n")]
        if len(lines) == 1:
            doc = ind + '"""' + lines[0].strip() + '"""'
        else:
            first = lines[0].strip()
            rest = _reindent(lines[1:], ind)
            doc = ind + '"""' + first + "\n" + "\n".join(rest) + "\n" + ind + '"""'
        if f.body_start > f.header_line_end:
            return doc + "\n"
        return "\n" + doc
    return RefactorEdit("docstring", ACTIONS["docstring"], prefix, suffix, insert_at, insert_at, max_lines=16,
               max_tokens=min(max_tokens, 256), stop=('"""',), finisher=finish)


def _doc_comment(text: str, language: str, f: Func, max_tokens: int) -> RefactorEdit:
    if has_doc_comment(text, f):
        raise RefactorError(f"{f.name} already has a doc comment")
    ind = f.indent
    prefix = text[:f.start] + ind + "/**\n" + ind + " * "
    suffix = "\n" + ind + " */\n" + text[f.start:]

    def finish(g: str) -> str | None:
        body = g.split("*/")[0]
        lines = [re.sub(r"^\s*\*?\s?", "", ln).rstrip() for ln in body.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not any(lines):
            return None
        return ind + "/**\n" + "".join(ind + " * " + ln + "\n" if ln else ind + " *\n" for ln in lines) + ind + " */\n"
    return RefactorEdit("docstring", "Add doc comment", prefix, suffix, f.start, f.start, max_lines=16,
               max_tokens=min(max_tokens, 256), stop=("*/",), finisher=finish)


def _type_hints(text: str, f: Func, max_tokens: int) -> RefactorEdit:
    if f.params_open < 0:
        raise RefactorError("Add type hints: no parameter list found")
    colon = f.header_end - 1
    old = text[f.params_open + 1:colon]          # "a, b) -> int" (everything between '(' and ':')
    old_params, _ = _split_signature(old)
    if old_params is None:
        raise RefactorError("Add type hints: cannot read the signature")
    names = [_param_name(p) for p in _param_items(old_params)]
    prefix = text[:f.params_open + 1]
    suffix = text[colon:]

    def finish(g: str) -> str | None:
        g = g.split("\n")[0].rstrip()
        if g.endswith(":"):
            g = g[:-1].rstrip()
        params, ret = _split_signature(g)
        if params is None:
            return None
        new_names = [_param_name(p) for p in _param_items(params)]
        if new_names != names:
            return None                                  # the model changed the parameters
        new = g[: len(params)] + ")" + (f" -> {ret}" if ret else "")
        if _norm(new) == _norm(old):
            return None
        return new
    return RefactorEdit("type_hints", ACTIONS["type_hints"], prefix, suffix, f.params_open + 1, colon, max_lines=1,
               max_tokens=min(max_tokens, 160), stop=("\n",), finisher=finish)


def _rewrite(text: str, language: str, start: int, end: int, instruction: str, max_tokens: int) -> RefactorEdit:
    instruction = " ".join((instruction or "").split())
    if not instruction:
        raise RefactorError("Rewrite selection as instructed: needs an instruction "
                            "(workspace/executeCommand tricode.refactor with {\"instruction\": ...})")
    L = _Lines(text)
    if end <= start:
        f = find_function(text, start, language, kinds=("def", "class") if family(language) == "indent" else ("def",))
        if f is None:
            raise RefactorError("Rewrite selection as instructed: select the code to rewrite")
        start, end = f.start, f.end
    first = L.line_of(start)
    last = L.line_of(end)
    if end == L.starts[last] and last > first:       # a selection ending at a line start ends before it
        last -= 1
    s, e = L.starts[first], L.end_of(last)
    original = text[s:e]
    lines = original.split("\n") if "\r" not in original else split_lines(original)
    ind = leading_ws(lines[0])
    c = line_comment(language)
    hint = "".join(f"{ind}{c} {ln[len(ind):] if ln.startswith(ind) else ln.lstrip()}\n" for ln in lines)
    scaffold = f"{ind}{c} Original version:\n" + hint + f"{ind}{c} Rewritten version ({instruction}):\n"
    prefix = text[:s] + scaffold
    suffix = text[e:]
    below = next((ln for ln in split_lines(suffix)[1:] if ln.strip()), None)

    def finish(g: str) -> str | None:
        out = g.split("\n")
        # an instruct model replies with the whole code, which may not keep the original's indentation
        out = _shift(out, ind)
        # the model may echo the comment scaffold: drop leading comment lines
        while out and out[0].strip().startswith(c) and ("version" in out[0].lower() or not out[0].strip()[len(c):].strip()):
            out.pop(0)
        if below is not None:
            for i, ln in enumerate(out):
                if i > 0 and ln.strip() == below.strip():
                    out = out[:i]
                    break
        while out and not out[-1].strip():
            out.pop()
        result = "\n".join(ln.rstrip() for ln in out)
        if not result.strip() or result.strip() == original.strip():
            return None
        if all(not ln.strip() or ln.strip().startswith(c) for ln in out):
            return None  # only comments (the scaffold echoed back): replacing code with it loses the code
        return result
    n = len(lines)
    return RefactorEdit("rewrite", ACTIONS["rewrite"], prefix, suffix, s, e, max_lines=2 * n + 8,
               max_tokens=max_tokens, finisher=finish, original=original, instruction=instruction,
               scaffold=len(scaffold))


def _shift(lines: list[str], ind: str) -> list[str]:
    """`lines` moved so that the first non-blank one starts with `ind` (the others keep their place
    relative to it); unchanged when it does already, or when a line would lose non-blank text."""
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None or leading_ws(first) == ind:
        return lines
    have = leading_ws(first)
    if any(ln.strip() and not ln.startswith(have) for ln in lines):
        return lines
    return [ind + ln[len(have):] if ln.strip() else ln for ln in lines]


def _complete_body(text: str, language: str, f: Func, max_tokens: int) -> RefactorEdit:
    ind = f.body_indent
    fam = family(language)
    L = _Lines(text)
    if fam == "indent":
        # keep a docstring; replace placeholder lines (pass, ..., raise NotImplementedError, # TODO)
        keep_end = f.header_line_end
        if has_docstring(text, f):
            keep_end = _docstring_end(text, f)
        body = text[keep_end:f.end]
        body_lines = [ln for ln in body.split("\n") if ln.strip()]
        if all(_PLACEHOLDER.match(ln) for ln in body_lines):
            start, end = keep_end, f.end
        else:
            start = end = f.end                           # a partial body: continue it
        return _body_job(text, start, end, ind, max_tokens, closer=None)
    # brace languages: fill before the closing brace
    if text[f.header_end:f.header_line_end].strip().startswith("}"):
        raise RefactorError("Complete this function body: put the closing brace on its own line first")
    close_line = L.line_of(f.end) + 1 if f.end > f.header_end else L.line_of(f.header_end)
    if close_line >= len(L.lines):
        raise RefactorError("Complete this function body: cannot find the closing brace")
    body = text[f.header_end:f.end] if f.end > f.header_end else ""
    body_lines = [ln for ln in body.split("\n") if ln.strip()]
    if body_lines and all(_PLACEHOLDER.match(ln) for ln in body_lines):
        start, end = f.header_line_end, f.end
    else:
        start = end = f.end if f.end > f.header_end else f.header_line_end
    return _body_job(text, start, end, ind, max_tokens, closer="}")


def _body_job(text: str, start: int, end: int, ind: str, max_tokens: int, closer: str | None) -> RefactorEdit:
    """The complete_body job that generates text[start:end] anew on a fresh line indented `ind`. Its
    finish() keeps the generated lines that stay in the body (none indented less than `ind`), without
    trailing blank lines; None when that is empty or starts with the `closer` line (an empty body)."""
    block = indent_width(ind)

    def finish(g: str) -> str | None:
        lines = g.split("\n")
        kept = [lines[0]]
        for ln in lines[1:]:
            if ln.strip() and indent_width(ln) < block:
                break
            kept.append(ln)
        while kept and not kept[-1].strip():
            kept.pop()
        if not kept or not "".join(kept).strip() or (closer is not None and kept[0].strip() == closer):
            return None
        return "\n" + ind + "\n".join(ln.rstrip() for ln in kept).lstrip(" \t")
    return RefactorEdit("complete_body", ACTIONS["complete_body"], text[:start] + "\n" + ind, text[end:], start, end,
               max_lines=40, max_tokens=max_tokens, finisher=finish)


# -- helpers -------------------------------------------------------------------------------------------

def _docstring_end(text: str, f: Func) -> int:
    body = text[f.body_start:f.end]
    stripped = body.lstrip()
    lead = len(body) - len(stripped)
    m = re.match(r"[rRbBuU]?('''|\"\"\"|'|\")", stripped)
    if not m:
        return f.header_line_end
    q = m.group(1)
    close = stripped.find(q, m.end())
    if close < 0:
        return f.header_line_end
    return f.body_start + lead + close + len(q)


def _reindent(lines: list[str], ind: str) -> list[str]:
    nonblank = [ln for ln in lines if ln.strip()]
    if not nonblank:
        return ["" for _ in lines]
    common = min(indent_width(ln) for ln in nonblank)
    out = []
    for ln in lines:
        if not ln.strip():
            out.append("")
            continue
        w = indent_width(ln)
        out.append(ind + " " * max(0, w - common) + ln.lstrip())
    return out


def _brackets(s: str) -> Iterator[tuple[int, str, int]]:
    """Yield (i, c, depth) for each character of s outside '...' and "..." strings (the opening quote
    included; no escapes), depth the bracket nesting before c (it goes negative past unmatched closers)."""
    depth = 0
    quote = None
    for i, c in enumerate(s):
        if quote:
            if c == quote:
                quote = None
            continue
        yield i, c, depth
        if c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1


def _split_signature(s: str) -> tuple[str | None, str | None]:
    """'a, b: int = 1) -> str' -> ('a, b: int = 1', 'str'); (None, None) when unbalanced."""
    for i, c, depth in _brackets(s):
        if c in ")]}" and depth == 0:
            if c != ")":
                return None, None
            rest = s[i + 1:].strip()
            if not rest:
                return s[:i], None
            if rest.startswith("->"):
                ret = rest[2:].strip()
                return (s[:i], ret) if ret else (None, None)
            return None, None
    return None, None


def _param_items(params: str) -> list[str]:
    cuts = [i for i, c, depth in _brackets(params) if c == "," and depth == 0]
    items = [params[a + 1:b] for a, b in zip([-1] + cuts, cuts + [len(params)])]
    return [p for p in (" ".join(i.split()) for i in items) if p]


def _param_name(p: str) -> str:
    m = re.match(r"\s*(\*{0,2})\s*([A-Za-z_]\w*)?", p)
    if not m:
        return p.strip()
    return (m.group(1) or "") + (m.group(2) or "")


def _norm(s: str) -> str:
    return "".join(s.split())
