"""Repository context wired into the daemon's stages, without a daemon process or a model: the
workspace's per-root indexes (a real watchdog observer, real files), the prompt's repository entries
(the tiny tokenizer) and the config keys. The end-to-end run through the daemon is in test_daemon.py."""
import json
import os
import time
from pathlib import Path

import pytest

from daemon import prompt as layouts
from daemon.config import Config, parse
from daemon.prompt import PromptBuilder, protect_special_tokens
from daemon.repo_context import MAX_INDEXED_ROOTS, indexable_root, prompt_repo, reported
from daemon.workspace import Workspace
from protocol import Complete
from textkit.tokenizer import Tokenizer
from tests.tiny_checkpoint import tiny_tokenizer

GEOMETRY = '''"""Vectors."""


def scale_vector(vec, factor):
    """Every component of vec times factor."""
    return [v * factor for v in vec]


def dot_product(a, b):
    return sum(x * y for x, y in zip(a, b))
'''

SHAPES = '''from pkg.geometry import scale_vector


class Square:
    def __init__(self, side):
        self.side = side

    def corners(self):
        return [(0, 0), (self.side, 0), (self.side, self.side), (0, self.side)]
'''

MAIN_HEAD = '''from pkg import shapes


def grow(points, k):
    out = []
    for p in points:
        out.append(scale_vector(p, k))
    return out


def report(points):
'''


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer().save(str(d / "tokenizer.json"))
    (d / "config.json").write_text(json.dumps({"eos_token_id": 0, "bos_token_id": 0, "mask_token_id": 1}))
    t = Tokenizer(d)
    protect_special_tokens(t)
    return t


@pytest.fixture
def observer():
    from watchdog.observers import Observer
    obs = Observer()
    obs.start()
    yield obs
    obs.stop()
    obs.join(5)


def make_project(root: Path) -> Path:
    """A project whose app/main.py calls a helper defined in pkg/geometry.py (imported by neither the
    file nor what it imports directly: two files away)."""
    (root / ".git").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "geometry.py").write_text(GEOMETRY)
    (root / "pkg" / "shapes.py").write_text(SHAPES)
    (root / "app").mkdir()
    main = root / "app" / "main.py"
    main.write_text(MAIN_HEAD + "    return None\n")
    return main


def wait_built(ws: Workspace, files: int, timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = ws.repo.status()
        if st and not st[0]["building"] and st[0]["files"] >= files and st[0]["watched"]:
            return st[0]
        time.sleep(0.05)
    raise AssertionError(f"the index was not built: {ws.repo.status()}")


def test_workspace_indexes_its_project_roots(tmp_path, observer):
    main = make_project(tmp_path / "proj")
    loose = tmp_path / "loose"          # no project marker: not indexed (it could be /tmp or a home dir)
    loose.mkdir()
    (loose / "x.py").write_text("X = 1\n")
    ws = Workspace(observer=observer, repo_context=True)
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        ws.set_document((loose / "x.py").as_uri(), str(loose / "x.py"), "python", "X = 1\n")
        st = wait_built(ws, 4)
        assert st["root"] == str((tmp_path / "proj").resolve()) and len(ws.repo.status()) == 1
        assert st["chunks"] >= 3 and st["definitions"] >= 5 and st["memory_bytes"] > 0
        # the root's recursive watch serves the directory's files: no second per-directory watch
        assert main.parent.resolve() not in ws._watches
        assert ws.repo.recency.ranks()[str(main.resolve())][1] == "view"
        # a completion decoding holds the build; done, it goes on
        ws.hold_index(True)
        assert all(e.index.hold.is_set() for e in ws.repo._roots.values())
        ws.hold_index(False)
        assert not any(e.index.hold.is_set() for e in ws.repo._roots.values())
        # the helper two files away is found for a cursor below its use
        text = MAIN_HEAD + "    "
        snippets = ws.repo.snippets(str(main), text, text.count("\n"), 400)
        assert any(s.label == "pkg/geometry.py" and s.why.startswith("definition of scale_vector")
                   for s in snippets), snippets
    finally:
        ws.close()
    assert ws.repo is None and not any(t.name.startswith("repo-index") for t in __import__("threading").enumerate())


def test_saved_file_is_searchable_within_a_second_and_broken_files_never_fail(tmp_path, observer):
    main = make_project(tmp_path / "proj")
    root = tmp_path / "proj"
    (root / "blob.py").write_bytes(b"\x00\x01binary" * 100)
    (root / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (root / "huge.py").write_text("x = 1\n" * 400_000)            # 2.4 MB > max_file_kb
    (root / "loop").symlink_to(root)                              # a symlink loop
    (root / "dangling.py").symlink_to(root / "nowhere.py")
    locked = root / "locked.py"
    locked.write_text("SECRET = 1\n")
    locked.chmod(0)
    ws = Workspace(max_file_bytes=64 * 1024, observer=observer, repo_context=True)
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        st = wait_built(ws, 4)
        assert st["files"] <= 6 and sum(st["skipped"].values()) >= 3, st
        text = MAIN_HEAD + "    summary = fresh_helper_fn(points)\n    "
        line = text.count("\n")
        assert not any("fresh" in s.label for s in ws.repo.snippets(str(main), text, line, 400))
        t0 = time.monotonic()
        (root / "pkg" / "fresh.py").write_text("def fresh_helper_fn(points):\n    return len(points)\n")
        found = None
        while time.monotonic() - t0 < 3 and not found:
            found = [s for s in ws.repo.snippets(str(main), text, line, 400) if s.label == "pkg/fresh.py"]
            time.sleep(0.01)
        took = time.monotonic() - t0
        assert found and took < 1.0, (found, took)
        # a file deleted, one that vanishes while it is read back: the snippets go, nothing raises
        (root / "pkg" / "fresh.py").unlink()
        (root / "pkg" / "geometry.py").unlink()
        end = time.monotonic() + 3
        while time.monotonic() < end:
            got = ws.repo.snippets(str(main), text, line, 400)
            if not any(s.label in ("pkg/fresh.py", "pkg/geometry.py") for s in got):
                break
            time.sleep(0.02)
        assert not any(s.label in ("pkg/fresh.py", "pkg/geometry.py") for s in got)
    finally:
        locked.chmod(0o644)
        ws.close()


def test_roots_beyond_the_limit_close_their_indexes(tmp_path, observer):
    ws = Workspace(observer=observer, repo_context=True)
    try:
        mains = [make_project(tmp_path / f"p{i}") for i in range(MAX_INDEXED_ROOTS + 1)]
        first = None
        for m in mains:
            ws.set_document(m.as_uri(), str(m), "python", m.read_text())
            if first is None:
                first = next(iter(ws.repo._roots.values())).index
        assert len(ws.repo.roots()) == MAX_INDEXED_ROOTS
        assert (tmp_path / "p0").resolve() not in ws.repo.roots()
        first.wait(5)
        assert not first.building
        ws.set_repo_context(False)          # config: repo_context = false closes them all
        assert ws.repo is None
    finally:
        ws.close()
    assert indexable_root(tmp_path / "p1") and not indexable_root(Path.home()) and not indexable_root(Path("/"))


def _fim_start(tok, ids: list[int]) -> int:
    return len(ids) - 1 - ids[::-1].index(tok.fim["suffix"])


def test_keystrokes_within_a_line_keep_the_prompt_up_to_the_window(tmp_path, observer, tok):
    """The KV-reuse property: two consecutive keystrokes within a line give the same prompt up to the
    cursor's window (the extra files, the head and the repository snippets), in both layouts; the
    snippets fit their share, and the other shares shrink by exactly that share."""
    main = make_project(tmp_path / "proj")
    ws = Workspace(observer=observer, repo_context=True)
    b = PromptBuilder(tok)
    cfg = Config()
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        wait_built(ws, 4)
        body = "".join(f"    value_{i} = compute_{i}(points)\n" for i in range(60))
        body += "    moved = scale_vector(points, 2)\n"
        suffix = "\n    return total\n"
        for layout in ("window", "contiguous"):
            prompts = []
            for typed in ("    total = scale_vec", "    total = scale_vect"):
                msg = Complete(doc=main.as_uri(), prefix=MAIN_HEAD + body + typed, suffix=suffix, path=str(main))
                extra = ws.extra_files(msg.path, msg.doc, msg.prefix + msg.suffix)
                repo, repo_budget, snippets = prompt_repo(ws, tok, cfg, msg, 512, extra, layout)
                p = b.build(msg.prefix, msg.suffix, 512, extra, layout=layout, label="app/main.py",
                            repo=repo, repo_budget=repo_budget)
                p.repo_context = reported(p, snippets)
                prompts.append(p)
            p1, p2 = prompts
            assert repo_budget == int(512 * cfg.repo_context_tokens)
            assert p1.repo_tokens > 0 and 0 < p1.repo_tokens <= repo_budget + 1 and len(p1.ids) <= 512
            assert [r["path"] for r in p1.repo_context] and all(r["path"] in p1.repo_files for r in p1.repo_context)
            assert any(r["path"] == "pkg/geometry.py" for r in p1.repo_context), p1.repo_context
            i1, i2 = _fim_start(tok, p1.ids), _fim_start(tok, p2.ids)
            if layout == "window":      # the file's head is there, before the snippets
                assert p1.prefix_clipped_lines > 0 and 1 < p1.stable_tokens < i1
            assert i1 == i2 and p1.ids[:i1] == p2.ids[:i2], layout
            assert "def scale_vector(vec, factor):" in tok.decode(p1.ids[:i1])
            # without the snippets the prompt has the whole budget, and the same cursor part
            p0 = b.build(p1_prefix := MAIN_HEAD + body + "    total = scale_vec", suffix, 512 - repo_budget,
                         ws.extra_files(str(main), main.as_uri(), p1_prefix + suffix), layout=layout,
                         label="app/main.py")
            assert p0.ids[_fim_start(tok, p0.ids):] == p1.ids[i1:]
    finally:
        ws.close()


def test_qwen_layout_renders_the_snippets_as_file_sep_blocks(tmp_path, observer, tok):
    main = make_project(tmp_path / "proj")
    ws = Workspace(observer=observer, repo_context=True)
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        wait_built(ws, 4)
        msg = Complete(doc=main.as_uri(), prefix=MAIN_HEAD + "    ", suffix="\n", path=str(main))
        repo, repo_budget, snippets = prompt_repo(ws, tok, Config(), msg, 1024, [], "contiguous")
        p = PromptBuilder(tok).build(msg.prefix, msg.suffix, 1024, [], fim=True, repo=repo, repo_budget=repo_budget)
        text = layouts.render("qwen", p, tok, str(main))
        assert text.startswith("<|repo_name|>proj\n<|file_sep|>")
        assert "<|file_sep|>pkg/geometry.py\n" in text and "def scale_vector(vec, factor):" in text
        assert text.index("<|file_sep|>pkg/geometry.py") < text.index("<|file_sep|>main.py\n<|fim_prefix|>")
    finally:
        ws.close()


def test_repo_context_off_and_config_keys(tmp_path, observer, tok):
    cfg, problems = parse({"repo_context": False, "repo_context_tokens": 0.25})
    assert not problems and cfg.repo_context is False and cfg.repo_context_tokens == 0.25
    for bad in (0.9, -0.1, "lots", True):
        cfg, problems = parse({"repo_context_tokens": bad})
        assert len(problems) == 1 and "repo_context_tokens" in problems[0] and cfg.repo_context_tokens == 0.3
    cfg, problems = parse({"repo_context": "yes"})
    assert problems and cfg.repo_context is True
    main = make_project(tmp_path / "proj")
    ws = Workspace(observer=observer, repo_context=False)
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        assert ws.repo is None
        msg = Complete(doc=main.as_uri(), prefix=MAIN_HEAD + "    ", suffix="\n", path=str(main))
        assert prompt_repo(ws, tok, Config(), msg, 1024, [], "window") == ([], 0, [])
    finally:
        ws.close()
    assert os.path.exists(main)


def test_pretrained_format_takes_definitions_in_the_repository_format(tmp_path, observer, real_gguf):
    """The real model's inline format (prefix-only FIM, fim.BEST_FORMAT) with the real Qwen2.5-Coder
    vocabulary: the snippets are the definitions/signatures only, within fim.REPO_SNIPPET_TOKENS, laid
    out as <|repo_name|> + <|file_sep|> blocks before the current file's <|file_sep|>path and its FIM
    part; a keystroke within the line keeps every token before <|fim_prefix|>; the FIM part is the
    one the prompt has without snippets at the budget less their share; a format that was not
    measured with snippets (fim-short) gets none."""
    from daemon.prompt import fim
    gtok = Tokenizer(real_gguf)
    assert layouts.pretrained_format(gtok) == "fim-prefix"
    main = make_project(tmp_path / "proj")
    ws = Workspace(observer=observer, repo_context=True)
    b = PromptBuilder(gtok, "fim-prefix")
    cfg, problems = parse({"repo_context_pretrained": True})
    assert not problems
    fim_prefix = gtok.special_tokens["<|fim_prefix|>"]
    try:
        ws.set_document(main.as_uri(), str(main), "python", main.read_text())
        wait_built(ws, 4)
        body = "".join(f"    value_{i} = compute_{i}(points)\n" for i in range(20))
        body += "    moved = scale_vector(points, 2)\n"
        prompts = []
        for typed in ("    total = dot", "    total = dot_pr"):
            msg = Complete(doc=main.as_uri(), prefix=MAIN_HEAD + body + typed, suffix="\n    return total\n",
                           path=str(main))
            repo, repo_budget, snippets = prompt_repo(ws, gtok, cfg, msg, 1024, [], "contiguous", "fim-prefix")
            assert repo_budget == fim.REPO_SNIPPET_TOKENS
            assert snippets and all(s.why.startswith(("definition of", "signature of")) for s in snippets)
            p = b.build(msg.prefix, msg.suffix, 1024, [], repo=repo, repo_budget=repo_budget,
                        label="app/main.py", repo_name="proj")
            p.repo_context = reported(p, snippets)
            prompts.append(p)
        p1, p2 = prompts
        text = gtok._tok.decode(p1.ids, skip_special_tokens=False)
        assert text.startswith("<|repo_name|>proj\n<|file_sep|>pkg/geometry.py\n"), text[:200]
        assert "def scale_vector(vec, factor):" in text
        assert text.index("def scale_vector") < text.index("<|file_sep|>app/main.py\n<|fim_prefix|>")
        assert text.endswith("    total = dot<|fim_suffix|><|fim_middle|>")      # prefix-only, indentation kept
        assert 0 < p1.repo_tokens <= fim.REPO_SNIPPET_TOKENS + 16 and p1.repo_files == ["pkg/geometry.py"]
        assert [r["path"] for r in p1.repo_context] == ["pkg/geometry.py"]
        i1, i2 = p1.ids.index(fim_prefix), p2.ids.index(fim_prefix)
        assert i1 == i2 and p1.ids[:i1] == p2.ids[:i2]
        p0 = b.build(MAIN_HEAD + body + "    total = dot", "\n", 1024 - fim.REPO_SNIPPET_TOKENS, [])
        assert p0.ids == p1.ids[i1:] and p0.repo_tokens == 0
        # a format measured without snippets, and repository context off: nothing
        assert prompt_repo(ws, gtok, cfg, msg, 1024, [], "contiguous", "fim-short") == ([], 0, [])
        off, _ = parse({"repo_context": False})
        assert prompt_repo(ws, gtok, off, msg, 1024, [], "contiguous", "fim-prefix") == ([], 0, [])
        assert Config().repo_context_pretrained is False      # the default: measured no gain (docs)
        assert prompt_repo(ws, gtok, Config(), msg, 1024, [], "contiguous", "fim-prefix") == ([], 0, [])
        off, problems = parse({"repo_context_pretrained": False})
        assert not problems and prompt_repo(ws, gtok, off, msg, 1024, [], "contiguous", "fim-prefix") == ([], 0, [])
        assert prompt_repo(ws, gtok, off, msg, 1024, [], "contiguous")[2]    # the tricode layouts keep theirs
    finally:
        ws.close()
