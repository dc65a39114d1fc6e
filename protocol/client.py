"""Client side of the daemon protocol: asyncio, no torch (the `lsp` process imports this).

    client = DaemonClient(client_name="lsp:nvim", on_progress=print)
    hello = await client.connect()            # starts the daemon if nothing answers
    rid, fut = client.submit(Complete(doc=uri, prefix=..., suffix=...))
    reply = await fut                         # {"type": "result", ...} or {"type": "error", "code": ...}
    await client.abort(rid)                   # the pending future then gets an "aborted" error reply
    await client.close()

Replies are plain dicts as the daemon sent them: `error` replies resolve the future normally (look at
reply["type"] / reply["code"]); only a lost connection raises, as DaemonUnavailable, in every pending
future at once (never a hang). After a drop, `connected` is False and `connect()` may be called again
(it starts a new daemon when none answers).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import protocol
from protocol import PROTOCOL_VERSION, Abort, Hello, ProtocolError, Shutdown

log = logging.getLogger(__name__)


class DaemonUnavailable(Exception):
    """No daemon answers, it refused us, or the connection dropped."""


class DaemonVersionMismatch(DaemonUnavailable):
    """The daemon speaks another protocol version (restart it: `tricode daemon restart`). `reply` is
    its refusal: newer daemons say there which version they speak and their pid."""

    def __init__(self, message: str, reply: dict | None = None):
        super().__init__(message)
        self.reply = reply or {}


def start_daemon_process(socket_path: Path | None = None, model: str | None = None) -> None:
    """Launch `python -m tricode daemon start --no-wait` (it detaches the daemon and returns)."""
    env = dict(os.environ)
    if socket_path is not None:
        env["TRICODE_SOCKET"] = str(socket_path)
    cmd = [sys.executable, "-m", "tricode", "daemon", "start", "--no-wait"]
    if model:
        cmd += ["--model", str(model)]
    subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60, check=False)


class DaemonClient:
    def __init__(self, socket_path: str | Path | None = None, client_name: str = "lsp",
                 on_progress: Callable[[dict], None] | None = None, autostart: bool = True,
                 start_timeout: float = 60.0, on_disconnect: Callable[[], None] | None = None):
        self._explicit_path = Path(socket_path) if socket_path is not None else None
        self.client_name = client_name
        self.on_progress = on_progress
        self.on_disconnect = on_disconnect
        self.autostart = autostart
        self.start_timeout = start_timeout
        self.hello: dict | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 1
        self._connect_lock: asyncio.Lock | None = None

    @property
    def socket_path(self) -> Path:
        return self._explicit_path or protocol.socket_path()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # -- connecting ---------------------------------------------------------------------------------

    async def connect(self) -> dict:
        """Connect (starting the daemon if nothing answers), send hello, return the hello reply."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.connected and self.hello is not None:
                return self.hello
            try:
                await self._open()
            except OSError as first:
                if not self.autostart:
                    raise DaemonUnavailable(f"no daemon answers on {self.socket_path} ({first})") from None
                await self._start_and_wait()
            self._read_task = asyncio.get_running_loop().create_task(self._read_loop())
            rid, fut = self.submit(Hello(client=self.client_name))
            try:
                reply = await asyncio.wait_for(fut, timeout=max(self.start_timeout, 5.0))
            except asyncio.TimeoutError:
                await self.close()
                raise DaemonUnavailable("the daemon did not answer hello") from None
            if reply.get("type") == "error":
                await self.close()
                if reply.get("code") == protocol.VERSION:
                    raise DaemonVersionMismatch(reply.get("message", "hello refused"), reply)
                raise DaemonUnavailable(reply.get("message", "hello refused"))
            self.hello = reply
            return reply

    async def shutdown_without_hello(self, drain: bool = True, timeout: float = 10.0) -> dict:
        """Send `shutdown` on a connection of its own without hello (a daemon that speaks another protocol
        refuses our hello but takes this on its Unix socket); its reply."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=protocol.MAX_FRAME + 16)
        try:
            writer.write(protocol.pack(Shutdown(id=1, drain=drain)))
            await writer.drain()
            reply = await asyncio.wait_for(protocol.read_frame(reader), timeout)
            return reply if isinstance(reply, dict) else {}
        finally:
            writer.close()

    async def _open(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=protocol.MAX_FRAME + 16)
        self._reader, self._writer = reader, writer

    async def _start_and_wait(self) -> None:
        log.info("no daemon on %s; starting one", self.socket_path)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, start_daemon_process, self._explicit_path)
        except (OSError, subprocess.SubprocessError) as e:
            raise DaemonUnavailable(f"cannot start the daemon: {e}") from None
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await self._open()
                return
            except OSError as e:
                last = e
                await asyncio.sleep(0.05)
        raise DaemonUnavailable(f"the daemon did not come up on {self.socket_path} within "
                                f"{self.start_timeout:.0f} s ({last}); see `tricode daemon status` and its log")

    # -- requests -----------------------------------------------------------------------------------

    def submit(self, msg) -> tuple[int, asyncio.Future]:
        """Send a request with a fresh id; return (id, future of the reply dict).

        Raises DaemonUnavailable at once when not connected."""
        if not self.connected:
            raise DaemonUnavailable("not connected to the daemon")
        rid = self._next_id
        self._next_id += 1
        if dataclasses.is_dataclass(msg):
            msg = dataclasses.replace(msg, id=rid)
        else:
            msg = dict(msg, id=rid)
        try:
            frame = protocol.pack(msg)
        except ProtocolError as e:
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(protocol.error(rid, e.code, e.message))
            return rid, fut
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._writer.write(frame)
        except (OSError, RuntimeError) as e:
            self._pending.pop(rid, None)
            raise DaemonUnavailable(f"cannot send to the daemon: {e}") from None
        return rid, fut

    async def request(self, msg) -> dict:
        _, fut = self.submit(msg)
        await self._drain()
        return await fut

    async def abort(self, request_id: int) -> None:
        """Ask the daemon to stop `request_id`; its future then resolves with an `aborted` error."""
        if not self.connected:
            return
        try:
            _, fut = self.submit(Abort(target=request_id))
        except DaemonUnavailable:
            return
        fut.add_done_callback(_swallow)
        await self._drain()

    async def _drain(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.drain()
            except (OSError, RuntimeError):
                pass  # the read loop notices the drop and fails the pending futures

    async def close(self) -> None:
        writer, task = self._writer, self._read_task
        self._writer = self._reader = None
        self._read_task = None
        self.hello = None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, RuntimeError):
                pass
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_pending("the connection to the daemon was closed")

    # -- reading ------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reader = self._reader
        reason = "the daemon closed the connection"
        try:
            while True:
                try:
                    frame = await protocol.read_frame(reader)
                except ProtocolError as e:
                    log.warning("bad frame from the daemon: %s", e.message)
                    if e.fatal:          # no longer at a frame boundary: drop the connection
                        break
                    continue
                if frame is None:
                    break
                if not isinstance(frame, dict):
                    continue
                kind, rid = frame.get("type"), frame.get("id")
                if kind == "progress" and rid is None:
                    if self.on_progress is not None:
                        try:
                            self.on_progress(frame)
                        except Exception:
                            log.exception("on_progress callback failed")
                    continue
                fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                elif kind == "error":
                    log.warning("daemon error without a pending request: %s", frame.get("message"))
        except (OSError, asyncio.IncompleteReadError) as e:
            reason = f"the connection to the daemon dropped ({e})"
        except asyncio.CancelledError:
            raise
        finally:
            if self._reader is reader:
                writer = self._writer
                self._writer = self._reader = None
                self.hello = None
                if writer is not None:
                    writer.close()
                self._fail_pending(reason)
                if self.on_disconnect is not None:
                    try:
                        self.on_disconnect()
                    except Exception:
                        log.exception("on_disconnect callback failed")

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(DaemonUnavailable(reason))


def _swallow(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


# -- blocking helpers for the CLI -------------------------------------------------------------------

def call(*msgs, socket_path=None, autostart: bool = False, client_name: str = "cli",
         on_progress=None, start_timeout: float = 60.0, timeout: float | None = None) -> list[dict]:
    """Connect, send each message in order, wait for each reply; return the replies."""
    async def run():
        c = DaemonClient(socket_path, client_name=client_name, on_progress=on_progress,
                         autostart=autostart, start_timeout=start_timeout)
        await c.connect()
        try:
            out = []
            for m in msgs:
                out.append(await asyncio.wait_for(c.request(m), timeout))
            return out
        finally:
            await c.close()
    return asyncio.run(run())


def version_ok(hello: dict) -> bool:
    return hello.get("version") == PROTOCOL_VERSION
