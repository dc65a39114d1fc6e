"""Unit tests of the language server's text logic (no daemon, no LSP transport): positions and
encodings, settings, gating, .gitignore, the single/multi-line decision, post-processing, the cache,
the scheduler, and the refactor prompt builders, on real code snippets."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textkit.gitignore import IgnoreMatcher
from lsp import gating, multiline, postprocess, refactor
from lsp.cache import CompletionCache
from lsp.context import Context
from lsp.documents import UTF8, UTF16, UTF32, Document, DocumentStore, units
from lsp.scheduler import Scheduler
from lsp.settings import Settings

REPO = Path(__file__).resolve().parent.parent
S = Settings()


def at(src: str, language: str = "python") -> Context:
    """A context from a snippet with one "|" marking the cursor."""
    i = src.index("|")
    return Context.from_text(src.replace("|", "", 1), i, language=language)


def run(raw: str, src: str, language: str = "python", settings: Settings = S, **kw) -> postprocess.Suggestion:
    ctx = at(src, language)
    return postprocess.process(raw, ctx, multiline.plan(ctx, settings), **kw)


def apply(src: str, sug: postprocess.Suggestion) -> str:
    i = src.index("|")
    text = src.replace("|", "", 1)
    return text[:i] + sug.text + text[i + sug.replace:]


# -- imports and start-up ----------------------------------------------------------------------------------

def test_server_module_imports_no_torch_and_fast():
    code = ("import sys, time; t = time.perf_counter(); import lsp.server, lsp.command; "
            "print(time.perf_counter() - t); print('torch' in sys.modules, 'engine' in sys.modules, "
            "'training' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, flags = out.stdout.split("\n")[:2]
    assert flags == "False False False False"
    # A loose bound that only catches a heavy import creeping in (torch alone takes several seconds);
    # the start-up time itself is a benchmark (docs/benchmarks.md), not a timed test.
    assert float(seconds) < 5.0, seconds


def test_cli_parser_build_stays_torch_free():
    code = ("import sys; from tricode.cli import build_parser; p = build_parser(); "
            "a = p.parse_args(['lsp', '--model', '/m', '--socket', '/s']); print(a.func.__module__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lsp.command", "False"]


# -- documents and position encodings -----------------------------------------------------------------------

LINE = 'x = "😀中文" + y'      # the emoji is 2 UTF-16 units and 4 UTF-8 bytes; each CJK char 1 unit / 3 bytes


@pytest.mark.parametrize("encoding,col_y", [(UTF16, 13), (UTF8, 19), (UTF32, 12)])
def test_positions_in_each_encoding(encoding, col_y):
    doc = Document("file:///a.py", "first\n" + LINE + "\nlast", encoding=encoding)
    y = doc.text.index("y")
    assert doc.position_at(y) == (1, col_y)
    assert doc.offset_at(1, col_y) == y
    assert units(LINE[:LINE.index("y")], encoding) == col_y
    # past the end of a line clamps to the line end, past the last line to the document end
    assert doc.offset_at(1, 999) == doc.text.index("\nlast")
    assert doc.offset_at(9, 0) == len(doc.text)


def test_utf16_column_inside_a_surrogate_pair_rounds_to_the_character_end():
    doc = Document("file:///a.py", "a😀b", encoding=UTF16)
    assert doc.offset_at(0, 2) == 2           # between the two halves of the emoji -> after it
    assert doc.position_at(2) == (0, 3)


def test_incremental_edits_with_non_ascii_and_crlf():
    store = DocumentStore(UTF16)
    store.open("file:///a.py", "a = '😀'\r\nb = 中\r\n", 1, "python")

    class R:
        def __init__(self, sl, sc, el, ec):
            self.start = type("P", (), {"line": sl, "character": sc})()
            self.end = type("P", (), {"line": el, "character": ec})()

    class C:
        def __init__(self, text, rng=None):
            self.text, self.range = text, rng

    # insert after the emoji (UTF-16 column 7), replace the CJK char, then a full sync
    doc = store.change("file:///a.py", 2, [C("!", R(0, 7, 0, 7)), C("文字", R(1, 4, 1, 5))])
    assert doc.text == "a = '😀!'\r\nb = 文字\r\n"
    assert doc.version == 2
    assert doc.line_text(1) == "b = 文字" and doc.eol() == "\r\n"
    doc = store.change("file:///a.py", 3, [C("new\n")])
    assert doc.text == "new\n" and doc.line_count() == 2


def test_only_lsp_line_endings_split_lines():
    doc = Document("file:///a.py", "a\x0cb\u2028c\nd")
    assert doc.line_count() == 2
    assert doc.offset_at(1, 0) == doc.text.index("d")


# -- settings ------------------------------------------------------------------------------------------------

def test_settings_merge_flat_nested_and_bad_values():
    s = Settings().merged({"tricode": {"max_lines": 3, "disabled_languages": ["markdown"], "inline_mode": "ar"}})
    assert (s.max_lines, s.disabled_languages, s.inline_mode) == (3, ("markdown",), "ar")
    s2 = s.merged({"max_tokens": "many", "inline_mode": "fast", "nope": 1, "enabled": False, "debounce_ms": 0})
    assert s2.max_tokens == s.max_tokens and s2.inline_mode == "ar"     # bad values ignored
    assert s2.enabled is False and s2.debounce_ms == 0
    assert Settings().merged(None) == Settings()


# -- gating --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,blocked", [
    ("def f(|):", False),                 # only closing punctuation after the cursor
    ("x = foo(|)\n", False),
    ("x = '|'", False),
    ("value = compu|te(x)", True),        # middle of a word
    ("|value = 1", True),                 # start of a word
    ("x = |y + 1", True),
    ("if x and |foo:", True),
    ("return (|a, b)", True),             # text after the cursor
    ("print(x)|   ", False),
])
def test_cursor_gate(src, blocked):
    assert (gating.cursor_gate(at(src)) is not None) == blocked


def test_document_gate_size_binary_language_and_disabled():
    doc = Document("file:///x/a.py", "print(1)\n", language="python")
    assert gating.document_gate(doc, S) is None
    assert "disabled" in gating.document_gate(doc, S.merged({"enabled": False}))
    assert "python" in gating.document_gate(doc, S.merged({"disabled_languages": ["Python"]}))
    assert "bytes" in gating.document_gate(doc, S.merged({"max_file_bytes": 5}))
    big = Document("file:///x/b.py", "é" * 600, language="python")   # 600 chars, 1200 bytes
    assert "bytes" in gating.document_gate(big, S.merged({"max_file_bytes": 1000}))
    assert gating.document_gate(Document("file:///x/c.bin", "ab\x00cd"), S) == "binary file"


def test_gitignore_rules(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("*.log\nbuild/\n/dist\n!keep.log\ndocs/**/gen_*.py\n# comment\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / ".gitignore").write_text("local_*.py\n")
    m = IgnoreMatcher()
    ok = ["src/app.py", "keep.log", "src/dist/x.py", "docs/real.py"]
    ignored = ["debug.log", "src/deep/trace.log", "build/out.py", "src/build/x.py", "dist/x.py",
               "docs/a/b/gen_api.py", "src/local_conf.py", ".git/config"]
    for p in ok:
        assert not m.is_ignored(str(tmp_path / p)), p
    for p in ignored:
        assert m.is_ignored(str(tmp_path / p)), p
    doc = Document((tmp_path / "debug.log").as_uri(), "x = 1\n", language="python")
    assert gating.document_gate(doc, S, m) == "ignored by .gitignore"
    assert gating.document_gate(doc, S.merged({"respect_gitignore": False}), m) is None


def test_gitignore_uses_workspace_root_without_git(tmp_path):
    (tmp_path / ".gitignore").write_text("secret.py\n")
    assert IgnoreMatcher([str(tmp_path)]).is_ignored(str(tmp_path / "secret.py"))
    assert not IgnoreMatcher().is_ignored(str(tmp_path / "secret.py")) or (tmp_path.parent / ".git").exists()


# -- single or multi-line -------------------------------------------------------------------------------------

@pytest.mark.parametrize("src,language,multi", [
    ("def area(w, h):|\n", "python", True),                                   # opener, empty body
    ("def area(w, h):\n    |\n", "python", True),                            # blank line after the opener
    ("class Point:\n    def __init__(self, x, y):\n        |\n\nprint(1)\n", "python", True),
    ("def f(xs):\n    total = 0\n    for x in xs:\n        total += x\n    |\n\nf([])\n", "python", True),
    ("def f(xs):\n    total = 0\n    |\n    return total\n", "python", False),  # middle of a block
    ("def f(xs):\n    total = |\n", "python", False),                        # inside a line
    ("def area(w, h):|\n    return w * h\n", "python", False),               # the body exists
    ("if ready:  # go|\n", "python", True),                                   # comment after the colon
    ("function add(a, b) {|}\n", "javascript", True),                       # auto-closed brace
    ("function add(a, b) {\n  |\n}\n", "javascript", True),
    ("const x = {a: 1,|\n", "javascript", False),
    ("import os\n\n|", "python", True),                                     # end of the file
])
def test_multiline_decision(src, language, multi):
    ctx = at(src, language)
    p = multiline.plan(ctx, S)
    assert p.multiline == multi, p
    assert p.max_lines == (S.max_lines if multi else 1)
    assert p.max_tokens == S.max_tokens


def test_multiline_off_when_max_lines_is_one():
    assert not multiline.plan(at("def area(w, h):|\n"), S.merged({"max_lines": 1})).multiline


# -- post-processing -------------------------------------------------------------------------------------------

def test_single_line_keeps_the_first_line_only():
    src = "def f(xs):\n    total = 0\n    |\n    return total\n"
    assert run("total += x\n    return total", src).text == "total += x"


def test_multiline_stays_in_the_block():
    src = "def area(w, h):|\n\nprint(area(2, 3))\n"
    sug = run("\n    return w * h\n\ndef other():\n    pass\n", src)
    assert sug.text == "\n    return w * h"
    assert apply(src, sug) == "def area(w, h):\n    return w * h\n\nprint(area(2, 3))\n"


def test_multiline_limits_lines():
    sug = run("\n" + "\n".join(f"    x{i} = {i}" for i in range(20)), "def f():|\n", settings=S.merged({"max_lines": 3}))
    assert sug.text.count("\n") == 3 and sug.text.endswith("x2 = 2")


def test_multiline_drops_unfinished_last_line_when_truncated():
    sug = run("\n    a = 1\n    b = compu", "def f():|\n", truncated=True)
    assert sug.text == "\n    a = 1"


def test_cut_where_the_suggestion_repeats_the_suffix():
    src = "def load(path):\n    |\n    return data\n"
    # the middle-of-block position is single line; force the multi-line plan to test the cut
    ctx = at(src)
    plan = multiline.Plan(True, 8, 64, block_indent=4)
    sug = postprocess.process("with open(path) as f:\n        data = f.read()\n    return data\n", ctx, plan)
    assert sug.text == "with open(path) as f:\n        data = f.read()"


def test_closing_brackets_already_after_the_cursor_are_dropped():
    src = "print(|)\n"
    assert run('"hello")', src).text == '"hello"'
    assert apply(src, run('"hello")', src)) == 'print("hello")\n'
    src2 = "items = [f(x|)]\n"
    assert apply(src2, run(") for x in xs]", src2)) == "items = [f(x) for x in xs]\n"


def test_inner_brackets_are_kept():
    src = "foo(|)\n"
    sug = run("bar(x))", src)
    assert sug.text == "bar(x)" and apply(src, sug) == "foo(bar(x))\n"


def test_replace_range_when_the_suggestion_closes_and_goes_on():
    src = "total = sum(|)\n"
    sug = run("values) + offset", src)
    assert sug.replace == 1 and sug.text == "values) + offset"
    assert apply(src, sug) == "total = sum(values) + offset\n"


def test_quotes_auto_closed_by_the_editor():
    src = 'name = "|"\n'
    sug = run('world"', src)
    assert sug.text == "world" and apply(src, sug) == 'name = "world"\n'
    src2 = 'open("|")\n'
    assert apply(src2, run('data.txt")', src2)) == 'open("data.txt")\n'


def test_javascript_block_with_auto_closed_brace():
    src = "function add(a, b) {|}\n"
    sug = run("\n  return a + b;\n}\n\nfunction sub(a, b) {", src, "javascript")
    assert apply(src, sug) == "function add(a, b) {\n  return a + b;\n}\n"


def test_javascript_closing_brace_already_below_is_not_repeated():
    src = "function add(a, b) {|\n}\n"
    sug = run("\n  return a + b;\n}\n", src, "javascript")
    assert apply(src, sug) == "function add(a, b) {\n  return a + b;\n}\n"


def test_suggestion_repeating_the_line_above_or_below_is_dropped():
    assert not run("import os", "import os\n|\nimport sys\n")
    assert not run("import sys", "import os\n|\nimport sys\n")
    assert run("import re", "import os\n|\nimport sys\n").text == "import re"


def test_never_whitespace_only():
    assert run("   \n\n", "x = 1\n|").text == ""
    assert run("", "x = |").text == ""
    assert run(")", "print(x|)").text == ""        # only the closer the line already has


def test_indentation_is_not_doubled_after_an_indented_cursor():
    sug = run("    return x", "def f(x):\n    |\n")
    assert sug.text == "return x"


def test_crlf_documents_get_crlf_suggestions():
    ctx = Context.from_text("def f():\r\n", 8)
    sug = postprocess.process("\n    return 1\n", ctx, multiline.plan(ctx, S))
    assert sug.text == "\r\n    return 1"


def test_external_closers():
    assert postprocess.external_closers("a, (b)) + c") == [6]
    assert postprocess.external_closers('x") + 1', '"') == [1, 2]
    assert postprocess.external_closers("'(' + x)") == [7]


# -- cache --------------------------------------------------------------------------------------------------

def test_cache_exact_and_typed_through():
    cache = CompletionCache()
    src = "def area(w, h):\n    return |\n"
    ctx = at(src)
    cache.store(ctx, ("k",), postprocess.Suggestion("w * h"), {"mode": "spec"})
    hit = cache.lookup(ctx, ("k",))
    assert hit.suggestion.text == "w * h" and hit.typed == ""
    assert cache.lookup(ctx, ("other",)) is None
    # the user types "w " -> the rest, no model call
    hit = cache.lookup(at("def area(w, h):\n    return w |\n"), ("any",))
    assert hit.suggestion.text == "* h" and hit.typed == "w " and hit.info["mode"] == "spec"
    # typing something else, or changing the suffix: no hit
    assert cache.lookup(at("def area(w, h):\n    return x|\n"), ("k",)) is None
    assert cache.lookup(at("def area(w, h):\n    return w|\nx = 1\n"), ("k",)) is None
    # typing the whole suggestion: nothing left to show from the cache
    assert cache.lookup(at("def area(w, h):\n    return w * h|\n"), ("k",)) is None
    assert cache.stats()["typed_through"] == 1


def test_cache_keeps_empty_results_for_exact_hits_only():
    cache = CompletionCache()
    ctx = at("x = |")
    cache.store(ctx, ("k",), postprocess.Suggestion("", 0, "whitespace only"))
    assert cache.lookup(ctx, ("k",)).suggestion.text == ""
    assert cache.lookup(at("x = 1|"), ("k",)) is None


def test_cache_replace_range_survives_typed_through():
    cache = CompletionCache()
    cache.store(at("total = sum(|)\n"), ("k",), postprocess.Suggestion("values) + 1", replace=1))
    hit = cache.lookup(at("total = sum(val|)\n"), ("k",))
    assert hit.suggestion.text == "ues) + 1" and hit.suggestion.replace == 1


# -- scheduler (a stand-in backend that records aborts; the real daemon is in test_lsp.py) ------------------

class RecordingBackend:
    def __init__(self):
        self.aborted, self.futures, self.next = [], {}, 1

    def submit(self, msg):
        rid, self.next = self.next, self.next + 1
        fut = asyncio.get_running_loop().create_future()
        self.futures[rid] = fut
        return rid, fut

    def abort_later(self, rid):
        self.aborted.append(rid)


def test_scheduler_newest_request_wins():
    async def main():
        sched, backend = Scheduler(), RecordingBackend()
        first = sched.begin("doc")
        waiting = asyncio.ensure_future(first.call(backend, object()))
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        second = sched.begin("doc")          # a newer request for the same document
        assert await waiting is None          # the older one is answered (empty) at once
        assert time.perf_counter() - t0 < 0.5
        assert backend.aborted == [1]        # and its daemon work aborted
        assert not await sched.begin("doc").debounce(0) or True
        assert second.superseded
        other = sched.begin("other")         # other documents are independent
        assert not other.superseded
    asyncio.run(main())


def test_scheduler_debounce_and_cancel():
    async def main():
        sched, backend = Scheduler(), RecordingBackend()
        t = sched.begin("doc")
        later = asyncio.ensure_future(t.debounce(5.0))
        await asyncio.sleep(0.01)
        sched.begin("doc")
        assert await later is False           # superseded while debouncing: no daemon call
        t2 = sched.begin("doc")
        task = asyncio.ensure_future(t2.call(backend, object()))
        await asyncio.sleep(0)
        task.cancel()                         # what pygls does on $/cancelRequest
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.aborted == [1]
        t3 = sched.begin("doc")
        task = asyncio.ensure_future(t3.call(backend, object()))
        await asyncio.sleep(0)
        backend.futures[2].set_result({"type": "result", "text": "x"})
        assert (await task)["text"] == "x"
        t3.done()
        assert sched.in_flight() == 0
    asyncio.run(main())


# -- refactor prompts ----------------------------------------------------------------------------------------

PY = '''import math


def area(width, height):
    return width * height


class Circle:
    def __init__(self, r):
        self.r = r

    def circumference(self):
        pass
'''


def _apply_job(src, job, generated):
    new = job.finish(generated)
    return None if new is None else src[:job.start] + new + src[job.end:]


def test_actions_available():
    i = PY.index("return width")
    assert refactor.available(PY, "python", i, i) == ["docstring", "type_hints", "rewrite", "complete_body"]
    j = PY.index("import math")
    assert refactor.available(PY, "python", j, j) == []
    assert refactor.available(PY, "python", j, j + 5) == ["rewrite"]


def test_docstring_prompt_and_result():
    i = PY.index("return width")
    job = refactor.build("docstring", PY, "python", i, i)
    assert job.prefix.endswith('def area(width, height):\n    """')
    assert job.suffix.startswith('"""\n    return width * height\n')
    assert job.stop == ('"""',)
    out = _apply_job(PY, job, 'Area of a rectangle."""\n')
    assert 'def area(width, height):\n    """Area of a rectangle."""\n    return width * height' in out
    out = _apply_job(PY, job, "Area of a rectangle.\n\n    Multiplies the sides.\n    ")
    assert '    """Area of a rectangle.\n\n    Multiplies the sides.\n    """\n    return' in out
    assert job.finish("   ") is None


def test_type_hints_prompt_and_validation():
    i = PY.index("return width")
    job = refactor.build("type_hints", PY, "python", i, i)
    assert job.prefix.endswith("def area(") and job.suffix.startswith(":\n    return width * height")
    out = _apply_job(PY, job, "width: float, height: float) -> float")
    assert "def area(width: float, height: float) -> float:\n    return width * height" in out
    assert job.finish("w: float, h: float) -> float") is None          # the names changed
    assert job.finish("width, height)") is None                         # nothing added
    assert job.finish("width: float, height: float") is None           # unbalanced


def test_rewrite_prompt_has_instruction_and_original_as_hint():
    i = PY.index("def area")
    j = PY.index("width * height") + len("width * height")
    job = refactor.build("rewrite", PY, "python", i, j, instruction="use keyword-only arguments")
    assert job.prefix.endswith("# Original version:\n# def area(width, height):\n#     return width * height\n"
                               "# Rewritten version (use keyword-only arguments):\n")
    assert job.prefix.startswith("import math\n\n\n")
    assert job.suffix.startswith("\n\n\nclass Circle")
    new = "def area(*, width, height):\n    return width * height"
    assert _apply_job(PY, job, new + "\n\n\nclass Circle:\n") == PY.replace("def area(width, height)", "def area(*, width, height)")
    assert job.finish("# Rewritten version (x):\n" + new) == new
    # the scaffold echoed back as comments is not a rewrite: declined, the code stays
    assert job.finish("#     return width * height\n# Rewritten version (x):\n#     return width * height\n") is None
    with pytest.raises(refactor.RefactorError):
        refactor.build("rewrite", PY, "python", i, j, instruction="")


def test_rewrite_accepts_a_whole_code_reply_and_keeps_the_indentation():
    """An instruct model asked directly answers with the whole code, dedented: finish() puts it back
    at the original's indentation; an unchanged or unusable answer is still declined."""
    src = "class A:\n    def f(self, xs):\n        out = []\n        for x in xs:\n            out.append(x)\n        return out\n"
    at = src.index("def f")
    job = refactor.build("rewrite", src, "python", at, at, instruction="use a comprehension")
    assert job.original == src[src.index("    def f"):].rstrip("\n") and job.instruction == "use a comprehension"
    assert job.prefix[len(job.prefix) - job.scaffold:].startswith("    # Original version:")
    assert job.prefix[:len(job.prefix) - job.scaffold] == "class A:\n"
    out = _apply_job(src, job, "def f(self, xs):\n    return [x for x in xs]\n")
    assert out == "class A:\n    def f(self, xs):\n        return [x for x in xs]\n"
    assert job.finish("def f(self, xs):\n    out = []\n    for x in xs:\n        out.append(x)\n    return out\n") is None
    assert job.finish("# nothing to change\n") is None and job.finish("\n") is None
    # a reply already at the original's indentation (the FIM path's answer) is taken as it is
    assert job.finish("    def f(self, xs):\n        return list(xs)") == "    def f(self, xs):\n        return list(xs)"


def test_complete_body_replaces_placeholder():
    i = PY.index("pass")
    job = refactor.build("complete_body", PY, "python", i, i)
    assert job.prefix.endswith("    def circumference(self):\n        ")
    out = _apply_job(PY, job, "return 2 * math.pi * self.r\n\nprint(1)\n")
    assert out.endswith("    def circumference(self):\n        return 2 * math.pi * self.r\n")


def test_complete_body_brace_language():
    js = "function add(a, b) {\n  // TODO\n}\n"
    i = js.index("TODO")
    job = refactor.build("complete_body", js, "javascript", i, i)
    out = _apply_job(js, job, "return a + b;\n}\n")
    assert out == "function add(a, b) {\n  return a + b;\n}\n"


def test_doc_comment_for_brace_languages():
    js = "const x = 1;\n\nfunction add(a, b) {\n  return a + b;\n}\n"
    i = js.index("return")
    assert "docstring" in refactor.available(js, "javascript", i, i)
    job = refactor.build("docstring", js, "javascript", i, i)
    assert job.prefix.endswith("const x = 1;\n\n/**\n * ") and job.stop == ("*/",)
    out = _apply_job(js, job, "Adds two numbers.\n * @param a first\n ")
    assert out == "const x = 1;\n\n/**\n * Adds two numbers.\n * @param a first\n */\nfunction add(a, b) {\n  return a + b;\n}\n"


def test_no_function_no_function_actions():
    with pytest.raises(refactor.RefactorError):
        refactor.build("docstring", "x = 1\n", "python", 0, 0)


# -- the prefix is clipped once, by the daemon ------------------------------------------------------------

def test_wire_sends_the_whole_prefix_and_caps_only_the_frame():
    import protocol
    from lsp.context import PREFIX_CHARS, SUFFIX_CHARS
    from protocol import Complete
    text = "def f(x):\n    return x\n" * 4000                 # 92k characters: the daemon clips it by tokens
    ctx = Context.from_text(text + "y = ", len(text) + 4)
    assert ctx.wire_prefix() == ctx.prefix
    # past the cap: the last lines that fit, from a line start, and the frame stays under the limit
    worst = ("😀" * 99 + "\n") * (PREFIX_CHARS // 100 + 50)    # 4 bytes a code point in UTF-8
    ctx = Context.from_text(worst + "|" + worst[:SUFFIX_CHARS + 500], len(worst))
    p, s = ctx.wire_prefix(), ctx.wire_suffix()
    assert len(p) <= PREFIX_CHARS and ctx.prefix.endswith(p) and p.startswith("😀")
    assert len(s) <= SUFFIX_CHARS and ctx.suffix.startswith(s)
    assert len(protocol.pack(Complete(prefix=p, suffix=s))) <= protocol.MAX_FRAME + protocol.HEADER.size


def test_wire_within_the_daemons_budget_gives_the_whole_texts_prompt():
    """With the daemon's budget known, a long text is sent as the file's head and the lines around the
    cursor (lsp/context.py): bounded by the budget, stable while typing, and the daemon's prompt built
    from it (the real PromptBuilder and the embedded model's tokenizer) is the whole text's prompt."""
    import random

    from daemon.prompt import PromptBuilder, protect_special_tokens
    from engine.embedded_model import default_model
    from lsp.context import CHARS_PER_TOKEN, WIRE_STEP
    from textkit.tokenizer import Tokenizer
    if default_model() is None:
        pytest.skip("the embedded model is not installed")
    tok = Tokenizer(default_model())
    protect_special_tokens(tok)
    builder = PromptBuilder(tok)
    rng = random.Random(0)
    text = "import os\nimport sys\n\n" + "".join(rng.choice([
        f"def step_{i}(state):\n    state.value += {i}\n    return state\n\n",
        f"class C{i}:\n    x = [{', '.join(str(j) for j in range(i % 30))}]\n\n",
        f"# {'-' * (i % 90)}\n"]) for i in range(8000))
    longest = max(map(len, text.splitlines())) + 1
    for frac in (0.01, 0.5, 0.97):
        cur = text.index("\n", int(len(text) * frac)) + 1
        starts = set()
        for typed in ("", "def ar", "def area(w):\n    return w\n"):
            doc = text[:cur] + typed + text[cur:]
            ctx = Context.from_text(doc, cur + len(typed))
            for budget in (256, 1024):
                p, s = ctx.wire_prefix(budget), ctx.wire_suffix(budget)
                assert ctx.prefix.endswith(p[len(p) - 100:]) and ctx.suffix.startswith(s)
                assert len(p) + len(s) <= 3 * budget * CHARS_PER_TOKEN + WIRE_STEP * longest + len(ctx.line_prefix)
                if frac == 0.5:
                    assert len(p) + len(s) < len(doc) // 5
                if budget == 1024 and "\n" not in typed:
                    starts.add(p[:len(p) - len(ctx.line_prefix)])
                for layout in ("window", "contiguous"):
                    whole = builder.build(ctx.prefix, ctx.suffix, budget, layout=layout).ids
                    assert builder.build(p, s, budget, layout=layout).ids == whole, (frac, typed, budget, layout)
        assert len(starts) == 1                 # typing on the line changes nothing before it


def test_every_server_setting_is_a_vscode_setting():
    """Each key `tricode lsp` understands (lsp/settings.py) can be set in VS Code: contributed in the
    extension's package.json with the server's default, and sent by settings.ts."""
    import dataclasses
    import json
    import re
    from pathlib import Path
    from lsp.settings import Settings
    root = Path(__file__).resolve().parent.parent / "editor_clients" / "vscode"
    props = json.loads((root / "package.json").read_text())["contributes"]["configuration"]["properties"]
    sent = set(re.findall(r'^\s+"(\w+)",$', (root / "src" / "settings.ts").read_text().split("SERVER_KEYS = [")[1]
                          .split("] as const")[0], re.M))
    for f in dataclasses.fields(Settings):
        assert f.name in sent, f"settings.ts SERVER_KEYS lacks {f.name}"
        prop = props.get(f"tricode.{f.name}")
        assert prop is not None, f"package.json contributes no tricode.{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert prop["default"] == (list(default) if isinstance(default, tuple) else default), f.name
