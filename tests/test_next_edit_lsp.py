"""textDocument/copilotInlineEdit end to end: the real `tricode lsp` process, driven by a pytest-lsp
client that types like an editor (one didChange per keystroke), then asks for the next edit."""
from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types as T
from pygls.exceptions import JsonRpcException

from tests.test_lsp import edit, editor, open_doc, own_env, shared_env, status, wait_ready  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio]

URI = "file:///work/demo/widgets.py"
SRC = ("class A(Base):\n"
       "    def f(self):\n"
       "        return super(A, self).f()\n"
       "\n"
       "    def g(self):\n"
       "        return super(A, self).g()\n"
       "\n"
       "x = 1\n" + "".join(f"y{i} = {i}\n" for i in range(10)))


async def inline_edit(c, uri: str, version: int, line: int, character: int):
    return await asyncio.wait_for(c.protocol.send_request_async("textDocument/copilotInlineEdit", {
        "textDocument": {"uri": uri, "version": version}, "position": {"line": line, "character": character}}), 30)


def plain(v):
    if hasattr(v, "_asdict"):
        return {k: plain(x) for k, x in v._asdict().items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


async def test_next_edit_repeats_the_users_edit(shared_env):
    async with editor(shared_env) as c:
        assert c.init_result.capabilities.experimental["copilotInlineEdit"] is True
        open_doc(c, URI, SRC)
        await wait_ready(c)                     # the daemon answers (not the fallback while it starts)
        # backspace "A, self" in line 2, one keystroke at a time, as the editor sends it
        col = SRC.splitlines()[2].index(", self)") + len(", self")
        version = 1
        for i in range(7):
            version += 1
            edit(c, URI, version, 2, col - i - 1, 2, col - i, "")
        res = plain(await inline_edit(c, URI, version, 5, 8))
        edits = res["edits"]
        assert len(edits) == 1
        e = edits[0]
        line5 = SRC.splitlines()[5]
        a = line5.index("A, self")
        assert e["range"] == {"start": {"line": 5, "character": a}, "end": {"line": 5, "character": a + 7}}
        assert e["text"] == "" and e["textDocument"] == {"uri": URI, "version": version}
        assert e["command"]["command"] == "tricode.accepted"
        last = (await status(c))["lsp"]["next_edit"]["last"]
        assert last["format"] == "sweep_draft" and last["reason"] == "", last    # the daemon's answer

        # no edit where nothing repeats (the region, lines 15..22, holds no super(A, self))
        assert plain(await inline_edit(c, URI, version, 17, 0))["edits"] == []

        # the editor shows it: counted
        c.protocol.notify("textDocument/didShowInlineEdit", {"item": e})
        for _ in range(50):
            st = await status(c)
            if st["lsp"]["next_edit"]["shown"] == 1:
                break
            await asyncio.sleep(0.1)
        assert st["lsp"]["next_edit"]["shown"] == 1 and st["lsp"]["next_edit"]["edits"] == 1


async def test_next_edit_errors(shared_env):
    async with editor(shared_env) as c:
        open_doc(c, URI, SRC, version=3)
        with pytest.raises(JsonRpcException) as err:            # stale version
            await inline_edit(c, URI, 2, 1, 0)
        assert err.value.code == -32801 and "version 3" in str(err.value)
        with pytest.raises(JsonRpcException) as err:            # past the end
            await inline_edit(c, URI, 3, 99, 0)
        assert err.value.code == -32602 and "past the end" in str(err.value)
        with pytest.raises(JsonRpcException) as err:            # not open
            await inline_edit(c, "file:///nope.py", 1, 0, 0)
        assert err.value.code == -32602 and "not an open document" in str(err.value)
        with pytest.raises(JsonRpcException) as err:            # malformed position
            await asyncio.wait_for(c.protocol.send_request_async("textDocument/copilotInlineEdit", {
                "textDocument": {"uri": URI, "version": 3}, "position": {"line": "2"}}), 30)
        assert err.value.code == -32602 and "position" in str(err.value)
        # after the errors the server still answers
        assert plain(await inline_edit(c, URI, 3, 1, 0))["edits"] == []


async def test_next_edit_falls_back_to_the_pattern_while_the_daemon_starts(own_env):
    """No daemon runs: the first request starts one and is answered at once by the pattern fallback."""
    async with editor(own_env) as c:
        open_doc(c, URI, SRC)
        col = SRC.splitlines()[2].index(", self)") + len(", self")
        edit(c, URI, 2, 2, col - 7, 2, col, "")
        res = plain(await inline_edit(c, URI, 2, 5, 8))
        assert len(res["edits"]) == 1 and res["edits"][0]["text"] == ""
        st = await status(c)
        last = st["lsp"]["next_edit"]["last"]
        assert last["format"] == "pattern" and last["reason"].startswith("fallback"), last
        assert st["lsp"]["next_edit"]["fallback"] >= 1
        st = await wait_ready(c)                 # the fallback's request started the daemon
        res = plain(await inline_edit(c, URI, 2, 5, 8))
        assert (await status(c))["lsp"]["next_edit"]["last"]["format"] == "sweep_draft"


SRC3 = ("class A(Base):\n"
        "    def f(self):\n"
        "        return super(A, self).f()\n"
        "\n"
        "    def g(self):\n"
        "        return super(A, self).g()\n"
        "\n"
        "    def h(self):\n"
        "        return super(A, self).h()\n"
        "\n" + "".join(f"y{i} = {i}\n" for i in range(10)))


async def _counts(c) -> dict:
    return (await status(c))["lsp"]["next_edit"]


async def test_an_accepted_edit_has_the_next_place_prefetched(shared_env):
    """The answer with an edit starts the request the editor makes after accepting it; the accept (one
    didChange applying exactly that edit) keeps it, and the editor's follow-up request at the end of the
    applied text is answered by it: the third place's edit. A different keystroke cancels the prefetch:
    the request after it goes to the daemon and is still right."""
    async with editor(shared_env) as c:
        open_doc(c, URI, SRC3)
        await wait_ready(c)
        col = SRC3.splitlines()[2].index(", self)") + len(", self")
        version = 1
        for i in range(7):
            version += 1
            edit(c, URI, version, 2, col - i - 1, 2, col - i, "")
        first = plain(await inline_edit(c, URI, version, 5, 8))["edits"]
        a = SRC3.splitlines()[5].index("A, self")
        assert [(e["range"]["start"], e["text"]) for e in first] == [({"line": 5, "character": a}, "")]
        assert (await _counts(c))["prefetched"] == 1
        # the editor applies it (one change, as nvim's buf_set_text / VS Code's editor.edit) and asks again
        version += 1
        edit(c, URI, version, 5, a, 5, a + 7, "")
        second = plain(await inline_edit(c, URI, version, 5, a))["edits"]
        b = SRC3.splitlines()[8].index("A, self")
        assert [(e["range"], e["text"]) for e in second] == [
            ({"start": {"line": 8, "character": b}, "end": {"line": 8, "character": b + 7}}, "")]
        n = await _counts(c)
        assert n["prefetch_used"] == 1 and n["last"]["prefetched"] is True, n
        assert n["prefetched"] == 2          # the answer with an edit started the one after it

        # a keystroke that is not the accept: the prefetch made for line 8's accept is cancelled
        version += 1
        edit(c, URI, version, 12, 0, 12, 0, "#")
        third = plain(await inline_edit(c, URI, version, 8, b))["edits"]
        assert [e["range"]["start"] for e in third] == [{"line": 8, "character": b}]
        n = await _counts(c)
        assert n["prefetch_used"] == 1 and n["last"]["prefetched"] is False, n


async def test_prefetch_can_be_turned_off(shared_env):
    async with editor(shared_env, options={"next_edit_prefetch": False}) as c:
        open_doc(c, URI, SRC3)
        await wait_ready(c)
        col = SRC3.splitlines()[2].index(", self)") + len(", self")
        edit(c, URI, 2, 2, col - 7, 2, col, "")
        assert len(plain(await inline_edit(c, URI, 2, 5, 8))["edits"]) == 1
        a = SRC3.splitlines()[5].index("A, self")
        edit(c, URI, 3, 5, a, 5, a + 7, "")
        assert len(plain(await inline_edit(c, URI, 3, 5, a))["edits"]) == 1
        n = await _counts(c)
        assert n["prefetched"] == 0 and n["prefetch_used"] == 0 and n["last"]["prefetched"] is False, n
