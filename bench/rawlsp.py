"""A raw LSP client over stdio: Content-Length frames written by hand, so that it can send what a typed
client cannot (wrong types, missing fields, bodies that are not JSON). Used by the fuzz test and the
load run. It knows JSON-RPC framing and ids; it knows nothing of what a method means.

    async with RawLsp.spawn(env) as c:          # `python -m tricode lsp` with env
        reply = await c.request("initialize", {...})
        c.notify("initialized", {})
        rid = c.send_request("textDocument/inlineCompletion", params)   # no wait
        reply = await c.reply(rid, timeout=30)
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class RawLsp:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.ids = itertools.count(1)
        self.replies: dict = {}             # id -> list of responses (a correct server sends one)
        self.waiters: dict = {}             # id -> future
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.orphans: list[dict] = []       # responses with an id we never used (e.g. null)
        self.sent_at: dict = {}
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def start(cls, env: dict, args: tuple[str, ...] = ()) -> "RawLsp":
        """A running `tricode lsp`; the caller closes it (`close()`)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tricode", "lsp", *args, env=env, cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            limit=64 * 2**20)
        return cls(proc)

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, env: dict, args: tuple[str, ...] = ()):
        client = await cls.start(env, args)
        try:
            yield client
        finally:
            await client.close()

    # -- sending --------------------------------------------------------------------------------------

    def write_body(self, body: bytes) -> None:
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def send(self, obj) -> None:
        self.write_body(json.dumps(obj).encode("utf-8", "surrogatepass"))

    def send_request(self, method: str, params=None, *, rid=None, extra: dict | None = None) -> object:
        rid = next(self.ids) if rid is None else rid
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        msg.update(extra or {})
        self.sent_at[_key(rid)] = time.monotonic()
        self.send(msg)
        return rid

    def notify(self, method: str, params=None) -> None:
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    async def drain(self) -> None:
        await self.proc.stdin.drain()

    async def request(self, method: str, params=None, timeout: float = 30.0) -> dict:
        rid = self.send_request(method, params)
        await self.drain()
        return await self.reply(rid, timeout)

    async def reply(self, rid, timeout: float = 30.0) -> dict:
        key = _key(rid)
        if self.replies.get(key):
            return self.replies[key][0]
        fut = self.waiters.setdefault(key, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    # -- reading --------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = await out.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if length is None:
                continue
            msg = json.loads(await out.readexactly(length))
            self._dispatch(msg)

    def _dispatch(self, msg: dict) -> None:
        if "method" in msg and "id" in msg:
            self.server_requests.append(msg)
            self._answer_server_request(msg)
        elif "method" in msg:
            self.notifications.append(msg)
        elif msg.get("id") is None:
            self.orphans.append(msg)
        else:
            key = _key(msg["id"])
            self.replies.setdefault(key, []).append(msg)
            fut = self.waiters.pop(key, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _answer_server_request(self, msg: dict) -> None:
        """What an editor answers: configuration (no settings), progress tokens, applyEdit (applied)."""
        method = msg["method"]
        result = None
        if method == "workspace/configuration":
            result = [None for _ in (msg.get("params") or {}).get("items", [])]
        elif method == "workspace/applyEdit":
            result = {"applied": True}
        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    def show_messages(self) -> list[dict]:
        return [n for n in self.notifications if n.get("method") == "window/showMessage"]

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                rid = self.send_request("shutdown")
                await self.drain()
                await self.reply(rid, 10)
                self.notify("exit")
                await self.drain()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def _key(rid):
    return json.dumps(rid)


def initialize_params(root: Path | None = None, *, name: str = "rawlsp", inline: bool = True,
                      options: dict | None = None) -> dict:
    caps: dict = {"general": {"positionEncodings": ["utf-16"]}, "window": {"workDoneProgress": True},
                  "workspace": {"configuration": True, "applyEdit": True}}
    if inline:
        caps["textDocument"] = {"inlineCompletion": {}}
    return {"processId": None, "clientInfo": {"name": name},
            "rootUri": root.as_uri() if root else None, "capabilities": caps,
            "initializationOptions": options or {}}
