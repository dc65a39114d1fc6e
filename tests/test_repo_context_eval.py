"""The repository-context evaluation's case generator and scoring (scripts/repo_context_eval.py) on a
small real package tree made here (the held-out sdists themselves are downloaded by the script)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "repo_context_eval", Path(__file__).resolve().parent.parent / "scripts" / "repo_context_eval.py")
ev = importlib.util.module_from_spec(_spec)
sys.modules["repo_context_eval"] = ev
_spec.loader.exec_module(ev)

HELPERS = '''"""Helpers."""


def clamp_value(x, lo, hi):
    return max(lo, min(hi, x))


class Registry:
    def register_item(self, name, item):
        self.items[name] = item
'''

CORE = '''from .helpers import clamp_value, Registry


def scale(values, factor):
    out = []
    for v in values:
        out.append(clamp_value(v * factor, 0, 100))
    return out


def build(names):
    reg = Registry()
    for n in names:
        reg.register_item(n, len(n))
    total = len(names)
    return reg, total
'''


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "toypkg-1.0"
    (root / "toypkg").mkdir(parents=True)
    (root / "toypkg" / "__init__.py").write_text("")
    (root / "toypkg" / "helpers.py").write_text(HELPERS)
    (root / "toypkg" / "core.py").write_text(CORE)
    (root / "tests").mkdir()
    (root / "tests" / "test_core.py").write_text("from toypkg.core import scale\n\nscale([1], 2)\n")
    return root


PACKAGES = (("toypkg", "1.0", "", "toypkg"),)


def test_cases_are_cross_file_lines(pkg):
    cases = ev.make_cases({"toypkg": pkg}, 10, seed=0, packages=PACKAGES)
    got = {(c.path, c.target, tuple(c.names)) for c in cases}
    # the lines that use a name another file defines, and only those (not `total = len(names)`,
    # not the import, not the tests' files)
    assert got == {("toypkg/core.py", "out.append(clamp_value(v * factor, 0, 100))", ("clamp_value",)),
                   ("toypkg/core.py", "reg = Registry()", ("Registry",)),
                   ("toypkg/core.py", "reg.register_item(n, len(n))", ("register_item",))}
    for c in cases:
        prefix, suffix, held = ev.case_text(pkg, c)
        lines = (pkg / c.path).read_text().split("\n")
        assert lines[c.line] == c.indent + c.target
        assert held.split("\n")[c.line] == c.indent and c.target not in held
        assert prefix.endswith("\n" + c.indent) and held == prefix + suffix


def test_sample_is_seeded(pkg):
    for i in range(30):
        (pkg / "toypkg" / f"user{i}.py").write_text(
            f"from .helpers import clamp_value\n\n\ndef f{i}(x):\n    return clamp_value(x, {i}, 99)\n")
    a = ev.make_cases({"toypkg": pkg}, 12, seed=1, packages=PACKAGES)
    b = ev.make_cases({"toypkg": pkg}, 12, seed=1, packages=PACKAGES)
    c = ev.make_cases({"toypkg": pkg}, 12, seed=2, packages=PACKAGES)
    assert len(a) == 12 and [x.id for x in a] == [x.id for x in b] and [x.id for x in a] != [x.id for x in c]


def test_evaluate_with_and_without_context(pkg):
    cases = ev.make_cases({"toypkg": pkg}, 10, seed=0, packages=PACKAGES)

    def completer(case, prefix, suffix, context, today):
        """Answers right only when the snippets hold the used name's definition."""
        text = "".join(t for _, t in context)
        return case.target if all(f"def {n}" in text or f"class {n}" in text for n in case.names) else "pass"

    res = ev.evaluate({"toypkg": pkg}, cases, 200, completer, with_today=False)
    s = res["summary"]
    assert s["cases"] == 3 and s["def_hit"] == 1.0
    assert s["exact_off"] == 0.0 and s["exact_on"] == 1.0
    assert s["edit_sim_on"] == 1.0 and s["edit_sim_off"] < 0.5
    assert 0 < s["tokens_added_mean"] <= 200
    # today's context: core.py imports helpers.py, so with it the snippets hold nothing new
    res = ev.evaluate({"toypkg": pkg}, cases, 200, completer)
    assert not any(r.startswith("toypkg/helpers.py") for row in res["rows"] for r in row["ranges"])
    assert res["summary"]["exact_on"] == 0.0
    assert ev.today_context(pkg, cases[0], (pkg / "toypkg/core.py").read_text())[0][0] == "toypkg/helpers.py"
    # the tree is left as it was
    assert (pkg / "toypkg" / "core.py").read_text() == CORE
