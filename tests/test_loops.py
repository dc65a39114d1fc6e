"""The loop guard (textkit/loops.py) on the loops seen from the embedded model and on ordinary code
that repeats itself on purpose; its use as a stop rule (daemon.finish.text_cut) and in the LSP's
post-processing."""
from __future__ import annotations

import pytest

from daemon.finish import finish_text, text_cut
from textkit.loops import LITERAL_RUN, NAME_RUN, line_loop, loop_cut
from lsp import multiline, postprocess
from lsp.context import Context
from lsp.settings import Settings

ISSUE_LOOP = "def __init__(self, context, locals, locals, locals, locals, locals, locals"


@pytest.mark.parametrize("text, before, want", [
    # the loop from the issue: keep the first `locals`, drop the repeats
    (ISSUE_LOOP, "", "def __init__(self, context, locals"),
    # the loop began in what the user typed: the suggestion keeps nothing of the repeats
    ("locals, locals, locals)", "class A:\n    def __init__(self, context, locals, ", ""),
    ("locals, locals, locals, locals)", "    def __init__(self, context, ", "locals"),
    # one name again and again, with or without separators
    ("return self.x.x.x.x", "", "return self.x"),
    ("foo foo foo foo", "", "foo"),
    # a longer unit: a whole call repeated
    ("x = f(a) + f(a) + f(a) + f(a)", "", "x = f(a)"),
    # the same line again, and a pair of lines again (multi-line)
    ("    x = foo(a)\n    x = foo(a)\n    x = foo(a)\n", "def f():\n", "    x = foo(a)"),
    ("    a = g(1)\n    b = g(2)\n    a = g(1)\n    b = g(2)\n", "def f():\n", "    a = g(1)\n    b = g(2)"),
    # a first line that repeats the line above the cursor
    ("return total\n", "def f():\n    return total\n    ", ""),
    # a long row of one literal
    ("x = [" + ", ".join(["0"] * (LITERAL_RUN + 2)) + "]", "", "x = [0"),
])
def test_loops_are_cut_at_the_last_good_point(text, before, want):
    cut = loop_cut(text, before)
    assert cut is not None
    assert text[:cut] == want


@pytest.mark.parametrize("text, before", [
    ("a, b, c = 1, 2, 3", ""),
    ("x = [0, 0, 0, 0, 0, 0, 0, 0]", ""),             # short rows of literals are ordinary code
    ("return (None, None, None, None)", ""),
    ("grid = np.zeros((n, n, n))", ""),                # a name twice in a row: not yet a loop
    ("assert f(x, x) == g(x, x)", ""),
    ("# " + "-" * 70, ""),                             # rulers and closers are punctuation only
    ("print('=' * 40)", ""),
    ("        }\n    }\n}\n", ""),                      # closers at different depths are not repeats
    ("\n\n\n", "x = 1\n"),
    ("self.a = a\n        self.b = b\n        self.c = c\n", "    def __init__(self, a, b, c):\n        "),
    ("return self._foo(bar)", "    def g(self):\n        return self._foo(bar)\n        "),  # unfinished
])
def test_ordinary_repetition_is_not_cut(text, before):
    assert loop_cut(text, before) is None


def test_thresholds_count_occurrences_of_the_unit():
    # `, x` occurs NAME_RUN - 1 times after the first x: still fine; one more is a loop
    ok = "f(" + ", ".join(["x"] * NAME_RUN) + ")"
    bad = "f(" + ", ".join(["x"] * (NAME_RUN + 1)) + ")"
    assert line_loop(ok) is None
    assert line_loop(bad) == ok.index(",")


def test_a_loop_only_in_the_text_before_the_cursor_is_not_the_completions():
    before = "names = [a, a, a, a, a]\n"
    assert loop_cut("    return names\n", before) is None


def test_text_cut_with_the_guard_is_monotone_over_prefixes():
    """The engine stops at the first token whose text has a loop; every longer text has it too and
    the final cut is the same."""
    before = "class Frame:\n    "
    first = None
    for n in range(1, len(ISSUE_LOOP) + 1):
        c = text_cut(ISSUE_LOOP[:n], 1, (), before)
        if first is None and c is not None:
            first = n
        if first is not None:
            assert c == len("def __init__(self, context, locals"), n
    assert first is not None and first < len(ISSUE_LOOP)
    # without the guard (refactors) nothing is cut
    assert text_cut(ISSUE_LOOP, 1, ()) is None


def test_finish_text_cuts_a_loop_and_the_line_rule_still_holds():
    assert finish_text(ISSUE_LOOP + "\nmore", "length", 1, (), "") == "def __init__(self, context, locals"
    assert finish_text("x = 1\ny = 2", "eos", 1, (), "") == "x = 1"
    assert finish_text(ISSUE_LOOP, "length", 1, ()) == ISSUE_LOOP


def test_postprocess_cuts_loops_too():
    src = "class A:\n    def __init__(self, ctx, "
    ctx = Context.from_text(src, len(src))
    plan = multiline.plan(ctx, Settings())
    sug = postprocess.process("locals, locals, locals, locals, locals):", ctx, plan)
    assert sug.text == "locals"
    assert "repeat" in sug.reason
    sug = postprocess.process("ctx, ctx, ctx, ctx", ctx, plan)
    assert sug.text == ""
