"""Daemon prompt building and workspace context (no daemon process, no model)."""
import json
import os
import time

import pytest

from daemon.finish import finish_text, text_cut
from daemon.prompt import CLIP_STEP, PromptBuilder, protect_special_tokens
from daemon.workspace import ALWAYS_IGNORED, Workspace, python_imports, resolve_imports
from textkit.gitignore import GitIgnore
from textkit.tokenizer import Tokenizer
from tests.tiny_checkpoint import SAMPLE_CODE, tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 0, "mask_token_id": 1}))
    t = Tokenizer(d)
    protect_special_tokens(t)
    return t


# -- stop rules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, reason, max_lines, stops, want", [
    ("foo()\nbar()\n", "stop", 1, (), "foo()"),
    ("\n    return x\n    y = 1", "stop", 1, (), "\n    return x"),      # leading blank lines do not count
    ("a\nb\nc\nd", "stop", 2, (), "a\nb"),
    ("foo\r\nbar", "stop", 1, (), "foo"),
    ("abc", "eos", 1, (), "abc"),
    ("x = f(a); y", "stop", 0, (";",), "x = f(a)"),
    ("a\nb\npartial", "deadline", 0, (), "a\nb"),                           # deadline: last complete line
    ("partial", "deadline", 1, (), ""),
    ("a\r\nb", "deadline", 0, (), "a"),
    ("abc", "length", 0, (), "abc"),
])
def test_finish_text(text, reason, max_lines, stops, want):
    assert finish_text(text, reason, max_lines, stops) == want


def test_text_cut_goes_on_until_the_rule_holds():
    assert text_cut("   \n  ", 1) is None
    assert text_cut("foo", 1) is None
    assert text_cut("foo\n", 1) == 3
    assert text_cut("a\nb", 2) is None


# -- prompts ------------------------------------------------------------------------------------------

def code(lines: int) -> str:
    out, i = [], 0
    while len(out) < lines:
        out += SAMPLE_CODE[i % len(SAMPLE_CODE)].replace("add", f"add{i}").splitlines()
        i += 1
    return "\n".join(out[:lines]) + "\n"


def test_prompt_layout(tok):
    b = PromptBuilder(tok)
    p = b.build("def f(x):\n    return ", "\n\nprint(f(1))\n", 512, [("pkg/util.py", "def helper():\n    pass\n")])
    ids, fim = p.ids, tok.fim
    assert ids[0] == tok.bos_id and ids[1] == fim["file_sep"] and ids[-1] == fim["middle"]
    s, pre = ids.index(fim["suffix"]), ids.index(fim["prefix"])
    assert 1 < s < pre < len(ids) - 1
    assert tok.decode(ids[2:s]) == "pkg/util.py\ndef helper():\n    pass\n"
    assert tok.decode(ids[s + 1:pre]) == "\n\nprint(f(1))\n"
    assert tok.decode(ids[pre + 1:-1]) == "def f(x):\n    return "
    assert p.context_files == ["pkg/util.py"] and len(ids) <= 512


def test_special_token_text_stays_text(tok):
    p = PromptBuilder(tok).build('s = "<|endoftext|><|fim_middle|>"\n', "", 256)
    body = p.ids[1:-1]
    assert tok.eos_id not in body and body.count(tok.fim["middle"]) == 0


def test_no_fim_tokenizer_uses_the_prefix(tok, monkeypatch):
    monkeypatch.setattr(tok, "fim", {"prefix": None, "suffix": None, "middle": None, "file_sep": None})
    p = PromptBuilder(tok).build("x = 1\ny = ", "\nz = 3\n", 256, [("a.py", "a = 1\n")])
    assert p.ids == [tok.bos_id] + tok.encode("x = 1\ny = ") and not p.fim


def test_budget_and_line_clipping(tok):
    b = PromptBuilder(tok)
    prefix, suffix = code(400), code(300)
    extra = [(f"m{i}.py", code(200)) for i in range(3)]
    p = b.build(prefix, suffix, 1024, extra)
    assert len(p.ids) <= 1024
    pre, mid = p.ids.index(tok.fim["prefix"]), len(p.ids) - 1
    kept = tok.decode(p.ids[pre + 1:mid])
    assert prefix.endswith(kept) and (kept == prefix or prefix[:-len(kept)].endswith("\n"))   # whole lines
    s = p.ids.index(tok.fim["suffix"])
    kept_suffix = tok.decode(p.ids[s + 1:pre])
    assert suffix.startswith(kept_suffix) and kept_suffix.endswith("\n")
    assert p.context_files and p.context_tokens >= 1024 * 0.2


def test_left_clip_is_stable_while_typing(tok):
    """Typing at the cursor keeps the clip point (it moves in CLIP_STEP-line steps): the new prompt
    extends the old one except for its last tokens, so the KV cache keeps almost everything."""
    b = PromptBuilder(tok)
    prefix, suffix = code(300), "\n" + code(20)
    extra = [("util.py", code(30))]
    first = b.build(prefix, suffix, 768, extra)
    assert first.prefix_clipped_lines > 0 and first.prefix_clipped_lines % CLIP_STEP == 0
    reuse = []
    typed = prefix
    for ch in "    value = compute(x)\n    ret":
        typed += ch
        nxt = b.build(typed, suffix, 768, extra)
        common = next((i for i, (a, c) in enumerate(zip(first.ids, nxt.ids)) if a != c), len(first.ids))
        reuse.append(common / len(first.ids))
        first = nxt
    assert sum(r > 0.95 for r in reuse) >= len(reuse) - 2, reuse


# -- workspace ----------------------------------------------------------------------------------------

def test_gitignore(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("# comment\n*.log\n!keep.log\n/build\ndata/\ndocs/**/*.tmp\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("local.py\n")
    gi = GitIgnore(tmp_path, ALWAYS_IGNORED)
    gi.load_dir(tmp_path / "sub")
    ig = lambda rel, d=False: gi.ignored(tmp_path / rel, d)  # noqa: E731
    assert ig("x.log") and ig("a/b/x.log") and not ig("keep.log")
    assert ig("build", True) and ig("build/x.py") and not ig("src/build/x.py")
    assert ig("data", True) and ig("a/data/x.py") and not ig("data.py")
    assert ig("docs/a/b/x.tmp") and not ig("docs/x.py")
    assert ig("sub/local.py") and not ig("local.py")
    assert ig("__pycache__/m.pyc") and ig(".venv/lib/x.py") and not ig("main.py")


def test_imports_resolve_within_the_workspace(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "util.py").write_text("def helper():\n    return 1\n")
    (tmp_path / "helpers.py").write_text("X = 1\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "sibling.py").write_text("Y = 2\n")
    main = tmp_path / "app" / "main.py"
    text = "import os, helpers as h\nfrom pkg import util\nfrom .sibling import Y\nimport numpy\n"
    main.write_text(text)
    assert python_imports(text) == [(0, "os", []), (0, "helpers", []), (0, "pkg", ["util"]), (1, "sibling", ["Y"]),
                                    (0, "numpy", [])]
    got = [p.relative_to(tmp_path).as_posix() for p in resolve_imports(text, main, tmp_path)]
    assert got == ["helpers.py", "pkg/__init__.py", "pkg/util.py", "app/sibling.py"]


def test_extra_files_order_and_filters(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / ".gitignore").write_text("secret.py\n")
    (tmp_path / "util.py").write_text("def util():\n    pass\n")
    (tmp_path / "blob.py").write_bytes(b"\x00\x01binary")
    (tmp_path / "big.py").write_text("x = 1\n" * 400)
    main = tmp_path / "main.py"
    main.write_text("import util\n")
    ws = Workspace(max_file_bytes=1024)
    ws.set_document("file:///b", str(tmp_path / "b.py"), "python", "B = 1\n", owner=1)
    ws.set_document("file:///a", str(tmp_path / "a.py"), "python", "A = 1\n", owner=2)
    ws.set_document("file:///s", str(tmp_path / "secret.py"), "python", "TOKEN = 1\n", owner=1)
    ws.set_document("file:///main", str(main), "python", "import util\n", owner=1)
    for name in ("blob.py", "big.py", "util.py"):
        ws.touch(tmp_path / name)
    labels = [label for label, _ in ws.extra_files(str(main), "file:///main", "import util\n")]
    assert labels == ["util.py", "a.py", "b.py"]     # imports, then open documents by path; recent: only util
    ws.drop_owner(1)
    labels = [label for label, _ in ws.extra_files(str(main), "file:///main", "")]
    assert labels == ["a.py", "util.py"]


def test_watchdog_reports_saved_files(tmp_path):
    from watchdog.observers import Observer
    obs = Observer()
    obs.start()
    try:
        (tmp_path / ".git").mkdir()
        (tmp_path / ".gitignore").write_text("*.log\n")
        ws = Workspace(observer=obs)
        ws.set_document("file:///m", str(tmp_path / "m.py"), "python", "x = 1\n")
        time.sleep(0.2)
        (tmp_path / "saved.py").write_text("def saved():\n    return 2\n")
        (tmp_path / "noise.log").write_text("log line\n")
        end = time.monotonic() + 5
        while str(tmp_path / "saved.py") not in ws.recent and time.monotonic() < end:
            time.sleep(0.05)
        assert str(tmp_path / "saved.py") in ws.recent and str(tmp_path / "noise.log") not in ws.recent
        ws.close()
    finally:
        obs.stop()


# -- the window layout (prefetch) ----------------------------------------------------------------------

def _common(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_window_layout_keeps_the_stable_part_across_moves(tok):
    """Window layout: extra files and the file's head first, identical for every cursor past the
    head; a move to another place prefills only the window (fewer tokens than the contiguous layout),
    typing at the cursor and Enter keep the whole prompt but its tail; the prompt fits the budget and
    its FIM part holds the cursor's neighbourhood."""
    b = PromptBuilder(tok)
    text = code(600)
    lines = text.split("\n")
    extra = [("util.py", code(40))]

    def at(line: int, layout: str):
        off = sum(len(x) + 1 for x in lines[:line]) + len(lines[line])
        return b.build(text[:off], text[off:], 1024, extra, layout=layout, label="pkg/mod.py")

    places = (300, 420, 540)
    for layout in ("window", "contiguous"):
        ps = [at(n, layout) for n in places]
        assert all(len(p.ids) <= 1024 for p in ps)
        if layout == "window":
            stable = ps[0].ids[:ps[0].stable_tokens]
            assert ps[0].stable_tokens > 1024 * 0.35 and "util.py" in ps[0].context_files
            assert all(p.ids[:p.stable_tokens] == stable for p in ps)
            window_move = [len(q.ids) - _common(p.ids, q.ids) for p, q in zip(ps, ps[1:])]
            head = tok.decode(stable)
            assert "pkg/mod.py\n" in head and lines[0] in head
            pre, mid = ps[1].ids.index(tok.fim["prefix"]), len(ps[1].ids) - 1
            assert text.split("\n")[420] in tok.decode(ps[1].ids[pre + 1:mid])
        else:
            contiguous_move = [len(q.ids) - _common(p.ids, q.ids) for p, q in zip(ps, ps[1:])]
    assert max(window_move) < min(contiguous_move), (window_move, contiguous_move)
    # Enter at the end of the line (what the cursor-idle prefetch prepares): only new tokens at the end
    p = at(300, "window")
    off = sum(len(x) + 1 for x in lines[:300]) + len(lines[300])
    q = b.build(text[:off] + "\n    ", text[off:], 1024, extra, layout="window", label="pkg/mod.py")
    assert len(q.ids) - _common(p.ids, q.ids) <= 8
    typed, reuse = text[:off] + "\n    ", []
    for ch in "value = compute(x)\n    return value":
        typed += ch
        r = b.build(typed, text[off:], 1024, extra, layout="window", label="pkg/mod.py")
        reuse.append(_common(q.ids, r.ids) / len(q.ids))
        q = r
    assert sum(x > 0.95 for x in reuse) >= len(reuse) - 1, reuse


def test_window_layout_near_the_top_and_without_fim_tokens(tok):
    b = PromptBuilder(tok)
    p = b.build("def f(x):\n    return ", "\n", 512, [], layout="window", label="a.py")
    assert p.stable_tokens == 1 and p.ids[1] == tok.fim["suffix"]       # no head: the window is the file
    assert tok.decode(p.ids[p.ids.index(tok.fim["prefix"]) + 1:-1]) == "def f(x):\n    return "


def test_token_bucket_bounds_the_prefetch_work():
    from daemon.admission import TokenBucket
    b = TokenBucket()
    assert b.take(3000, 2000, now=100.0) and not b.take(1500, 2000, now=100.0)   # 2 s of burst: 4000
    assert b.take(1000, 2000, now=100.0) and not b.take(100, 2000, now=100.01)
    assert b.take(1000, 2000, now=100.5)                    # refilled at 2000 tokens a second
    assert not b.take(1, 0, now=200.0)                      # rate 0: prefetch off
