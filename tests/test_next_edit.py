"""Next-edit suggestions, torch-free parts: smallest_edit, the undo check, the region, the history's
generalised patterns (daemon/edit_pattern.py), the prompt formats, and the eval's expected region."""
import pytest

from daemon import next_edit_prompt as nep
from textkit.edit_pattern import apply_rules, rules_from_edit
from lsp.edit_history import make_edit

SRC = ("class A(Base):\n"
       "    def f(self):\n"
       "        return super(A, self).f()\n"
       "\n"
       "    def g(self):\n"
       "        return super(A, self).g()\n")


@pytest.mark.parametrize("old,new", [
    ("abc", "abc"), ("abc", "aXc"), ("abc", "abXc"), ("abc", "ac"), ("", "x"), ("x", ""),
    ("super(A, self).f()", "super().f()"), ("aaaa", "aaa"), ("ab\ncd\n", "ab\nXcd\nY\n")])
def test_smallest_edit(old, new):
    a, b, t = nep.smallest_edit(old, new)
    assert old[:a] + t + old[b:] == new
    # smallest: no shorter replacement exists at either end
    if old != new:
        assert not (a < b and t and old[a] == t[0]) and not (a < b and t and old[b - 1] == t[-1])
    else:
        assert (a, b, t) == (0, 0, "")
    assert nep.smallest_edit("super(A, self).f()", "super().f()") == (6, 13, "")


def test_undoes_last():
    region = "x = 1\n        return super().f()\n"
    undone = "x = 1\n        return super(A, self).f()\n"
    old, new = "        return super(A, self).f()\n", "        return super().f()\n"
    assert nep.undoes_last(region, undone, old, new)
    assert not nep.undoes_last(region, region, old, new)
    assert not nep.undoes_last(region, "x = 2\n        return super().f()\n", old, new)


def test_regions_are_whole_lines_around_the_cursor():
    text = "".join(f"line {i}\n" for i in range(40))
    cursor = text.index("line 10") + 3
    s, e = nep.region_lines(text, cursor)
    assert text[s:e] == "".join(f"line {i}\n" for i in range(8, 16))
    s, e = nep.region_lines(text, 2)            # the first line: nothing above
    assert text[s:e].startswith("line 0\n") and text[s:e].count("\n") == 6
    s, e = nep.region_tokens(text, cursor, budget=40)
    assert s <= text.index("line 10") < e and (e - s) <= 40 * nep.CHARS_PER_TOKEN
    assert text[s:e].endswith("\n") and (s == 0 or text[s - 1] == "\n")


def test_patterns_generalise_names_and_anchor_on_keywords():
    rules = rules_from_edit("        return super(A, self).f()\n", "        return super().f()\n")
    assert apply_rules("    x = super(Other, self).g(1)", rules) == "    x = super().g(1)"
    rules = rules_from_edit("    s = u'abc'\n", "    s = 'abc'\n")
    assert apply_rules("f(u'x', menu'y')", rules) == "f('x', menu'y')"      # `menu'` is not a u prefix
    rules = rules_from_edit("    print x\n", "    print(x)\n")
    assert apply_rules("  print y", rules) == "  print(y)"
    assert apply_rules("  print(y)", rules) == "  print(y)"                  # already done: unchanged


def test_draft_from_history_diffs_and_first_line_only():
    first = SRC.replace("super(A, self).f()", "super().f()")
    diff = make_edit("file:///p/a.py", SRC, first).diff
    region = first[first.index("    def g"):]
    assert nep.draft(region, [diff]) == region.replace("super(A, self)", "super()")
    two = region + "        super(A, self).h()\n"
    assert nep.draft(two, [diff], first_line_only=True).count("super(A, self)") == 1


@pytest.mark.parametrize("fmt", nep.FORMATS)
def test_prompt_formats(fmt):
    first = SRC.replace("super(A, self).f()", "super().f()")
    diff = make_edit("file:///p/a.py", SRC, first).diff
    cursor = first.index("        return super(A, self).g")
    s, e = nep.region_lines(first, cursor)
    p = nep.build(fmt, path="p/a.py", text=first, cursor=cursor, region_start=s, region_end=e, history=[diff])
    assert first[s:e] in p.text.replace(nep.CURSOR, "")
    assert p.parse("    x\n" + p.stop[0] + "junk") == "    x\n"
    if fmt == "zeta":
        assert nep.CURSOR in p.text and p.text.endswith(nep.START + "\n")
    if fmt.startswith("sweep"):
        assert ("original:\n    def f(self):\n        return super(A, self).f()\n\n"
                "updated:\n    def f(self):\n        return super().f()\n\n") in p.text
        assert p.text.endswith("updated:\n")
    if fmt == "sweep_draft":
        assert "suggested:\n" in p.text and "super().g()" in p.text.split("suggested:\n")[1]
    with pytest.raises(ValueError, match="unknown next-edit format"):
        nep.build("nope", path="p", text=first, cursor=0, region_start=0, region_end=1, history=[])


def test_diff_sides_round_trip():
    first = SRC.replace("super(A, self).f()", "super().f()")
    e = make_edit("file:///p/a.py", SRC, first)
    path, old, new = nep.diff_sides(e.diff)
    assert path == "/p/a.py" and e.old in old and e.new in new and old.replace(e.old, e.new) == new
    assert nep.changed_lines(e.diff) == (e.old, e.new)


def test_rule_support_counts_repeated_edits():
    from textkit.edit_pattern import rules_from_history
    one = ("        return super(A, self).f()\n", "        return super().f()\n")
    two = ("        x = super(B, self).g()\n", "        x = super().g()\n")
    other = ("    s = u'abc'\n", "    s = 'abc'\n")
    assert len(rules_from_history([one, other])) == 2
    assert rules_from_history([one, other], min_support=2) == []
    kept = rules_from_history([one, other, two], min_support=2)
    assert len(kept) == 1 and kept[0].apply("super(C, cls).h") == "super().h"


def test_rules_that_match_nearly_anything_are_dropped():
    assert rules_from_edit("    a = b\n", "    a = c\n") == []          # one bare name for another
    assert rules_from_edit("    s = u'x'\n", "    s = 'x'\n")              # `u'` is two literal characters


# -- the daemon's choice (daemon/next_edit_run.py), without a model -------------------------------------------

def _msg(text: str, cursor_at: str, history: tuple[str, ...], last=("", "")):
    import protocol
    cur = text.index(cursor_at)
    s, e = nep.region_lines(text, cur)
    return protocol.NextEdit(id=1, doc="file:///a.py", text=text, cursor=cur, region_start=s, region_end=e,
                             history=history, last_old=last[0], last_new=last[1])


def _hist(a: str, b: str) -> str:
    import difflib
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "a/a.py", "b/a.py", n=1))


def test_next_edit_run_refusals_and_choice():
    from daemon import next_edit_run as ner
    old = "print name\nprint total\nx = 1\n"
    one = old.replace("print name", "print(name)")
    req = _msg(one, "print total", (_hist(old, one),))
    pred = ner.predict(None, None, req)              # no model: the pattern candidate, unscored
    best, why = ner.choose(pred)
    assert best is not None and best.source == "pattern" and "print(total)" in best.rewrite and why == ""
    # the pattern and a model rewrite scored against the copy: below the margin -> no edit; the pattern
    # first when both pass, whatever their order of score
    pred.scored, pred.copy_total = True, -10.0
    pred.candidates = [ner.Candidate("pattern", best.rewrite, total=-15.0),
                       ner.Candidate("model", one.replace("x = 1", "x = 2"), total=-9.0)]
    assert ner.choose(pred, margin=0.0)[0].source == "model"
    assert ner.choose(pred, margin=2.0) == (None, "gate")
    assert ner.choose(pred, margin=-6.0)[0].source == "pattern"
    # an undo of the user's newest edit, an edit over the line budget, an edit that repeats itself
    region = req.text[req.region_start:req.region_end]
    assert ner._why_not(region, region, req) == "same"
    undo = _msg(one, "print total", (), last=("print name\n", "print(name)\n"))
    assert ner._why_not(region, region.replace("print(name)", "print name"), undo) == "undo"
    assert ner._why_not(region, "a\nb\nc\nd\ne\nf\n", req) == "lines"
    assert ner._why_not("x = 1\n", "x = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1\n", req) == "loop"
    assert ner.check(_msg(one, "print total", ())) is None
    import dataclasses
    assert "region" in ner.check(dataclasses.replace(req, region_end=len(one) + 5))
    assert "cursor" in ner.check(dataclasses.replace(req, cursor=-2))
