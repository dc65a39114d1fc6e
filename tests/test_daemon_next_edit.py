"""`next_edit` through the real daemon (`python -m tricode daemon run`) on the embedded model: the
pattern of two same-shape edits proposed at the third place and verified by the model, supersede per
document, malformed requests answered with errors, and the pattern-only gate."""
from __future__ import annotations

import difflib
import tempfile
import time
from pathlib import Path

import pytest

import protocol
from protocol import NextEdit, NextEditResult, Status
from textkit.edits import changed_lines, region_lines
from tests.test_daemon import BASE_CONFIG, D, arun, running

OLD = ("class A(Base):\n"
       "    def f(self):\n"
       "        return super(A, self).f()\n"
       "\n"
       "    def g(self):\n"
       "        return super(A, self).g()\n"
       "\n"
       "    def h(self, x):\n"
       "        return super(A, self).h(x)\n")


def _diff(a: str, b: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), "a/widgets.py", "b/widgets.py", n=1))


def request(**kw) -> NextEdit:
    """The third place after the user removed `A, self` from the first two `super(...)` calls."""
    one = OLD.replace("super(A, self).f", "super().f")
    two = one.replace("super(A, self).g", "super().g")
    cursor = two.index("return super(A, self).h")
    start, end = region_lines(two, cursor)
    last_old, last_new = changed_lines(_diff(one, two))
    base = dict(doc="file:///w/widgets.py", version=3, path="widgets.py", text=two, cursor=cursor,
                region_start=start, region_end=end, history=(_diff(OLD, one), _diff(one, two)),
                last_old=last_old, last_new=last_new)
    return NextEdit(**{**base, **kw})


@pytest.fixture(scope="module")
def embedded_daemon():
    from engine.embedded_model import default_model
    model = default_model()
    if model is None:
        pytest.skip("the embedded model is not installed")
    base = Path(tempfile.mkdtemp(prefix="tne", dir="/tmp"))
    d = D(base, model)
    d.config.parent.mkdir(parents=True)
    d.config.write_text(BASE_CONFIG)
    with running(d, "--model", str(model)):
        yield d


def test_next_edit_proposes_the_third_place(embedded_daemon):
    async def go():
        c = await embedded_daemon.client("ne")
        r = await c.request(request())
        await c.close()
        return r
    frame = arun(go())
    res = protocol.decode_reply(frame)
    assert isinstance(res, NextEditResult), frame
    req = request()
    assert res.has_edit, frame
    after = req.text[:res.start] + res.text + req.text[res.end:]
    assert "return super().h(x)" in after and after.count("super(A, self)") == 0
    assert req.text[res.start:res.end] == "A, self" and res.text == ""
    assert res.source == "pattern" and res.format == "sweep_draft"
    # the model scored the edit above the copy (the gate), teacher-forced
    assert res.confidence < 0 and res.copy_logprob < 0
    assert res.prompt_tokens > 50 and res.total_ms > 0


def test_no_edit_where_nothing_repeats_and_never_an_undo(embedded_daemon):
    req = request()
    text = req.text + "".join(f"y{i} = {i}\n" for i in range(12))
    cursor = text.index("y6 = 6")
    start, end = region_lines(text, cursor)
    plain = dict(text=text, cursor=cursor, region_start=start, region_end=end)
    # the user's newest edit removed `A, self` at line 5; a history whose last edit ADDED it back must not
    # be proposed again where it was removed (an undo): the region at the second place
    one = OLD.replace("super(A, self).f", "super().f")
    cur2 = one.index("return super(A, self).g")
    s2, e2 = region_lines(one, cur2)
    undo = dict(text=one, cursor=cur2, region_start=s2, region_end=e2, history=(_diff(one, OLD), _diff(OLD, one)),
                last_old=changed_lines(_diff(OLD, one))[0], last_new=changed_lines(_diff(OLD, one))[1])

    async def go():
        c = await embedded_daemon.client("ne2")
        r1 = await c.request(request(**plain))
        r2 = await c.request(request(**undo))
        await c.close()
        return r1, r2
    r1, r2 = arun(go())
    assert r1["type"] == "next_edit_result" and r1["start"] == -1 and r1["reason"] in ("no_pattern", "gate", "lines", "loop", "same"), r1
    assert r2["type"] == "next_edit_result", r2
    if r2["start"] >= 0:       # whatever is proposed, it is not putting back what the user just removed
        after = one[:r2["start"]] + r2["text"] + one[r2["end"]:]
        assert after != OLD


def test_superseded_and_malformed_next_edits_are_answered(embedded_daemon):
    async def go():
        c = await embedded_daemon.client("ne3")
        # two requests for one document back to back: the older is answered SUPERSEDED, the newer served
        _, first = c.submit(request())
        _, second = c.submit(request())
        r_first, r_second = await first, await second
        # another document's request does not supersede
        _, a = c.submit(request(doc="file:///w/a.py"))
        _, b = c.submit(request(doc="file:///w/b.py"))
        r_a, r_b = await a, await b
        bad_region = await c.request(request(region_start=10, region_end=10_000))
        bad_cursor = await c.request(request(cursor=-1))
        bad_type = await c.request({"type": "next_edit", "text": 5})
        st = await c.request(Status())
        await c.close()
        return r_first, r_second, r_a, r_b, bad_region, bad_cursor, bad_type, st
    t0 = time.perf_counter()
    r_first, r_second, r_a, r_b, bad_region, bad_cursor, bad_type, st = arun(go())
    assert r_first["type"] == "error" and r_first["code"] == protocol.SUPERSEDED, r_first
    assert r_second["type"] == "next_edit_result" and r_second["start"] >= 0, r_second
    assert r_a["type"] == r_b["type"] == "next_edit_result"
    for bad, words in ((bad_region, "region"), (bad_cursor, "cursor"), (bad_type, "next_edit.text")):
        assert bad["type"] == "error" and bad["code"] == protocol.BAD_REQUEST and words in bad["message"], bad
    assert st["superseded"] >= 1 and st["served_by_kind"].get("next_edit", 0) >= 3
    assert time.perf_counter() - t0 < 60


def test_pattern_gate_answers_without_the_model(embedded_daemon):
    embedded_daemon.config.write_text(BASE_CONFIG + 'next_edit_gate = "pattern"\n')
    try:
        deadline = time.monotonic() + 20
        while embedded_daemon.status()["config"]["values"].get("next_edit_gate") != "pattern":
            assert time.monotonic() < deadline, embedded_daemon.status()["config"]
            time.sleep(0.2)

        async def go():
            c = await embedded_daemon.client("ne4")
            r = await c.request(request())
            await c.close()
            return r
        r = arun(go())
        assert r["type"] == "next_edit_result" and r["format"] == "pattern" and r["text"] == "", r
        assert r["prompt_tokens"] == 0 and r["forwards"] == 0 and r["start"] >= 0
    finally:
        embedded_daemon.config.write_text(BASE_CONFIG)
        time.sleep(1.5)
