"""Whatever a client sends, `tricode lsp` answers every request once and stays up.

The real server (`python -m tricode lsp`) in front of a real daemon on the tiny checkpoint, driven
over stdio by bench/rawlsp.py (frames written by hand, so that wrong types, missing fields and bodies
that are not JSON can be sent). Hand-written cases from issue 16, the protocol's life cycle (before
initialize, after shutdown), then Hypothesis: generated requests and notifications for every method
the server offers, each a valid message with one mutation (a field dropped, a wrong type, a negative or
huge number, an unknown URI, a huge string, a lone surrogate, extra fields, params that are not an
object, a bad id). Checked for each: a request gets exactly one response within ANSWER_S, never an
InternalError (a handler that crashes on input is a bug), the server stays up, no window/showMessage;
afterwards a valid completion still works. The generation is derandomized and bounded (MAX_EXAMPLES).
"""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.rawlsp import RawLsp, initialize_params
from tests.test_lsp import shared_env  # noqa: F401 - the module's daemon

pytestmark = [pytest.mark.slow]

OPTIONS = {"debounce_ms": 0, "deadline_ms": 60000, "max_tokens": 4, "max_lines": 3, "refactor_max_tokens": 8}
ANSWER_S = 60.0
MAX_EXAMPLES = 120
INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_INITIALIZED, PARSE_ERROR = -32602, -32600, -32601, -32002, -32700
INTERNAL_ERROR = -32603
KNOWN_CODES = {PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, NOT_INITIALIZED,
               -32800, -32801, -32803}

SRC = "import os\n\n\ndef area(width, height):\n    return width * height\n"
MAIN = "file:///work/fuzz/main.py"          # never targeted by the fuzzer: the final valid request uses it
FUZZ = ["file:///work/fuzz/a.py", "file:///work/fuzz/b.ts", "file:///nowhere/unknown.py", "untitled:Untitled-1"]


async def started(env) -> RawLsp:
    c = await RawLsp.start(env)
    reply = await c.request("initialize", initialize_params(options=OPTIONS), 30)
    assert "result" in reply, reply
    c.notify("initialized", {})
    c.notify("textDocument/didOpen", {"textDocument": {"uri": MAIN, "languageId": "python", "version": 1, "text": SRC}})
    for uri in FUZZ[:2]:
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": SRC}})
    await c.drain()
    return c


async def valid_completion(c: RawLsp, uri: str = MAIN, line: int = 4, character: int = 25) -> dict:
    reply = await c.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 1}}, ANSWER_S)
    assert "result" in reply and isinstance(reply["result"]["items"], list), reply
    return reply["result"]


async def last_completion(c: RawLsp) -> dict:
    st_ = (await c.request("tricode/status", {}, 20))["result"]
    return st_["lsp"]


def error_code(reply: dict) -> int | None:
    return reply.get("error", {}).get("code")


async def settle(c: RawLsp) -> None:
    """Wait a moment and check that no request was answered twice and nothing was shown as a dialog."""
    await asyncio.sleep(0.5)
    twice = {k: v for k, v in c.replies.items() if len(v) > 1}
    assert not twice, f"answered more than once: {twice}"
    assert c.show_messages() == [], c.show_messages()


# -- hand-written cases -----------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_issue_cases_get_invalid_params_naming_the_field(shared_env):
    c = await started(shared_env)
    try:
        neg = await c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": MAIN}, "position": {"line": -1, "character": 0}, "context": {"triggerKind": 1}})
        assert error_code(neg) == INVALID_PARAMS and "position" in neg["error"]["message"] and "-1" in neg["error"]["message"]
        missing = await c.request("textDocument/inlineCompletion", {
            "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})
        assert error_code(missing) == INVALID_PARAMS and "textDocument" in missing["error"]["message"]
        string = await c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": MAIN}, "position": {"line": "3", "character": 0}, "context": {"triggerKind": 1}})
        assert error_code(string) == INVALID_PARAMS and "position.line" in string["error"]["message"]
        no_params = await c.request("textDocument/codeAction")
        assert error_code(no_params) == INVALID_PARAMS
        unknown = await c.request("tricode/noSuchMethod", {})
        assert error_code(unknown) == METHOD_NOT_FOUND
        again = await c.request("initialize", initialize_params(options=OPTIONS))
        assert error_code(again) == INVALID_REQUEST and "already" in again["error"]["message"]
        # a bad notification is logged, not shown, and the server goes on
        c.notify("textDocument/didChange", {"textDocument": {"uri": MAIN}, "contentChanges": "x"})
        await valid_completion(c)
        await settle(c)
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_change_past_the_end_is_clamped_and_completion_goes_on(shared_env):
    c = await started(shared_env)
    try:
        uri = "file:///work/fuzz/clamp.py"
        c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": "x = 1\n"}})
        # lines 10..12 do not exist (the document has 2): the change lands at the end, like an append
        c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [
            {"range": {"start": {"line": 10, "character": 0}, "end": {"line": 12, "character": 5}},
             "text": "def f(a, b):\n    return "}]})
        await c.drain()
        await valid_completion(c, uri, 2, 11)
        lsp = await last_completion(c)
        assert lsp["document_problems"]["clamped_changes"] == 1
        last = lsp["completions"]["last"]
        assert last["uri"] == uri and last["line_prefix"] == "    return " and last.get("source") == "daemon", last
        # a lone surrogate in the text (JSON allows "\ud800" alone) and a position inside a surrogate pair
        c.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3}, "contentChanges": [
            {"range": {"start": {"line": 2, "character": 11}, "end": {"line": 2, "character": 11}},
             "text": "'\ud800\U0001F600' + "}]})
        await c.drain()
        mid_pair = 11 + 1 + 1 + 1          # after the quote and the lone surrogate, inside the emoji's pair
        reply = await c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 2, "character": mid_pair}, "context": {"triggerKind": 1}})
        assert "result" in reply, reply
        end = await valid_completion(c, uri, 2, 11 + 1 + 1 + 2 + 1 + 3)
        assert isinstance(end["items"], list)
        last = (await last_completion(c))["completions"]["last"]
        assert last["line_prefix"] == "    return '\ufffd\U0001F600' + " and last.get("source") == "daemon", last
        await settle(c)
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_before_initialize_and_after_shutdown(shared_env):
    async with RawLsp.spawn(shared_env) as c:
        early = await c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": MAIN}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})
        assert error_code(early) == NOT_INITIALIZED
        early_bad = await c.request("textDocument/inlineCompletion", {"position": -3})
        assert error_code(early_bad) == NOT_INITIALIZED
        c.notify("textDocument/didOpen", {"textDocument": {"uri": MAIN, "languageId": "python", "version": 1, "text": SRC}})
        reply = await c.request("initialize", initialize_params(options=OPTIONS))
        assert "result" in reply and reply["result"]["capabilities"]["inlineCompletionProvider"] is not None
        c.notify("initialized", {})
        assert (await last_completion(c))["documents"] == 0         # the early didOpen was dropped
        # not JSON, not an object, no "jsonrpc", bad ids: answered with id null (or the id when readable)
        c.write_body(b'{"jsonrpc": "2.0", "id": 9, "method": ')
        c.send([{"jsonrpc": "2.0", "id": 10, "method": "tricode/status"}])
        c.send({"id": 11, "method": "tricode/status"})
        c.send({"jsonrpc": "2.0", "id": {"no": 1}, "method": "tricode/status"})
        c.send({"jsonrpc": "1.0", "id": 12, "method": "tricode/status"})
        await c.drain()
        assert error_code(await c.reply(11, 10)) == INVALID_REQUEST
        assert error_code(await c.reply(12, 10)) == INVALID_REQUEST
        for _ in range(50):
            if len(c.orphans) >= 3:
                break
            await asyncio.sleep(0.1)
        codes = sorted(error_code(o) for o in c.orphans)
        assert codes == [PARSE_ERROR, INVALID_REQUEST, INVALID_REQUEST], c.orphans
        assert all("id" in o and o["id"] is None for o in c.orphans)
        assert (await c.request("shutdown", None, 20)).get("result", "missing") is None
        after = await c.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": MAIN}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})
        assert error_code(after) == INVALID_REQUEST and "shut down" in after["error"]["message"]
        c.notify("textDocument/didOpen", {"textDocument": {"uri": MAIN, "languageId": "python", "version": 1, "text": SRC}})
        c.notify("exit")
        await c.drain()
        assert await asyncio.wait_for(c.proc.wait(), 20) == 0
        assert c.show_messages() == []


# -- generated --------------------------------------------------------------------------------------------

ints = st.one_of(st.integers(0, 12), st.integers(-3, -1), st.just(2**31), st.integers(13, 10**6))
uris = st.sampled_from(FUZZ + [MAIN.replace("main", "other"), "file:///work/fuzz/%ZZ.py", "", "notauri"])
position = st.fixed_dictionaries({"line": ints, "character": ints})
rng = st.fixed_dictionaries({"start": position, "end": position})
text = st.one_of(st.text(max_size=40), st.just("\ud800"), st.just("a\udc00b\U0001F600"), st.just("x" * 200_000))
doc_id = st.fixed_dictionaries({"uri": uris})
versioned = st.fixed_dictionaries({"uri": uris, "version": ints})
refactor_args = st.fixed_dictionaries({"action": st.sampled_from(["docstring", "type_hints", "rewrite", "complete_body", "nope"]),
                                       "uri": uris, "range": st.one_of(st.lists(ints, min_size=4, max_size=4), rng)})

# (method, is_request, params) for every method the server offers, and a few it does not
METHODS = {
    "textDocument/inlineCompletion": (True, st.fixed_dictionaries(
        {"textDocument": doc_id, "position": position,
         "context": st.fixed_dictionaries({"triggerKind": st.sampled_from([1, 2])},
                                          optional={"selectedCompletionInfo": st.fixed_dictionaries(
                                              {"range": rng, "text": text})})})),
    "textDocument/completion": (True, st.fixed_dictionaries({"textDocument": doc_id, "position": position})),
    "textDocument/codeAction": (True, st.fixed_dictionaries(
        {"textDocument": doc_id, "range": rng, "context": st.fixed_dictionaries(
            {"diagnostics": st.just([])}, optional={"only": st.just(["refactor.rewrite"])})})),
    "codeAction/resolve": (True, st.fixed_dictionaries(
        {"title": st.text(max_size=10)}, optional={"data": refactor_args})),
    "workspace/executeCommand": (True, st.fixed_dictionaries(
        {"command": st.sampled_from(["tricode.refactor", "tricode.accepted", "tricode.nothing"]),
         "arguments": st.lists(st.one_of(refactor_args, st.dictionaries(st.text(max_size=5), ints, max_size=3)),
                               max_size=2)})),
    "tricode/status": (True, st.just({})),
    "initialize": (True, st.just(initialize_params())),
    "textDocument/hover": (True, st.fixed_dictionaries({"textDocument": doc_id, "position": position})),
    "textDocument/didOpen": (False, st.fixed_dictionaries({"textDocument": st.fixed_dictionaries(
        {"uri": st.sampled_from(FUZZ), "languageId": st.sampled_from(["python", "typescript", ""]),
         "version": ints, "text": text})})),
    "textDocument/didChange": (False, st.fixed_dictionaries(
        {"textDocument": versioned, "contentChanges": st.lists(st.one_of(
            st.fixed_dictionaries({"range": rng, "text": text}), st.fixed_dictionaries({"text": text})), max_size=3)})),
    "textDocument/didSave": (False, st.fixed_dictionaries({"textDocument": doc_id})),
    "textDocument/didClose": (False, st.fixed_dictionaries({"textDocument": doc_id})),
    "workspace/didChangeConfiguration": (False, st.fixed_dictionaries({"settings": st.one_of(
        st.just(None), st.fixed_dictionaries({"tricode": st.fixed_dictionaries(
            {"max_tokens": ints, "debounce_ms": st.just(0)})}))})),
    "tricode/accepted": (False, st.fixed_dictionaries({"uri": uris, "shown": ints, "accepted": ints})),
    "tricode/rejected": (False, st.fixed_dictionaries({"uri": uris, "shown": ints})),
    "tricode/partiallyAccepted": (False, st.fixed_dictionaries({"uri": uris, "accepted": ints})),
    "$/cancelRequest": (False, st.fixed_dictionaries({"id": st.one_of(ints, st.text(max_size=4))})),
    "$/setTrace": (False, st.fixed_dictionaries({"value": st.sampled_from(["off", "messages", "verbose"])})),
    "window/workDoneProgress/cancel": (False, st.fixed_dictionaries({"token": st.text(max_size=4)})),
    "initialized": (False, st.just({})),
}

BAD_VALUES = st.one_of(st.integers(-5, -1), st.just(2**40), st.just(1.5), st.text(max_size=6), st.just(None),
                       st.just(True), st.just([]), st.just({}), st.just("\udfff"), st.just("y" * 100_000))


def _paths(value, here=()):
    yield here
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, here + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, here + (i,))


def _set(value, path, new):
    if not path:
        return new
    head, *rest = path
    out = dict(value) if isinstance(value, dict) else list(value)
    if new is _DROP and not rest:
        del out[head]
    else:
        out[head] = _set(value[head], rest, new)
    return out


_DROP = object()


@st.composite
def messages(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    is_request, params_st = METHODS[method]
    params = draw(params_st)
    mutation = draw(st.sampled_from(["none", "drop", "retype", "extra", "params", "id", "jsonrpc"]))
    paths = [p for p in _paths(params) if p]
    if mutation == "drop" and paths:
        params = _set(params, draw(st.sampled_from(paths)), _DROP)
    elif mutation == "retype" and paths:
        params = _set(params, draw(st.sampled_from(paths)), draw(BAD_VALUES))
    elif mutation == "extra":
        dicts = [p for p in [()] + paths if isinstance(_get(params, p), dict)]
        where = draw(st.sampled_from(dicts))
        params = _set(params, where, {**_get(params, where), draw(st.text(min_size=1, max_size=8)): draw(BAD_VALUES)})
    elif mutation == "params":
        params = draw(st.one_of(st.just(_DROP), st.just([1, 2]), st.just("params"), st.just(7)))
    msg = {"jsonrpc": "2.0", "method": method}
    if params is not _DROP:
        msg["params"] = params
    if is_request:
        msg["id"] = draw(st.one_of(st.integers(10**6, 10**7), st.text(min_size=1, max_size=6).map(lambda s: "s" + s)))
        if mutation == "id":
            msg["id"] = draw(st.one_of(st.just(None), st.just(1.5), st.just(True), st.just([1]), st.just({"a": 1})))
    if mutation == "jsonrpc":
        msg["jsonrpc"] = draw(st.sampled_from(["1.0", 2, None]))
    return msg


def _get(value, path):
    for k in path:
        value = value[k]
    return value


@pytest.fixture(scope="module")
def wire(shared_env):
    loop = asyncio.new_event_loop()
    client = loop.run_until_complete(started(shared_env))
    client.fuzzed = {"requests": 0, "notifications": 0, "by_code": {}}
    yield loop, client
    loop.run_until_complete(client.close())
    loop.close()


def _readable_id(msg) -> bool:
    rid = msg.get("id")
    return isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool))


async def _exercise(c: RawLsp, msg: dict) -> None:
    is_request = "id" in msg
    if is_request and _readable_id(msg):        # Hypothesis repeats ids across examples: keep its type only
        n = next(c.ids) + 10**6
        msg = {**msg, "id": n if isinstance(msg["id"], int) else f"s{n}"}
    c.send(msg)
    await c.drain()
    if is_request and _readable_id(msg):
        reply = await c.reply(msg["id"], ANSWER_S)
        code = error_code(reply)
        c.fuzzed["by_code"][str(code)] = c.fuzzed["by_code"].get(str(code), 0) + 1
        assert code != INTERNAL_ERROR, f"a handler crashed on {json.dumps(msg)[:500]}: {reply}"
        assert code is None or (code in KNOWN_CODES and reply["error"]["message"]), reply
        if code is None:
            assert "result" in reply
    else:
        # a notification, or a request whose id cannot be echoed: the server must still answer the next
        reply = await c.request("tricode/status", {}, 20)
        assert "result" in reply, reply
    c.fuzzed["requests" if is_request else "notifications"] += 1
    assert c.alive, "the language server exited"


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(msg=messages())
def test_fuzzed_messages_are_answered(wire, msg):
    loop, c = wire
    loop.run_until_complete(_exercise(c, msg))


def test_after_fuzzing_a_valid_request_works(wire):
    loop, c = wire
    assert c.fuzzed["requests"] + c.fuzzed["notifications"] >= MAX_EXAMPLES // 2, c.fuzzed
    loop.run_until_complete(settle(c))
    result = loop.run_until_complete(valid_completion(c))
    assert isinstance(result["items"], list)
    last = loop.run_until_complete(last_completion(c))["completions"]["last"]
    assert last["uri"] == MAIN and last.get("source") == "daemon", last
    print(f"fuzzed: {c.fuzzed}")
