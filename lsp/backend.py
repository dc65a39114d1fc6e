"""The link to the daemon: connect (starting it when none answers), loading progress, restart once,
replace an older daemon.

One DaemonClient per `tricode lsp` process. `ensure()` connects on first use (at `initialized`, so the
model loads while the user opens files) and shows `$/progress` while the daemon starts and loads its
model. When the daemon dies, every pending request fails at once (the client raises
DaemonUnavailable in its futures; the handlers answer with an error) and the backend starts a new
daemon once; a second death within RESTART_WINDOW seconds stops the automatic restarts, and requests
then fail fast until RETRY_AFTER seconds have passed.

Upgrades: a daemon whose hello reports an older build (protocol.DAEMON_BUILD; an upgraded tricode
while the old daemon lives on) is asked for a drain-then-exit shutdown: it refuses new work, finishes
the requests it is running (other editors' too), and exits; then a new daemon is started and used. A
daemon that refuses our hello because it speaks an older protocol (its refusal says which, and its
pid) gets the same shutdown without hello. Once per connection attempt: a daemon that is still older
after that is used as it is (build) or reported (protocol).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

from protocol.client import DaemonClient, DaemonUnavailable, DaemonVersionMismatch
from protocol import DAEMON_BUILD, PROTOCOL_VERSION, ProtocolError, Shutdown, Status

log = logging.getLogger(__name__)

RESTART_WINDOW = 60.0
RETRY_AFTER = 10.0
RESTART_TRIES = 4
SLOW_CONNECT_S = 0.25      # show progress when connecting takes longer than this
REPLACE_WAIT_S = 330.0     # an older daemon's drain (its running refactors) may take this long


def daemon_build(hello: dict) -> int:
    build = hello.get("build", 1)
    return build if isinstance(build, int) and not isinstance(build, bool) else 1


def _older_protocol(refusal: dict) -> bool:
    theirs, pid = refusal.get("version"), refusal.get("pid")
    return (isinstance(theirs, int) and theirs < PROTOCOL_VERSION
            and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0)


async def _exited(pid) -> None:
    """Wait until the process `pid` has exited (a drain finishes the requests it runs first)."""
    end = time.monotonic() + REPLACE_WAIT_S
    while _alive(pid):
        if time.monotonic() > end:
            raise DaemonUnavailable(f"the older daemon (pid {pid}) did not exit within {REPLACE_WAIT_S:.0f} s; "
                                    f"stop it: tricode daemon stop")
        await asyncio.sleep(0.1)


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:                    # a zombie has exited (its parent has not reaped it yet)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class _NoProgress:
    active = False

    async def begin(self, message="", percentage=None):
        pass

    def report(self, message="", percentage=None):
        pass

    def end(self, message=""):
        pass


class Backend:
    def __init__(self, *, socket_path=None, client_name: str = "lsp", start_timeout: float = 120.0,
                 progress_factory: Callable[[str], object] | None = None,
                 on_connected: Callable[[], Awaitable[None]] | None = None,
                 on_problem: Callable[[str], None] | None = None):
        self.socket_path = socket_path
        self.progress_factory = progress_factory or (lambda title: _NoProgress())
        self.on_connected = on_connected
        self.on_problem = on_problem or (lambda message: None)
        self.client = DaemonClient(socket_path, client_name=client_name, on_progress=self._on_progress,
                                   autostart=True, start_timeout=start_timeout,
                                   on_disconnect=self._on_disconnect)
        self.state = "disconnected"     # disconnected | connecting | loading | ready | error | failed
        self.hello: dict | None = None
        # the daemon's inline prompt budget (hello, then each result: a config change is seen at the
        # next answer); 0 while unknown. lsp/context.py sizes what a request carries from it.
        self.budget_tokens = 0
        self.status: dict = {}
        self.last_error = ""
        self.failed_at = 0.0
        self.deaths: list[float] = []
        self.restarts = 0
        self.replaced: list[dict] = []      # older daemons this backend replaced: {pid, build, seconds}
        self._connecting: asyncio.Task | None = None
        self._loading = None
        self._tasks: set[asyncio.Task] = set()
        self._closing = False
        self._in_connect = False
        self._ready = asyncio.Event()

    # -- connection -----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.client.connected and self.client.hello is not None

    async def ensure(self, *, force: bool = False) -> DaemonClient:
        """The connected client; connects (and starts the daemon) when needed. Raises DaemonUnavailable."""
        if self.connected:
            return self.client
        await asyncio.shield(self._start_connect(force))
        return self.client

    async def connected_within(self, seconds: float) -> bool:
        """Connect, but wait at most `seconds` (inline completion does not wait for a daemon start:
        the connection goes on in the background and the request is answered empty). Raises
        DaemonUnavailable when connecting failed."""
        if self.connected:
            return True
        task = self._start_connect(False)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:
            task.result()
        return self.connected

    def _start_connect(self, force: bool) -> asyncio.Task:
        if self._closing:
            raise DaemonUnavailable("the language server is shutting down")
        if self.state == "failed" and not force and time.monotonic() - self.failed_at < RETRY_AFTER:
            raise DaemonUnavailable(self.last_error or "the daemon is not available")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._connecting

    async def wait_ready(self, timeout: float) -> None:
        """Wait while the model loads (refactors wait; inline completion does not). Raises
        DaemonUnavailable when the model failed to load or did not finish in time."""
        deadline = time.monotonic() + timeout
        while self.state in ("loading", "connecting", "disconnected"):
            if time.monotonic() > deadline:
                raise DaemonUnavailable(f"the model is still loading after {timeout:.0f} s")
            if not self.connected:
                await self.ensure()
                continue
            self._ready.clear()
            if self.state == "loading":
                try:
                    await asyncio.wait_for(self._ready.wait(), min(1.0, max(0.05, deadline - time.monotonic())))
                except asyncio.TimeoutError:
                    pass
        if self.state == "error":
            raise DaemonUnavailable(f"the model failed to load: {self.status.get('error') or self.last_error}")

    async def _connect(self) -> None:
        self._in_connect = True
        try:
            await self._connect_once()
        finally:
            self._in_connect = False

    async def _connect_once(self) -> None:
        self.state = "connecting"
        prog = self.progress_factory("tricode")
        loop = asyncio.get_running_loop()
        slow = loop.call_later(SLOW_CONNECT_S, lambda: self.spawn(prog.begin("starting the daemon")))
        try:
            try:
                hello = await self.client.connect()
            except DaemonVersionMismatch as e:
                if not _older_protocol(e.reply):
                    raise
                hello = await self._replace_older_protocol(e.reply, prog)
        except DaemonUnavailable as e:
            self.state, self.last_error, self.failed_at = "failed", str(e), time.monotonic()
            log.error("daemon unavailable: %s", e)
            prog.end(f"daemon unavailable: {e}")
            raise
        except Exception as e:              # a bug or an OS error: same outcome, never a hang
            self.state, self.last_error, self.failed_at = "failed", f"{type(e).__name__}: {e}", time.monotonic()
            log.exception("connecting to the daemon failed")
            prog.end("daemon unavailable")
            raise DaemonUnavailable(self.last_error) from e
        finally:
            slow.cancel()
        if daemon_build(hello) < DAEMON_BUILD:
            try:
                hello = await self._replace_older(hello, prog)
            except DaemonUnavailable as e:
                self.state, self.last_error, self.failed_at = "failed", str(e), time.monotonic()
                log.error("replacing the older daemon failed: %s", e)
                prog.end(f"daemon unavailable: {e}")
                raise
        self.hello = hello
        self.budget_tokens = int(hello.get("budget_tokens") or 0)
        self.last_error = ""
        state = str(hello.get("state") or "ready")
        log.info("connected to the daemon (pid %s, state %s)", hello.get("pid"), state)
        if state in ("ready", "error"):
            self.state = state
            prog.end("ready" if state == "ready" else "the model failed to load")
            if state == "error":
                self.on_problem(f"the model failed to load: {hello.get('message') or 'see the daemon log'}")
        else:
            self.state = "loading"
            self._loading = prog
            self.spawn(prog.begin("loading the model"))
            self.spawn(self._watch_loading(prog))
        if self.on_connected is not None:
            self.spawn(self.on_connected())

    async def _replace_older(self, hello: dict, prog) -> dict:
        """Ask an older daemon to drain and exit, wait until it has, start a new one; its hello."""
        pid, build, t0 = hello.get("pid"), daemon_build(hello), time.monotonic()
        log.warning("the daemon (pid %s) is build %d, older than this tricode's %d: replacing it once the "
                    "requests it runs have finished", pid, build, DAEMON_BUILD)
        self.spawn(prog.begin("replacing an older daemon"))
        try:
            reply = await asyncio.wait_for(self.client.request(Shutdown(drain=True)), 10.0)
            if reply.get("type") == "error":
                log.warning("the older daemon refused shutdown: %s", reply.get("message"))
        except (DaemonUnavailable, asyncio.TimeoutError) as e:
            log.warning("asking the older daemon to shut down: %s", e)
        await self.client.close()
        await _exited(pid)
        new = await self.client.connect()
        self.replaced.append({"pid": pid, "build": build, "seconds": round(time.monotonic() - t0, 2)})
        if daemon_build(new) < DAEMON_BUILD:
            log.warning("the new daemon (pid %s) still reports build %d; using it", new.get("pid"), daemon_build(new))
        else:
            log.info("replaced the older daemon (pid %s) by pid %s in %.1f s", pid, new.get("pid"),
                     time.monotonic() - t0)
        return new

    async def _replace_older_protocol(self, refusal: dict, prog) -> dict:
        """A daemon that refused our hello because it speaks an older protocol: ask it (without hello)
        to drain and exit, start a new one. A daemon that still refuses after that is reported."""
        pid, theirs, t0 = refusal.get("pid"), refusal.get("version"), time.monotonic()
        log.warning("the daemon (pid %s) speaks protocol %s, older than %d: replacing it once the requests it "
                    "runs have finished", pid, theirs, PROTOCOL_VERSION)
        self.spawn(prog.begin("replacing an older daemon"))
        try:
            reply = await self.client.shutdown_without_hello(drain=True)
        except (OSError, asyncio.TimeoutError, ProtocolError) as e:
            raise DaemonUnavailable(f"the daemon speaks protocol {theirs} and did not take shutdown ({e}); "
                                    f"stop it: tricode daemon stop") from None
        if reply.get("type") != "ok":
            raise DaemonUnavailable(f"the daemon speaks protocol {theirs} and refused shutdown "
                                    f"({reply.get('message')}); stop it: tricode daemon stop")
        await _exited(pid)
        self.replaced.append({"pid": pid, "protocol": theirs, "seconds": round(time.monotonic() - t0, 2)})
        return await self.client.connect()

    def note_not_ready(self) -> None:
        """The daemon answered NOT_READY (a model reload after a config change): show it loading."""
        if self.state == "ready" and self.connected and self._loading is None:
            self.state = "loading"
            prog = self.progress_factory("tricode")
            self._loading = prog
            self.spawn(prog.begin("loading the model"))
            self.spawn(self._watch_loading(prog))

    async def _watch_loading(self, prog) -> None:
        """Poll the daemon's status until the model is ready (progress frames also report)."""
        while self._loading is prog and self.connected:
            try:
                st = await asyncio.wait_for(self.client.request(Status()), 10.0)
            except (DaemonUnavailable, asyncio.TimeoutError):
                break
            self.status = st
            state = st.get("state")
            if state in ("ready", "error"):
                self._loaded(state, st.get("error") or st.get("message") or "")
                return
            await asyncio.sleep(0.5)
        if self._loading is prog:
            self._loading = None
            prog.end()

    def _loaded(self, state: str, detail: str = "") -> None:
        self.state = state
        self._ready.set()
        prog, self._loading = self._loading, None
        if prog is not None:
            prog.end("model ready" if state == "ready" else f"the model failed to load {detail}".strip())
        if state == "error":
            self.on_problem(f"the model failed to load: {detail or 'see the daemon log'}")

    def _on_progress(self, frame: dict) -> None:
        stage = str(frame.get("stage") or "")
        fraction = frame.get("fraction")
        message = str(frame.get("message") or stage)
        log.info("daemon: %s %s", stage, message)
        if stage in ("ready", "error"):
            self._loaded(stage, message)
            return
        if self._loading is not None:
            pct = int(fraction * 100) if isinstance(fraction, (int, float)) else None
            self._loading.report(message, pct)

    def _on_disconnect(self) -> None:
        if self._closing or self._in_connect:
            return          # a connection that dropped while connecting: connect() reports it
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW] + [now]
        if self._loading is not None:
            self._loading.end("the daemon stopped")
            self._loading = None
        if len(self.deaths) > 1:
            self.state, self.failed_at = "failed", now
            self.last_error = ("the daemon stopped twice within a minute; not restarting it automatically "
                               "(see `tricode daemon status` and its log)")
            log.error(self.last_error)
            self.on_problem(self.last_error)
            return
        self.state = "disconnected"
        self.last_error = "the daemon stopped; restarting it"
        log.warning("the daemon connection dropped; starting a new daemon")
        self.restarts += 1
        self.spawn(self._restart())

    async def _restart(self) -> None:
        # right after a kill the dying daemon's socket may still accept and then reset a connection:
        # a few quick retries belong to the same restart
        for attempt in range(RESTART_TRIES):
            try:
                await self.ensure(force=True)
                return
            except DaemonUnavailable as e:
                log.warning("restarting the daemon: attempt %d failed: %s", attempt + 1, e)
                await asyncio.sleep(0.25 * 2 ** attempt)
        log.error("restarting the daemon failed: %s", self.last_error)
        self.on_problem(f"restarting the daemon failed: {self.last_error}")

    # -- requests -------------------------------------------------------------------------------------

    def submit(self, msg):
        return self.client.submit(msg)

    async def request(self, msg, timeout: float | None = None) -> dict:
        await self.ensure()
        return await asyncio.wait_for(self.client.request(msg), timeout)

    def abort_later(self, rid: int) -> None:
        self.spawn(self.client.abort(rid))

    def notify(self, msg) -> None:
        """Fire and forget (document notifications): only when connected, errors logged."""
        if not self.connected:
            return

        async def send():
            try:
                reply = await asyncio.wait_for(self.client.request(msg), 10.0)
                if reply.get("type") == "error":
                    log.info("daemon refused %s: %s", msg.type, reply.get("message"))
            except (DaemonUnavailable, asyncio.TimeoutError) as e:
                log.info("daemon did not take %s: %s", msg.type, e)
        self.spawn(send())

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    async def close(self) -> None:
        self._closing = True
        for t in list(self._tasks):
            t.cancel()
        await self.client.close()

    def describe(self) -> dict:
        return {"state": self.state, "connected": self.connected, "pid": (self.hello or {}).get("pid"),
                "restarts": self.restarts, "error": self.last_error, "replaced": list(self.replaced),
                "build": daemon_build(self.hello or {}),
                "socket": str(self.client.socket_path)}
