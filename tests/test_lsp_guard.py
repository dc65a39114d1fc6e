"""Fast checks of the pieces behind "every request answered": lsp/guard.py (structuring with strict
ints and named fields, rate-limited logs) and lsp/documents.py (changes past the end clamped and
counted, lone surrogates replaced without moving positions). The end-to-end checks over stdio are in
test_lsp_fuzz.py."""
from __future__ import annotations

import logging
from types import SimpleNamespace as NS

from pygls.lsp.server import LanguageServer

from lsp.documents import UTF8, UTF16, DocumentStore, clean_text
from lsp.guard import GuardedProtocol, Invalid, RateLimitedLog, RateLimitFilter


def protocol() -> GuardedProtocol:
    return LanguageServer("t", "0", protocol_cls=GuardedProtocol).protocol


def inline(position, **extra) -> dict:
    params = {"textDocument": {"uri": "file:///a.py"}, "position": position, "context": {"triggerKind": 1}}
    return {"jsonrpc": "2.0", "id": 1, "method": "textDocument/inlineCompletion", "params": {**params, **extra}}


def test_structuring_names_the_bad_fields():
    p = protocol()
    ok = p.structure_message(inline({"line": 3, "character": 2}))
    assert not isinstance(ok, Invalid) and ok.params.position.line == 3
    assert type(ok.params.context.trigger_kind).__name__ == "InlineCompletionTriggerKind"
    cases = {
        "params.position.line: expected an integer, got str \"3\"": inline({"line": "3", "character": 0}),
        "params.position.character: expected an integer, got 1.5": inline({"line": 0, "character": 1.5}),
        "params.position.line: expected an integer, got bool true": inline({"line": True, "character": 0}),
        "but was -1": inline({"line": -1, "character": 0}),
        "params.context.triggerKind: 9 is not a valid InlineCompletionTriggerKind":
            inline({"line": 0, "character": 0}, context={"triggerKind": 9}),
    }
    for want, msg in cases.items():
        bad = p.structure_message(msg)
        assert isinstance(bad, Invalid) and want in bad.problem, (want, getattr(bad, "problem", bad))
    missing = inline({"line": 0, "character": 0})
    del missing["params"]["textDocument"]
    assert p.structure_message(missing).problem == "params.textDocument: required field missing"
    # booleans stay booleans (bool is a subclass of int), and 2.0 is an integer
    init = p.structure_message({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "processId": 2.0, "capabilities": {"workspace": {"applyEdit": True}}}})
    assert init.params.process_id == 2 and init.params.capabilities.workspace.apply_edit is True
    assert p.structure_message({"jsonrpc": "1.0", "id": 1, "method": "x"}).request_error
    custom = p.structure_message({"jsonrpc": "2.0", "id": 4, "method": "tricode/status"})
    assert not isinstance(custom, Invalid) and custom.params is None       # params may be left out


def test_rate_limited_log_tells_what_it_left_out(caplog):
    log = logging.getLogger("t.guard")
    limited = RateLimitedLog(log, burst=2, window=0.2)
    with caplog.at_level(logging.WARNING, "t.guard"):
        shown = [limited.warning("k", "bad %d", i) for i in range(5)]
        assert shown == [True, True, False, False, False]
        import time
        time.sleep(0.25)
        assert limited.warning("k", "bad again")
    assert caplog.messages[-1] == "bad again (3 similar messages suppressed)"
    f = RateLimitFilter(burst=1, window=10)
    rec = lambda: logging.LogRecord("pygls", logging.ERROR, "", 0, "Failed %s", ("x",), None)  # noqa: E731
    assert [f.filter(rec()), f.filter(rec())] == [True, False]


def change(sl, sc, el, ec, text):
    return NS(text=text, range=NS(start=NS(line=sl, character=sc), end=NS(line=el, character=ec)))


def test_change_past_the_end_is_clamped_and_counted():
    store = DocumentStore(UTF16)
    store.open("file:///a.py", "x = 1\ny = 2", 1)
    doc = store.change("file:///a.py", 2, [change(7, 0, 9, 3, "\nz = 3")])
    assert doc.text == "x = 1\ny = 2\nz = 3" and store.problems["clamped_changes"] == 1
    store.change("file:///a.py", 3, [change(2, 4, 2, 99, "3!")])           # past the end of the last line
    assert doc.text == "x = 1\ny = 2\nz = 3!" and store.problems["clamped_changes"] == 2
    store.change("file:///a.py", 4, [change(0, 4, 0, 50, "0")])            # past a middle line's end: the LSP's
    assert doc.text == "x = 0\ny = 2\nz = 3!" and store.problems["clamped_changes"] == 2   # own rule, not counted
    assert store.change("file:///b.py", 1, [change(0, 0, 0, 0, "a")]) is None
    store.change("file:///a.py", 4, [change(0, 0, 0, 0, "#")])
    assert store.problems["unknown_documents"] == 1 and store.problems["stale_versions"] == 1


def test_lone_surrogates_are_replaced_without_moving_positions():
    raw = "a\ud800b\U0001F600c\udc00"
    clean = clean_text(raw)
    assert clean == "a\ufffdb\U0001F600c\ufffd"
    assert clean.encode("utf-8")        # the daemon's msgpack can carry it now
    for enc in (UTF16, UTF8):
        store = DocumentStore(enc)
        a, b = store.open("u:a", raw), store.open("u:b", clean)
        assert a.text == clean and a.position_at(len(raw)) == b.position_at(len(clean))
