"""End-to-end tests of `tricode lsp`: the real server process (`python -m tricode lsp`), driven by a
pytest-lsp client as an editor does, in front of a real daemon on the tiny random-weight checkpoint.

Random weights give gibberish, so the assertions hold for any model output: every request is
answered (a result, an empty list or RequestCancelled, within a timeout); a suggestion equals what
post-processing makes of the daemon's raw text; ranges have the right shape in the negotiated
encoding; cancellation and supersede answer at once; a killed daemon gives an error, then a restart.
The daemons run with private XDG dirs and sockets, never the user's.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException
from pytest_lsp import client_capabilities, make_test_lsp_client

from lsp import multiline, postprocess
from lsp.context import Context
from lsp.documents import Document
from lsp.settings import Settings
from lsp.server import plain
from tests.daemon_guard import stop_daemon_at, stop_pid  # noqa: F401 (stop_pid: for the other test files)

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

# small budgets: the tiny model on a shared CPU is slow; a long deadline so that results are not cut
OPTIONS = {"debounce_ms": 0, "deadline_ms": 60000, "max_tokens": 4, "max_lines": 3}
ANSWER_S = 60.0


# -- environment ------------------------------------------------------------------------------------------

def private_env(root: Path, model: Path) -> tuple[dict, str]:
    short = tempfile.mkdtemp(prefix="tc", dir="/tmp")          # socket paths must stay short
    env = dict(os.environ)
    env.update(TRICODE_SOCKET=f"{short}/daemon.sock", XDG_RUNTIME_DIR=short,
               XDG_STATE_HOME=str(root / "state"), XDG_CONFIG_HOME=str(root / "config"),
               XDG_DATA_HOME=str(root / "data"), TRICODE_MODEL=str(model), TRICODE_LSP_LOG="warning")
    env.pop("PYTHONSTARTUP", None)
    return env, short


def daemon_status(env: dict) -> dict | None:
    from protocol.client import call
    from protocol import Status
    try:
        return call(Status(), socket_path=env["TRICODE_SOCKET"], timeout=5.0)[0]
    except Exception:
        return None


@pytest.fixture(scope="module")
def shared_env(tiny_ckpt, tmp_path_factory):
    """One daemon for the tests that do not kill it (started once: importing torch takes seconds)."""
    env, short = private_env(tmp_path_factory.mktemp("lsp-shared"), tiny_ckpt)
    proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(tiny_ckpt)],
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            st = daemon_status(env)
            if st and st.get("state") == "ready":
                break
            assert proc.poll() is None, "the daemon exited during start-up"
            assert time.monotonic() < deadline, f"daemon not ready: {st}"
            time.sleep(0.2)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        stop_daemon_at(env["TRICODE_SOCKET"])      # one a server restarted after a kill, if any
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def own_env(tiny_ckpt, tmp_path):
    """A private environment with no daemon running: the language server starts one itself (detached,
    so no one else stops it: the tear-down stops whatever daemon holds this environment's lock, whether
    or not the test got as far as learning its pid)."""
    env, short = private_env(tmp_path, tiny_ckpt)
    try:
        yield env
    finally:
        stop_daemon_at(env["TRICODE_SOCKET"])
        shutil.rmtree(short, ignore_errors=True)


# -- the editor side --------------------------------------------------------------------------------------

def capabilities(name: str = "neovim@v0.11", inline: bool = True) -> T.ClientCapabilities:
    caps = client_capabilities(name)
    if inline:
        caps.text_document.inline_completion = T.InlineCompletionClientCapabilities()
    return caps


@contextlib.asynccontextmanager
async def editor(env: dict, *, caps: T.ClientCapabilities | None = None, options: dict | None = None):
    client = make_test_lsp_client()
    client.applied = []

    @client.feature(T.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: T.ApplyWorkspaceEditParams):
        client.applied.append(params)
        return T.ApplyWorkspaceEditResult(applied=True)

    t0 = time.perf_counter()
    await client.start_io(sys.executable, "-m", "tricode", "lsp", env=env, cwd=str(REPO))
    client.init_result = await asyncio.wait_for(client.initialize_session(T.InitializeParams(
        capabilities=caps or capabilities(), client_info=T.ClientInfo(name="pytest"),
        initialization_options={**OPTIONS, **(options or {})})), 30)
    client.init_seconds = time.perf_counter() - t0
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 10)
        await client.stop()




async def status(client) -> dict:
    return plain(await asyncio.wait_for(client.protocol.send_request_async("tricode/status", {}), 20))


async def wait_ready(client, timeout: float = 150.0, not_pid=None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = await status(client)
        if st["state"] == "ready" and st["daemon"].get("pid") not in (None, not_pid):
            return st
        assert time.monotonic() < deadline, f"daemon not ready: {st['state']} {st['connection']}"
        await asyncio.sleep(0.25)


def open_doc(client, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(T.DidOpenTextDocumentParams(
        text_document=T.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def edit(client, uri: str, version: int, sl: int, sc: int, el: int, ec: int, text: str) -> None:
    client.text_document_did_change(T.DidChangeTextDocumentParams(
        text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[T.TextDocumentContentChangePartial(
            range=T.Range(start=T.Position(line=sl, character=sc), end=T.Position(line=el, character=ec)),
            text=text)]))


def inline_params(uri: str, line: int, character: int) -> T.InlineCompletionParams:
    return T.InlineCompletionParams(
        context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
        text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=line, character=character))


async def inline(client, uri: str, line: int, character: int):
    return await asyncio.wait_for(client.text_document_inline_completion_async(
        inline_params(uri, line, character)), ANSWER_S)


_ids = iter(range(10_000, 10**9))


def send_inline(client, uri: str, line: int, character: int):
    """Send without waiting; (request id, asyncio future)."""
    mid = next(_ids)
    fut = client.protocol.send_request(T.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(uri, line, character),
                                       msg_id=mid)
    return mid, asyncio.wrap_future(fut)


async def raw_code_actions(client, params: T.CodeActionParams) -> list[dict]:
    """textDocument/codeAction as plain dicts: lsprotocol's client-side converter reads a CodeAction
    that carries a `command` as a Command (editors tell them apart by the type of `command`)."""
    proto = client.protocol
    typed = proto.get_result_type
    proto.get_result_type = lambda method: None if method == T.TEXT_DOCUMENT_CODE_ACTION else typed(method)
    try:
        result = await asyncio.wait_for(proto.send_request_async(T.TEXT_DOCUMENT_CODE_ACTION, params), 10)
    finally:
        proto.get_result_type = typed
    return plain(result)


def cancel(client, mid: int) -> None:
    client.protocol.notify(T.CANCEL_REQUEST, T.CancelParams(id=mid))


def check_against_postprocess(text: str, offset: int, result, last: dict, options: dict = OPTIONS,
                              language: str = "python") -> None:
    """The item equals what post-processing makes of the daemon's raw text at this context."""
    ctx = Context.at(Document("file:///x", text, language=language), offset)
    plan = multiline.plan(ctx, Settings().merged(options))
    assert last["plan"]["multiline"] == plan.multiline
    assert last["line_prefix"] == ctx.line_prefix and last["line_suffix"] == ctx.line_suffix
    expect = postprocess.process(last["raw"], ctx, plan, truncated=last.get("stop_reason") == "length")
    items = list(result.items)
    if not expect.text:
        assert items == []
    else:
        assert len(items) == 1 and items[0].insert_text == expect.text
        assert last["replace"] == expect.replace


def line_col(text: str, offset: int) -> tuple[int, int]:
    head = text[:offset]
    return head.count("\n"), len(head) - (head.rfind("\n") + 1)


# -- tests ------------------------------------------------------------------------------------------------

SRC = "import os\n\n\ndef area(width, height):\n"


async def test_initialize_capabilities(shared_env):
    async with editor(shared_env) as c:
        caps = c.init_result.capabilities
        assert c.init_seconds < 5, c.init_seconds        # process start + initialize, on a busy CI box
        assert caps.inline_completion_provider is not None
        assert caps.completion_provider is None           # the client has inline completion
        assert caps.position_encoding == "utf-8"          # Neovim offers utf-8 first
        sync = caps.text_document_sync
        assert sync.change == T.TextDocumentSyncKind.Incremental and sync.open_close
        assert caps.code_action_provider.resolve_provider
        assert {"tricode.refactor", "tricode.accepted"} <= set(caps.execute_command_provider.commands)
        st = await wait_ready(c)
        assert {"state", "model", "device", "mode"} <= set(st) and st["mode"] == "spec"
        assert st["lsp"]["position_encoding"] == "utf-8"


async def test_open_edit_request_cancel_request_again(shared_env):
    uri = "file:///work/demo/area.py"
    async with editor(shared_env) as c:
        await wait_ready(c)
        open_doc(c, uri, SRC)
        # incremental edits, as an editor sends them: add a body line, then a new function header
        edit(c, uri, 2, 4, 0, 4, 0, "    return width * height\n")
        edit(c, uri, 3, 5, 0, 5, 0, "\ndef perimeter(w, h):\n")
        text = SRC + "    return width * height\n\ndef perimeter(w, h):\n"
        res = await inline(c, uri, 7, 0)
        st = await status(c)
        last = st["lsp"]["completions"]["last"]
        check_against_postprocess(text, len(text), res, last)
        assert last["plan"]["multiline"]                  # a blank line after an opener
        assert last["mode"] == "spec" and "tokens_per_forward" in last and "total_ms" in last
        for item in res.items:                             # stats ride along in the item's command
            assert item.range.start == T.Position(line=7, character=0)
            assert item.command.command == "tricode.accepted"
            info = plain(item.command.arguments[0])
            assert info["mode"] == "spec" and info["uri"] == uri and "latency_ms" in info

        # cancel: a long debounce keeps the request waiting, then $/cancelRequest
        c.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"tricode": {"debounce_ms": 5000}}))
        calls = st["lsp"]["completions"]["daemon_calls"]
        mid, fut = send_inline(c, uri, 4, 29)
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        cancel(c, mid)
        with pytest.raises(JsonRpcException) as err:
            await asyncio.wait_for(fut, 5)
        assert err.value.code == -32800 and time.perf_counter() - t0 < 2
        st = await status(c)
        assert st["lsp"]["completions"]["daemon_calls"] == calls   # cancelled before asking the model

        # and again, answered
        c.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"tricode": {"debounce_ms": 0}}))
        res = await inline(c, uri, 4, 29)                 # past the line's end: clamped to it
        last = (await status(c))["lsp"]["completions"]["last"]
        check_against_postprocess(text, text.index("\n", text.index("return width")), res, last)


async def test_supersede_without_cancel(shared_env):
    uri = "file:///work/demo/sup.py"
    async with editor(shared_env, options={"debounce_ms": 1500}) as c:
        await wait_ready(c)
        open_doc(c, uri, SRC)
        _, first = send_inline(c, uri, 4, 0)
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        _, second = send_inline(c, uri, 0, 9)             # a newer request for the same document
        res = await asyncio.wait_for(first, 5)
        assert list(res.items) == [] and time.perf_counter() - t0 < 1.0   # long before its debounce ends
        res2 = await asyncio.wait_for(second, ANSWER_S)
        assert isinstance(res2, T.InlineCompletionList)
        st = await status(c)
        assert st["lsp"]["completions"]["superseded"] >= 1


async def test_utf16_positions_with_emoji_and_cjk(shared_env):
    uri = "file:///work/demo/unicode.py"
    text = 'greeting = "😀 hello"\nname = "中文"\nprint("中文😀")\n'
    async with editor(shared_env, caps=capabilities("visual-studio-code")) as c:
        assert c.init_result.capabilities.position_encoding in (None, "utf-16")
        await wait_ready(c)
        open_doc(c, uri, text)
        # insert after the emoji: UTF-16 column 12 + 2 (the emoji is two code units)
        edit(c, uri, 2, 0, 14, 0, 14, "!")
        text = text.replace("😀 hello", "😀! hello")
        # the cursor inside print("中文😀|"): 7 + 2 + 2 = 11 UTF-16 units, before the auto-closed `")`
        res = await inline(c, uri, 2, 11)
        last = (await status(c))["lsp"]["completions"]["last"]
        assert last["line_prefix"] == 'print("中文😀' and last["line_suffix"] == '")'
        offset = text.index('")\n', text.index("print"))
        check_against_postprocess(text, offset, res, last)
        for item in res.items:
            assert item.range.start == T.Position(line=2, character=11)
            assert item.range.end.line == 2 and item.range.end.character == 11 + last["replace"]
        # the completion popup has an item selected (VS Code): the suggestion extends it
        params = inline_params(uri, 2, 11)
        params.context.selected_completion_info = T.SelectedCompletionInfo(
            range=T.Range(start=T.Position(line=2, character=9), end=T.Position(line=2, character=11)), text="😀ab")
        res = await asyncio.wait_for(c.text_document_inline_completion_async(params), ANSWER_S)
        last = (await status(c))["lsp"]["completions"]["last"]
        assert last["line_prefix"] == 'print("中文😀ab' and last["line_suffix"] == '")'
        for item in res.items:
            assert item.insert_text.startswith("😀ab") and item.range.start == T.Position(line=2, character=9)
            assert item.range.end.character == 11 + last["replace"]
        # the edited line, after the emoji: 14 + 1 ("!") + 6 (" hello") = 21; the closing quote follows
        res = await inline(c, uri, 0, 21)
        last = (await status(c))["lsp"]["completions"]["last"]
        assert last["line_prefix"] == 'greeting = "😀! hello' and last["line_suffix"] == '"'
        check_against_postprocess(text, text.index('"\nname'), res, last)


@pytest.mark.parametrize("client_name,encoding,column", [("neovim@v0.11", "utf-8", 17), ("emacs", "utf-32", 10)])
async def test_utf8_and_utf32_positions_negotiated(shared_env, client_name, encoding, column):
    uri = f"file:///work/demo/enc_{encoding}.py"
    text = 'x = 1\nprint("中文😀")\n'
    async with editor(shared_env, caps=capabilities(client_name)) as c:
        assert c.init_result.capabilities.position_encoding == encoding
        await wait_ready(c)
        open_doc(c, uri, text)
        res = await inline(c, uri, 1, column)
        last = (await status(c))["lsp"]["completions"]["last"]
        assert last["line_prefix"] == 'print("中文😀' and last["line_suffix"] == '")'
        check_against_postprocess(text, text.index('")'), res, last)


async def test_daemon_started_killed_mid_request_and_restarted(own_env):
    """The server starts the daemon (with $/progress), a frozen daemon shows supersede and cancel
    answered at once, a daemon killed mid-request gives an error, the next request works again."""
    uri = "file:///work/demo/kill.py"
    pids = []
    try:
        async with editor(own_env, options={"max_tokens": 2}) as c:
            st = await wait_ready(c)
            pid = st["daemon"]["pid"]
            pids.append(pid)
            reports = [r for rs in c.progress_reports.values() for r in rs]
            assert isinstance(reports[0], T.WorkDoneProgressBegin) and reports[0].title == "tricode"
            assert isinstance(reports[-1], T.WorkDoneProgressEnd)
            assert any(isinstance(r, T.WorkDoneProgressReport) and r.percentage for r in reports)
            open_doc(c, uri, SRC)
            res = await inline(c, uri, 4, 0)                     # it works
            assert isinstance(res, T.InlineCompletionList)

            os.kill(pid, signal.SIGSTOP)                         # freeze the daemon: requests hang in it
            try:
                _, first = send_inline(c, uri, 3, 24)            # contexts not in the cache
                await asyncio.sleep(0.5)
                t0 = time.perf_counter()
                mid, second = send_inline(c, uri, 0, 9)          # supersedes the first, no cancel
                res = await asyncio.wait_for(first, 3)
                assert list(res.items) == [] and time.perf_counter() - t0 < 1.5
                await asyncio.sleep(0.3)
                cancel(c, mid)                                   # $/cancelRequest: RequestCancelled at once
                with pytest.raises(JsonRpcException) as err:
                    await asyncio.wait_for(second, 3)
                assert err.value.code == -32800
                # a refactor command in the frozen daemon, cancelled: answered at once, progress ended
                rid = next(_ids)
                refactoring = asyncio.wrap_future(c.protocol.send_request(
                    T.WORKSPACE_EXECUTE_COMMAND, T.ExecuteCommandParams(command="tricode.refactor", arguments=[
                        {"action": "rewrite", "uri": uri, "range": [3, 0, 3, 24], "instruction": "rename it"}]),
                    msg_id=rid))
                await asyncio.sleep(0.5)
                cancel(c, rid)
                with pytest.raises(JsonRpcException) as err:
                    await asyncio.wait_for(refactoring, 3)
                assert err.value.code == -32800
                await asyncio.sleep(0.2)
                runs = [rs for rs in c.progress_reports.values()
                        if rs and getattr(rs[0], "title", "") == "tricode: Rewrite selection as instructed"]
                assert len(runs) == 1 and isinstance(runs[0][-1], T.WorkDoneProgressEnd)

                # thawed, the daemon sees the aborts: the cancelled completion and the cancelled refactor
                # (the superseded one it superseded itself when the newer completion arrived)
                os.kill(pid, signal.SIGCONT)
                for _ in range(100):
                    daemon = (await status(c))["daemon"]
                    if daemon.get("aborted", 0) >= 2:
                        break
                    await asyncio.sleep(0.1)
                assert daemon["aborted"] >= 2 and daemon["superseded"] >= 1, daemon
                os.kill(pid, signal.SIGSTOP)

                _, third = send_inline(c, uri, 1, 0)
                await asyncio.sleep(0.5)
                assert not third.done()
            finally:
                os.kill(pid, signal.SIGKILL)                     # killed with a request in flight
            t0 = time.perf_counter()
            with pytest.raises(JsonRpcException) as err:
                await asyncio.wait_for(third, 10)
            assert err.value.code == -32803 and "daemon" in err.value.message
            assert time.perf_counter() - t0 < 5

            st = await wait_ready(c, not_pid=pid)                # restarted once, by the server
            pids.append(st["daemon"]["pid"])
            assert st["connection"]["restarts"] == 1
            edit(c, uri, 2, 4, 0, 4, 0, "    x = 1\n")
            res = await inline(c, uri, 5, 0)                     # the next request works
            assert isinstance(res, T.InlineCompletionList)
            assert (await status(c))["lsp"]["completions"]["last"]["source"] == "daemon"
    finally:
        for p in pids:
            stop_pid(p)


PY = '''import math


def area(width, height):
    return width * height


def scale(values, factor):
    pass
'''


async def test_code_action_listed_resolved_and_applied(shared_env):
    uri = "file:///work/demo/geometry.py"
    async with editor(shared_env, options={"refactor_max_tokens": 24}) as c:
        await wait_ready(c)
        open_doc(c, uri, PY)
        rng = T.Range(start=T.Position(line=4, character=4), end=T.Position(line=4, character=4))
        actions = await asyncio.wait_for(c.text_document_code_action_async(T.CodeActionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), range=rng,
            context=T.CodeActionContext(diagnostics=[]))), 10)
        titles = [a.title for a in actions]
        assert titles == ["tricode: Add docstring", "tricode: Add type hints",
                          "tricode: Rewrite selection as instructed", "tricode: Complete this function body"]
        assert all(a.command is None and a.edit is None for a in actions)      # lazy: nothing computed
        only = await asyncio.wait_for(c.text_document_code_action_async(T.CodeActionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), range=rng,
            context=T.CodeActionContext(diagnostics=[], only=[T.CodeActionKind.QuickFix]))), 10)
        assert not only

        rewrite = await asyncio.wait_for(c.code_action_resolve_async(actions[2]), 10)
        cmd = rewrite.command
        assert cmd.command == "tricode.refactor"
        args = plain(cmd.arguments[0])
        args["instruction"] = "return the area as a float"
        result = plain(await asyncio.wait_for(c.workspace_execute_command_async(T.ExecuteCommandParams(
            command=cmd.command, arguments=[args])), ANSWER_S))
        assert result["applied"] is True and result["mode"] == "ar"
        assert len(c.applied) == 1
        ws = c.applied[0].edit
        (uri_, edits), = ws.changes.items()                 # Neovim: no documentChanges -> `changes`
        assert uri_ == uri and len(edits) == 1               # one edit the user can undo
        e = edits[0]
        # the whole function (lines 3-4) is replaced, nothing else
        assert (e.range.start.line, e.range.start.character) == (3, 0)
        assert (e.range.end.line, e.range.end.character) == (4, len("    return width * height"))
        assert e.new_text == result["text"] and e.new_text.strip()
        titles = {r.title for rs in c.progress_reports.values() for r in rs if isinstance(r, T.WorkDoneProgressBegin)}
        assert "tricode: Rewrite selection as instructed" in titles

        # a rewrite without an instruction is answered with an error, not a hang
        with pytest.raises(JsonRpcException):
            await asyncio.wait_for(c.workspace_execute_command_async(T.ExecuteCommandParams(
                command="tricode.refactor", arguments=[plain(cmd.arguments[0])])), 10)


async def test_completion_fallback_feedback_and_settings(shared_env):
    uri = "file:///work/demo/fallback.py"
    async with editor(shared_env, caps=capabilities("visual-studio-code", inline=False)) as c:
        assert c.init_result.capabilities.completion_provider is not None   # no inline completion
        await wait_ready(c)
        open_doc(c, uri, SRC)
        res = await asyncio.wait_for(c.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=4, character=0))), ANSWER_S)
        assert res.is_incomplete and len(res.items) <= 1
        last = (await status(c))["lsp"]["completions"]["last"]
        for item in res.items:
            assert item.text_edit.new_text == last["text"]
            assert item.text_edit.range.start == T.Position(line=4, character=0)

        before = (await status(c))["daemon"]["feedback"]
        c.protocol.notify("tricode/accepted", {"uri": uri, "shown": 12, "accepted": 12})
        c.protocol.notify("tricode/rejected", {"uri": uri, "shown": 5})
        c.protocol.notify("tricode/partiallyAccepted", {"uri": uri, "shown": 10, "accepted": 4})
        for _ in range(50):
            fb = (await status(c))["daemon"]["feedback"]
            if fb["partial"] > before["partial"]:
                break
            await asyncio.sleep(0.1)
        assert fb["accepted"] == before["accepted"] + 1 and fb["rejected"] == before["rejected"] + 1
        assert fb["partial"] == before["partial"] + 1

        calls = (await status(c))["lsp"]["completions"]["daemon_calls"]
        c.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"tricode": {"enabled": False}}))
        res = await asyncio.wait_for(c.text_document_completion_async(T.CompletionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=0, character=9))), 10)
        assert list(res.items) == []
        st = await status(c)
        assert st["lsp"]["settings"]["enabled"] is False and st["lsp"]["completions"]["daemon_calls"] == calls


async def test_typed_through_answers_from_the_cache(shared_env):
    uri = "file:///work/demo/cache.py"
    text = "import os\n\n"
    async with editor(shared_env) as c:
        await wait_ready(c)
        open_doc(c, uri, text)
        res = await inline(c, uri, 2, 0)
        if not res.items:                                  # gibberish can be empty: try other spots
            for line, col in ((0, 9), (1, 0)):
                res = await inline(c, uri, line, col)
                if res.items:
                    break
        assert res.items, "the tiny model gave no suggestion at any spot"
        item = res.items[0]
        pos = item.range.start
        shown = item.insert_text
        typed = shown[0]
        st = await status(c)
        calls = st["lsp"]["completions"]["daemon_calls"]
        edit(c, uri, 2, pos.line, pos.character, pos.line, pos.character, typed)
        new_col = pos.character + len(typed.encode("utf-8"))          # utf-8 positions (Neovim)
        if typed == "\n":
            res2 = await inline(c, uri, pos.line + 1, 0)
        else:
            res2 = await inline(c, uri, pos.line, new_col)
        st = await status(c)
        assert st["lsp"]["completions"]["daemon_calls"] == calls       # no model call
        assert st["lsp"]["completions"]["cache"]["typed_through"] == 1
        assert [i.insert_text for i in res2.items] == [shown[1:]]


async def test_every_request_is_answered(shared_env):
    uri = "file:///work/demo/burst.py"
    text = SRC
    async with editor(shared_env, options={"debounce_ms": 20}) as c:
        await wait_ready(c)
        open_doc(c, uri, text)
        pending = []
        version = 1
        for i in range(12):
            version += 1
            edit(c, uri, version, 4, 0, 4, 0, "x")          # typing on the last line
            mid, fut = send_inline(c, uri, 4, i + 1)
            pending.append(fut)
            if i % 4 == 3:
                cancel(c, mid)
            await asyncio.sleep(0.01)
        _, unknown = send_inline(c, "file:///not/open.py", 0, 0)
        pending.append(unknown)
        done = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), ANSWER_S)
        assert len(done) == len(pending)
        for r in done:
            assert isinstance(r, T.InlineCompletionList) or (isinstance(r, JsonRpcException) and r.code == -32800), r
        assert list(done[-1].items) == []                  # a document that is not open: empty
        st = await status(c)
        assert st["lsp"]["completions"]["superseded_total"] >= 3     # newer requests replaced older ones


async def test_refactor_applied_as_a_versioned_edit(shared_env):
    """VS Code: no lazy `command` (resolveSupport lists only `edit`), versioned documentChanges."""
    uri = "file:///work/demo/vscode_geometry.py"
    async with editor(shared_env, caps=capabilities("visual-studio-code"), options={"refactor_max_tokens": 24}) as c:
        await wait_ready(c)
        open_doc(c, uri, PY, version=7)
        line = PY.split("\n").index("    pass")
        rng = T.Range(start=T.Position(line=line, character=5), end=T.Position(line=line, character=5))
        actions = await raw_code_actions(c, T.CodeActionParams(
            text_document=T.TextDocumentIdentifier(uri=uri), range=rng, context=T.CodeActionContext(diagnostics=[])))
        body = next(a for a in actions if a["title"] == "tricode: Complete this function body")
        assert body["command"]["command"] == "tricode.refactor"      # listed with its command
        result = plain(await asyncio.wait_for(c.workspace_execute_command_async(T.ExecuteCommandParams(
            command=body["command"]["command"], arguments=body["command"]["arguments"])), ANSWER_S))
        assert result["applied"] is True
        (change,) = c.applied[0].edit.document_changes
        assert change.text_document.uri == uri and change.text_document.version == 7
        (e,) = change.edits
        # `pass` (the placeholder) is replaced: from the end of the def line to the end of the body
        assert (e.range.start.line, e.range.start.character) == (line - 1, len("def scale(values, factor):"))
        assert (e.range.end.line, e.range.end.character) == (line, len("    pass"))
        assert e.new_text.startswith("\n    ") and e.new_text.strip()


async def test_model_that_fails_to_load_is_reported(own_env, tmp_path):
    """A broken checkpoint: the user is told, completions are answered empty, refactors with an error."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    env = dict(own_env, TRICODE_MODEL=str(broken))
    uri = "file:///work/demo/broken.py"
    pid = None
    try:
        async with editor(env) as c:
            deadline = time.monotonic() + 120
            while not any("failed to load" in m.message for m in c.messages):
                assert time.monotonic() < deadline, [m.message for m in c.messages]
                await asyncio.sleep(0.2)
            st = await status(c)
            pid = st["daemon"].get("pid")
            assert st["state"] == "error"
            open_doc(c, uri, SRC)
            res = await inline(c, uri, 4, 0)
            assert list(res.items) == []
            with pytest.raises(JsonRpcException) as err:
                await asyncio.wait_for(c.workspace_execute_command_async(T.ExecuteCommandParams(
                    command="tricode.refactor", arguments=[{"action": "docstring", "uri": uri, "range": [3, 5, 3, 5]}])), 30)
            assert "load" in err.value.message
    finally:
        stop_pid(pid)


async def test_prefetch_on_open_and_on_cursor_idle(shared_env):
    """didOpen prefetches the cursor-independent part; tricode/cursorIdle prefetches a completion at
    the end of the cursor's line (a repeat of the same line is not sent again; a malformed one is
    ignored, the server stays up); the completion after Enter there reuses the prefilled prompt."""
    uri = "file:///work/demo/prefetch.py"
    text = "".join(f"def step_{i}(state):\n    state.value += {i}\n    return state\n\n" for i in range(30))
    async with editor(shared_env) as c:
        await wait_ready(c)
        before = (await status(c))["daemon"]["prefetch"]
        open_doc(c, uri, text)
        idle = {"textDocument": {"uri": uri}, "position": {"line": 41, "character": 2}}
        c.protocol.notify("tricode/cursorIdle", idle)
        c.protocol.notify("tricode/cursorIdle", idle)
        c.protocol.notify("tricode/cursorIdle", {"textDocument": "nope"})
        deadline = time.monotonic() + 30
        while True:
            st = await status(c)
            pf = st["daemon"]["prefetch"]
            if pf["requested"] >= before["requested"] + 2 and not st["daemon"]["running"] \
                    and not st["daemon"]["queue_length"]:
                break
            assert time.monotonic() < deadline, st["daemon"]["prefetch"]
            await asyncio.sleep(0.05)
        assert st["lsp"]["prefetch"] == {"opened": 1, "rested": 1, "skipped": 1}, st["lsp"]["prefetch"]
        line = text.split("\n")[41]
        edit(c, uri, 2, 41, len(line), 41, len(line), "\n    ")
        res = await inline(c, uri, 42, 4)
        info = plain(res.items[0].command.arguments[0]) if res.items else (await status(c))["lsp"]["completions"]["last"]
        assert info.get("source") == "daemon", info
        assert info["prefill_tokens"] <= 8 and info["reused_tokens"] >= info["prompt_tokens"] - 8, info


async def test_big_file_sends_what_the_budget_can_use(shared_env):
    """A 0.97 MB file, the cursor in its middle: the request carries no more of the text than the
    daemon's budget could use (the file's head, the lines before and after the cursor; lsp/context.py),
    and the completion is the one the daemon gives for the whole text: the same prompt, the same answer.
    Typing on the line keeps the request's start, so the daemon reuses its KV cache."""
    from lsp.context import CHARS_PER_TOKEN, WIRE_STEP
    from protocol import Complete
    from protocol.client import call
    uri = "file:///work/demo/big.py"
    body = "".join(f"def step_{i}(state):\n    state.value += {i}\n    return state\n\n" for i in range(15000))
    text = "import os\nimport math\n\n" + body
    mid = text.index("def step_7500(")
    text = text[:mid] + "def area(width, height):\n    return \n\n" + text[mid:]
    offset = mid + len("def area(width, height):\n    return ")
    line, col = line_col(text, offset)
    assert 900_000 < len(text) < 1_000_000                     # under the LSP's max_file_bytes
    async with editor(shared_env) as c:
        await wait_ready(c)
        open_doc(c, uri, text)
        res = await inline(c, uri, line, col)
        last = (await status(c))["lsp"]["completions"]["last"]
        budget = (await asyncio.to_thread(daemon_status, shared_env))["config"]["values"]["context_tokens"]
        assert last["source"] == "daemon" and last["budget_tokens"] == budget, last
        # head, tail and suffix within budget x CHARS_PER_TOKEN each; the tail starts up to WIRE_STEP
        # lines earlier (a stable start), and the cursor's line comes with it
        longest = max(map(len, text.splitlines())) + 1
        bound = 3 * budget * CHARS_PER_TOKEN + WIRE_STEP * longest + len(text[:offset].rsplit("\n", 1)[1])
        assert last["sent_chars"] <= bound and last["sent_chars"] < len(text) // 10, (last["sent_chars"], bound)
        check_against_postprocess(text, offset, res, last)
        # the whole text straight to the daemon (same document, path, mode and budgets as the LSP's request)
        plan = last["plan"]
        whole = await asyncio.to_thread(call, Complete(doc=uri, prefix=text[:offset], suffix=text[offset:], path="/work/demo/big.py",
                              language="python", mode=last["mode"], max_tokens=plan["max_tokens"],
                              max_lines=plan["max_lines"] + (1 if plan["multiline"] else 0), deadline_ms=60000),
                     socket_path=shared_env["TRICODE_SOCKET"], timeout=ANSWER_S)
        whole = whole[0]
        assert whole["type"] == "result", whole
        assert whole["prompt_tokens"] == last["prompt_tokens"] and whole["text"] == last["raw"], (whole, last)

        # typed on the cursor's line: the same start, the prompt's cached part is reused
        edit(c, uri, 2, line, col, line, col, "w")
        await inline(c, uri, line, col + 1)
        again = (await status(c))["lsp"]["completions"]["last"]
        assert again["source"] == "daemon" and again["sent_chars"] == last["sent_chars"] + 1, again
        assert again["reused_tokens"] >= again["prompt_tokens"] - 16, again
