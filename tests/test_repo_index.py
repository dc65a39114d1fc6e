"""The workspace index (daemon/repo_index.py, daemon/repo_chunks.py) and retrieval (daemon/retrieval.py)
on real trees made in temporary directories, with a real watchdog observer."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from daemon.repo_chunks import chunk_file
from daemon.repo_index import Limits, RepoIndex, watch
from daemon.retrieval import Recency, Retriever, as_entries

UTIL = '''"""Helpers."""
import os

RETRY_LIMIT = 3


def normalise_path(p):
    """A path with ~ expanded and separators made uniform."""
    return os.path.normpath(os.path.expanduser(p)).replace(os.sep, "/")


class PathCache:
    def __init__(self):
        self.seen = {}

    def lookup(self, key):
        return self.seen.get(key)
'''

MIDDLE = '''from pkg.util import normalise_path


def load_config(path):
    return {"path": normalise_path(path)}
'''

APP = '''import sys

from pkg.util import normalise_path, PathCache


def main(argv):
    cache = PathCache()
    for arg in argv:
        target = normalise_path(arg)
        cache.seen[target] = True
    return cache


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def write(root: Path, rel: str, text: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/util.py", UTIL)
    write(root, "pkg/config.py", MIDDLE)
    write(root, "app/main.py", APP)
    return root.resolve()


def built(root: Path, **kw) -> RepoIndex:
    idx = RepoIndex(root, **kw)
    idx.build()
    return idx


# -- chunks and definitions ------------------------------------------------------------------------

def test_python_chunks_split_on_definitions():
    funcs = "\n\n".join(f"def f{i}(x):\n" + "".join(f"    y{j} = x + {j}\n" for j in range(12)) + "    return x\n"
                        for i in range(6))
    text = "import os\n\n\n" + funcs
    chunks, defs = chunk_file("m.py", text)
    lines = text.split("\n")
    # every chunk starts at a top-level statement or the gap before one, never inside a function body
    for c in chunks:
        first = next(ln for ln in lines[c.start - 1:c.end] if ln.strip())
        assert not first.startswith(" "), c
        assert c.end - c.start + 1 <= 60
    assert [d.name for d in defs if d.kind == "function"] == [f"f{i}" for i in range(6)]
    covered = set()
    for c in chunks:
        covered.update(range(c.start, c.end + 1))
    assert covered >= set(range(1, len(lines)))


def test_long_class_split_at_methods():
    methods = "".join(f"    def m{i}(self):\n" + "".join(f"        a{j} = {j}\n" for j in range(10)) + "\n"
                      for i in range(10))
    text = "class Big:\n    x = 1\n\n" + methods
    chunks, defs = chunk_file("big.py", text)
    lines = text.split("\n")
    assert len(chunks) > 2
    for c in chunks[1:]:
        assert lines[c.start - 1].strip().startswith("def m"), (c, lines[c.start - 1])
    assert {d.name for d in defs if d.kind == "method"} == {f"m{i}" for i in range(10)}
    assert [d.name for d in defs if d.kind == "class"] == ["Big"]


def test_syntax_error_falls_back_to_windows():
    text = "def broken(:\n" + "x = 1\n" * 100
    chunks, defs = chunk_file("b.py", text)
    assert chunks and all(c.kind == "window" for c in chunks)
    assert chunks[0].start == 1 and chunks[-1].end == 101
    assert chunks[1].start <= chunks[0].end          # windows overlap


def test_other_language_definitions_and_chunks():
    go = ("package main\n\nimport \"fmt\"\n\n" +
          "".join(f"func helper{i}(x int) int {{\n" + "\tx += 1\n" * 15 + "\treturn x\n}\n\n" for i in range(4)) +
          "type Server struct {\n\tname string\n}\n\nfunc (s *Server) Start() error {\n\treturn nil\n}\n")
    chunks, defs = chunk_file("main.go", go)
    names = {d.name for d in defs}
    assert {"helper0", "helper3", "Server", "Start"} <= names
    lines = go.split("\n")
    for c in chunks[1:]:
        assert lines[c.start - 1].startswith(("func", "type")), lines[c.start - 1]
    js = "export function render(x) {\n  return x;\n}\nconst makeThing = (a) => a + 1;\nclass Widget {}\n"
    assert {"render", "makeThing", "Widget"} <= {d.name for d in chunk_file("w.js", js)[1]}


def test_definitions_found_across_files(tree):
    idx = built(tree)
    [d] = idx.definitions("normalise_path")
    assert d.path == str(tree / "pkg/util.py") and d.kind == "function"
    assert (d.line, d.end) == (7, 9)
    assert idx.definitions("lookup")[0].kind == "method"
    assert idx.definitions("RETRY_LIMIT")[0].kind == "variable"
    assert idx.definitions("load_config")[0].path == str(tree / "pkg/config.py")
    st = idx.stats()
    assert (st.files, st.definitions) == (4, 7) and st.chunks >= 3 and st.memory_bytes > 0


# -- what is not indexed ---------------------------------------------------------------------------

def test_gitignore_respected(tree):
    write(tree, ".gitignore", "generated/\n*_secret.py\n")
    write(tree, "generated/out.py", "def generated_thing():\n    pass\n")
    write(tree, "pkg/key_secret.py", "def secret_thing():\n    pass\n")
    write(tree, "node_modules/x/index.js", "function vendored_thing() {}\n")
    idx = built(tree)
    assert idx.definitions("generated_thing") == []
    assert idx.definitions("secret_thing") == []
    assert idx.definitions("vendored_thing") == []
    assert idx.definitions("normalise_path")


def test_bad_files_skipped_without_failing(tree, caplog):
    write(tree, "pkg/blob.py", b"\x00\x01\x02binary" * 100)
    write(tree, "pkg/latin.py", "x = 'caf\xe9'\n".encode("latin-1"))
    write(tree, "pkg/huge.py", "x = 1\n" * 40_000)                  # 240 KB
    secret = write(tree, "pkg/locked.py", "def locked_thing():\n    pass\n")
    secret.chmod(0)
    os.symlink(tree / "pkg", tree / "pkg" / "loop")                  # a directory symlink loop
    os.symlink(tree / "nowhere.py", tree / "pkg" / "dangling.py")    # a broken symlink
    caplog.set_level(logging.DEBUG, logger="daemon.repo_index")
    try:
        idx = built(tree, limits=Limits(max_file_bytes=100 * 1024))
    finally:
        secret.chmod(0o644)
    files = idx.files()
    for bad in ("blob.py", "latin.py", "huge.py", "dangling.py"):
        assert str(tree / "pkg" / bad) not in files
    if os.geteuid() != 0:            # root reads a mode-000 file
        assert str(tree / "pkg/locked.py") not in files
    assert not any("/loop/" in f for f in files)
    assert idx.definitions("normalise_path")
    skipped = idx.stats().skipped
    assert skipped.get("binary") == 1 and skipped.get("not utf-8") == 1 and skipped.get("too large") == 1
    assert skipped.get("symlink loop", 0) >= 1 and skipped.get("broken symlink") == 1
    assert "skip" in caplog.text and "binary" in caplog.text


def test_vanishing_file_and_bad_paths(tree):
    idx = built(tree)
    gone = tree / "pkg" / "util.py"
    gone.unlink()
    assert idx.update(gone) is False                    # vanished: dropped, no exception
    assert idx.definitions("normalise_path") == []
    assert idx.update(tree / "no" / "such" / "dir.py") is False
    assert idx.update("/etc/passwd") is False           # outside the root
    assert idx.remove(tree / "never-indexed") == 0
    # deleted between the walk's stat and the read (mid-build)
    late = write(tree, "pkg/late.py", "def late_thing():\n    pass\n")
    st = late.stat()
    late.unlink()
    assert idx.update(late, st) is False and idx.stats().skipped.get("vanished", 0) >= 1
    assert idx.definitions("late_thing") == []


def test_limits_bound_the_index(tree):
    for i in range(20):
        write(tree, f"many/m{i}.py", f"def thing_{i}():\n    return {i}\n")
    idx = built(tree, limits=Limits(max_files=10))
    st = idx.stats()
    assert st.files == 10 and st.truncated and st.skipped["limit"] > 0


# -- keeping current -------------------------------------------------------------------------------

def test_update_remove_move_incremental(tree):
    idx = built(tree)
    gen = idx.generation
    write(tree, "pkg/util.py", UTIL + "\n\ndef brand_new_helper():\n    return 42\n")
    assert idx.update(tree / "pkg/util.py")
    assert idx.generation > gen
    assert idx.definitions("brand_new_helper")[0].line == 20
    assert len(idx.definitions("normalise_path")) == 1      # the old version's definitions are gone
    (tree / "pkg/util.py").rename(tree / "pkg/helpers.py")
    idx.move(tree / "pkg/util.py", tree / "pkg/helpers.py")
    assert idx.definitions("normalise_path")[0].path == str(tree / "pkg/helpers.py")
    (tree / "pkg").rename(tree / "lib")
    idx.move(tree / "pkg", tree / "lib")
    assert idx.definitions("load_config")[0].path == str(tree / "lib/config.py")
    assert idx.remove(tree / "lib") == 3
    assert idx.definitions("load_config") == [] and idx.files() == [str(tree / "app/main.py")]


def test_compaction_keeps_answers(tree):
    idx = built(tree)
    for i in range(300):                    # enough rewrites that dead chunks outnumber live ones
        write(tree, "pkg/churn.py", f"def churn_{i}():\n    return {i}\n" * 1)
        idx.update(tree / "pkg/churn.py")
    idx._compact()
    assert idx.definitions("churn_299") and idx.definitions("churn_298") == []
    assert idx.definitions("normalise_path")[0].path == str(tree / "pkg/util.py")
    chunks = idx.chunks_of(str(tree / "pkg/util.py"))
    assert chunks and chunks[0].start == 1


def wait_for(cond, timeout=5.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def test_saved_file_searchable_within_a_second_through_watchdog(tree):
    from watchdog.observers import Observer
    idx = built(tree)
    obs = Observer()
    w = watch(idx, obs)
    obs.start()
    try:
        time.sleep(0.2)
        write(tree, "pkg/fresh.py", "def freshly_saved_function(a, b):\n    return a * b\n")
        took = wait_for(lambda: idx.definitions("freshly_saved_function"))
        assert took is not None and took < 1.0, took
        # a save through a temporary file and a rename (what many editors do)
        tmp = write(tree, "pkg/.fresh.py.tmp", "def renamed_in_place():\n    pass\n")
        os.replace(tmp, tree / "pkg/fresh.py")
        took = wait_for(lambda: idx.definitions("renamed_in_place") and not idx.definitions("freshly_saved_function"))
        assert took is not None and took < 1.0, took
        (tree / "pkg/fresh.py").unlink()
        assert wait_for(lambda: not idx.definitions("renamed_in_place")) is not None
        # a directory moved away and a new one created
        (tree / "pkg").rename(tree / "moved")
        assert wait_for(lambda: idx.definitions("normalise_path")
                        and idx.definitions("normalise_path")[0].path == str(tree / "moved/util.py")) is not None
        write(tree, "newdir/sub/deep.py", "def deep_new_function():\n    pass\n")
        assert wait_for(lambda: idx.definitions("deep_new_function")) is not None
    finally:
        obs.unschedule(w)
        obs.stop()
        obs.join(5)


def test_background_build_paced(tree):
    for i in range(60):
        write(tree, f"bulk/b{i}.py", f"def bulk_{i}(x):\n    return x + {i}\n")
    idx = RepoIndex(tree)
    idx.start(slice_s=0.001, pause_s=0.001)
    assert idx.wait(30)
    assert idx.definitions("bulk_59") and idx.stats().files == 64 and idx.build_seconds > 0


# -- retrieval -------------------------------------------------------------------------------------

def cursor_after(text: str, marker: str) -> int:
    """The 0-based line after the one holding `marker`."""
    return next(i for i, ln in enumerate(text.split("\n")) if marker in ln) + 1


def test_retrieval_finds_helper_two_files_away(tree):
    idx = built(tree)
    r = Retriever(idx)
    cur = tree / "app" / "cli.py"
    text = "from pkg.util import normalise_path\n\n\ndef run(paths):\n    out = []\n    for p in paths:\n" \
           "        q = normalise_path(p)\n        out.append(q)\n        \n"
    snippets = r.retrieve(str(cur), text, cursor_after(text, "out.append"), budget=2000)
    defs = [s for s in snippets if s.why.startswith("definition of normalise_path")]
    assert defs and defs[0].label == "pkg/util.py" and defs[0].start == 7
    assert "def normalise_path(p):" in defs[0].text
    assert snippets.index(defs[0]) == 0
    labels = [label for label, _ in as_entries(snippets)]
    assert labels[-1] == "pkg/util.py"                       # most relevant nearest the file


def test_retrieval_ranks_similar_chunks_and_drops_own_window(tree):
    idx = built(tree)
    r = Retriever(idx)
    text = (tree / "app/main.py").read_text()
    line = cursor_after(text, "cache.seen[target]")
    snippets = r.retrieve(str(tree / "app/main.py"), text, line, budget=4000)
    assert all(s.path != str(tree / "app/main.py") for s in snippets)
    assert any(s.label == "pkg/util.py" for s in snippets)
    # what the prompt already holds is not repeated
    held = [(tree / "pkg/util.py").read_text()]
    again = r.retrieve(str(tree / "app/main.py"), text, line, budget=4000, held=held)
    assert all(s.label != "pkg/util.py" for s in again)


def test_retrieval_budget_and_priority(tree):
    idx = built(tree)
    r = Retriever(idx)
    text = "from pkg.util import normalise_path, PathCache\n\nc = PathCache()\nx = normalise_path('a')\n\n"
    big = r.retrieve(str(tree / "app/x.py"), text, 5, budget=10_000)
    assert [s.why for s in big[:2]] == ["definition of normalise_path (function)", "definition of PathCache (class)"]
    first = len(big[0].text) + len(big[0].label) + 2
    small = r.retrieve(str(tree / "app/x.py"), text, 5, budget=first + 10)
    assert [s.why for s in small] == [big[0].why]
    # a budget too small for the first: the next one that fits is taken instead
    tiny = r.retrieve(str(tree / "app/x.py"), text, 5, budget=first - 1)
    assert tiny and sum(len(s.text) + len(s.label) + 2 for s in tiny) <= first - 1


def test_retrieval_stable_while_typing_within_a_line(tree):
    for i in range(8):
        write(tree, f"pkg/mod{i}.py", f"from pkg.util import normalise_path\n\n\ndef use_{i}(p):\n"
                                      f"    return normalise_path(p) + str({i})\n")
    idx = built(tree)
    r = Retriever(idx)
    base = "from pkg.util import normalise_path\n\n\ndef go(items):\n    for it in items:\n        "
    line = base.count("\n")
    first = r.retrieve(str(tree / "app/t.py"), base, line, budget=3000)
    assert first
    for typed in ("r", "res", "result = norm", "result = normalise_path(it", "result = normalise_path(it) + PathCache",
                  "\nfrom pkg.mod3 import use_3"[1:], "use_1 = 2"):
        r2 = Retriever(idx)          # no cache: the ranking itself must not change
        again = r2.retrieve(str(tree / "app/t.py"), base + typed, line, budget=3000)
        assert [(s.path, s.start, s.end) for s in again] == [(s.path, s.start, s.end) for s in first], typed


def test_recency_lifts_a_recently_edited_file(tree):
    write(tree, "a/first.py", "def shared_name_alpha(value):\n    return value\n")
    write(tree, "z/second.py", "def shared_name_alpha_two(value):\n    return value\n")
    idx = built(tree)
    rec = Recency()
    r = Retriever(idx, rec)
    text = "value = 1\nshared_name_alpha = value\n\n"
    q = {"value"}
    before = [idx.chunk(c).path for c, _, _ in r.rank_chunks(q)]
    rec.touch(str(tree / "z/second.py"))
    after = [idx.chunk(c).path for c, _, _ in r.rank_chunks(q)]
    assert before.index(str(tree / "z/second.py")) > before.index(str(tree / "a/first.py"))
    assert after[0] == str(tree / "z/second.py")
    assert text  # the query above is what such a window holds


def test_retrieval_skips_a_file_changed_since_indexed(tree):
    idx = built(tree)
    r = Retriever(idx)
    text = "from pkg.util import normalise_path\n\nnormalise_path('x')\n\n"
    write(tree, "pkg/util.py", "# rewritten\n" + UTIL)     # no event: the index is stale for it
    os.utime(tree / "pkg/util.py", ns=(time.time_ns() + 10**9,) * 2)
    got = r.retrieve(str(tree / "app/x.py"), text, 3, budget=2000)
    for s in got:                                           # never lines of an old version
        on_disk = Path(s.path).read_text().split("\n")[s.start - 1:s.end]
        assert s.text == "\n".join(on_disk) + "\n"
    got = Retriever(idx).retrieve(str(tree / "app/x.py"), text, 3, budget=2000)
    d = [s for s in got if s.why.startswith("definition of normalise_path")]
    assert d and d[0].start == 8 and "def normalise_path" in d[0].text


def test_line_scan_agrees_with_ast_on_real_modules():
    """Files over AST_MAX_CHARS are scanned by lines: on ordinary code the same definitions and
    statement starts as the parse."""
    import daemon.repo_chunks as rc
    import daemon.repo_index as ri
    import daemon.retrieval as rt
    for mod in (rc, ri, rt):
        text = Path(mod.__file__).read_text()
        lines = text.split("\n")[:-1]
        units, defs = rc.python_units(text)
        s_units, s_defs = rc.python_units_scan(lines)
        key = lambda d: (d.name, d.line, d.kind)       # noqa: E731
        assert {key(d) for d in defs if d.kind != "variable"} == {key(d) for d in s_defs if d.kind != "variable"}
        assert {key(d) for d in defs} - {key(d) for d in s_defs} <= {key(d) for d in defs if d.kind == "variable"}
        assert [u.start for u in units] == [u.start for u in s_units], mod.__name__
    big = "\n\n".join(Path(m.__file__).read_text() for m in (rc, ri))
    assert len(big) > rc.AST_MAX_CHARS
    chunks, defs = chunk_file("big.py", big)
    assert {"chunk_file", "RepoIndex", "python_units_scan", "update"} <= {d.name for d in defs}
    assert all(c.end - c.start < rc.MAX_CHUNK_LINES for c in chunks)


SCAN_CASES = '''import functools

A = B = C_2 = make(1)
x: int = 3


@functools.lru_cache(
    maxsize=None
)
@staticmethod
def cached(n):
    return n


@decorate("a",
          "b")
class Thing:
    first = second = 0

    def method(self):
        return cached(1) == 2
'''


def test_line_scan_matches_the_parse_on_decorators_and_chained_assignments(tmp_path):
    """What the bulk build relies on (it scans every Python file): stacked and multi-line decorators
    belong to the definition below them (one statement, starting at the first decorator), every
    target of a chained assignment is a definition; the same as `ast` gives. The build scans, a
    single update() parses, and both index the same definitions here."""
    import daemon.repo_chunks as rc
    units, defs = rc.python_units(SCAN_CASES)
    s_units, s_defs = rc.python_units_scan(SCAN_CASES.split("\n")[:-1])
    key = lambda d: (d.name, d.line, d.kind)       # noqa: E731
    assert {key(d) for d in s_defs} == {key(d) for d in defs}
    assert {"A", "B", "C_2", "x", "cached", "Thing", "method"} <= {d.name for d in s_defs}
    assert [u.start for u in s_units] == [u.start for u in units]
    (tmp_path / ".git").mkdir()
    f = tmp_path / "m.py"
    f.write_text(SCAN_CASES)
    idx = RepoIndex(tmp_path)
    idx.build()
    built_defs = {(d.name, d.line, d.kind) for n in ("A", "B", "C_2", "cached", "Thing", "method")
                  for d in idx.definitions(n)}
    chunks = [(c.start, c.end) for c in idx.chunks_of(str(f))]
    f.write_text(SCAN_CASES + "\n")        # a save: update() parses
    assert idx.update(f)
    assert {(d.name, d.line, d.kind) for n in ("A", "B", "C_2", "cached", "Thing", "method")
            for d in idx.definitions(n)} == built_defs
    assert [(c.start, c.end) for c in idx.chunks_of(str(f))][:-1] == chunks[:-1]
    assert idx.definitions("cached")[0].line == 7          # at its first decorator


def test_signatures_of_imported_names_and_sources(tree):
    idx = built(tree)
    r = Retriever(idx)
    # PathCache is imported but not used in the window yet: its header comes as a signature
    text = ("from pkg.util import normalise_path, PathCache\n\n\ndef run():\n" + "    x = 1\n" * 40
            + "    \n")
    line = text.count("\n")
    got = r.retrieve(str(tree / "app/y.py"), text, line, budget=2000)
    sig = [s for s in got if s.why == "signature of PathCache (class)"]
    assert sig and sig[0].text == "class PathCache:\n" and (sig[0].start, sig[0].end) == (12, 12)
    only_chunks = r.retrieve(str(tree / "app/y.py"), text, line, budget=2000, sources=("chunks",))
    assert all(s.why.startswith("shares ") for s in only_chunks)
    with pytest.raises(ValueError, match="bm25"):
        Retriever(idx, method="tfidf")


def test_definition_headers_show_the_api_and_signatures_follow_use(tmp_path):
    """The "definition-headers" source (the pretrained format's): a function used near the cursor by
    its def line only, a class by its header and its __init__'s; imported names' signatures in the
    order of their use in the file (the most used first)."""
    root = tmp_path / "p"
    (root / ".git").mkdir(parents=True)
    write(root, "lib/shapes.py", "class Box:\n    \"\"\"A box.\"\"\"\n\n    kind = 'box'\n\n"
                                 "    def __init__(self, width,\n                 height):\n        self.w = width\n\n"
                                 "    def area(self):\n        return self.w\n\n\n"
                                 "def scale(box, k):\n    \"\"\"Scaled.\"\"\"\n    return Box(box.w * k, 1)\n\n\n"
                                 "def rare(x):\n    return x\n\n\ndef often(x):\n    return x\n")
    idx = built(root.resolve())
    r = Retriever(idx)
    cur = str(root.resolve() / "app.py")
    # `often` is used far above the cursor's window (so not followed as a definition there)
    text = ("from lib.shapes import rare, often\n\n\ndef early():\n    often(1)\n    often(2)\n\n\n"
            + "".join(f"V{i} = {i}\n" for i in range(40)) + "\n\ndef go(b):\n    s = scale(b, 2)\n"
            "    c = Box(1, 2)\n    \n")
    line = text.count("\n") - 1
    got = r.retrieve(cur, text, line, budget=2000, sources=("definition-headers", "signatures"))
    shown = [(s.start, s.end, s.why) for s in got]
    assert (14, 14, "definition of scale (function)") in shown, shown
    assert (1, 1, "definition of Box (class)") in shown and (6, 7, "definition of Box (class)") in shown, shown
    assert all("return" not in s.text for s in got), [s.text for s in got]
    sigs = [s.why for s in got if s.why.startswith("signature")]
    assert sigs == ["signature of often (function)", "signature of rare (function)"], sigs
    full = r.retrieve(cur, text, line, budget=2000, sources=("definitions",))
    assert any("return Box(box.w * k, 1)" in s.text for s in full)


def test_as_entries_one_per_file():
    from daemon.retrieval import Snippet
    a = Snippet("/r/u.py", "u.py", 10, 12, "a\nb\nc\n", 0.0, "definition of a (function)")
    b = Snippet("/r/v.py", "v.py", 1, 2, "x\ny\n", 3.0, "shares x")
    c = Snippet("/r/u.py", "u.py", 1, 3, "h\ni\nj\n", 2.0, "shares h")
    d = Snippet("/r/u.py", "u.py", 13, 14, "k\nl\n", 1.0, "shares k")
    assert as_entries([a, b, c, d]) == [("v.py", "x\ny\n"), ("u.py", "h\ni\nj\n...\na\nb\nc\nk\nl\n")]
