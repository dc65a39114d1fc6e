"""The daemon process: a Unix socket server (asyncio): connections, dispatch, config reloads, status.

A request passes these stages, one module each: admission and queue (daemon/admission.py), the
workspace's extra context (daemon/workspace.py) and the prompt (daemon/prompt/), a backend that runs
the model (the local worker thread, daemon/worker.py, or the remote backend, daemon/remote.py: both
`submit(job)` and hand back one frame through `deliver`), and the finish (daemon/finish.py). The
process's files and set-up are daemon/runtime.py.

Files (per user; TRICODE_SOCKET moves the socket, and the lock with it):
    <runtime dir>/daemon.sock        the socket, mode 0600, in a 0700 directory; every peer's uid is
                                     checked with SO_PEERCRED and other users are refused
    <runtime dir>/daemon.sock.lock   flock()ed while the daemon lives; holds its pid. After a kill -9
                                     the kernel drops the lock; the next daemon takes it over and
                                     replaces the stale socket
    <runtime dir>/tcp_token          only with `tcp_port` set: the token a TCP client sends in hello
    $XDG_STATE_HOME/tricode/daemon.log (rotated), feedback.json (accept/reject counters)
    $XDG_CONFIG_HOME/tricode/config.toml (watched; see config.py)

The socket is up before the model loads: a client can connect at once, gets `state: loading` in
hello and unsolicited `progress` frames ({type: progress, stage: loading|ready|error, fraction,
message}) until the model is ready. Requests for the model before then get NOT_READY.

Nothing a client sends can stop the daemon: bad frames get an error reply (counted in `status`),
the connection stays open; an exception in a handler is logged and answered INTERNAL.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import protocol
from daemon import config as config_mod
from daemon import next_edit_run
from daemon.admission import PRIO_INLINE, PRIO_PREFETCH, PRIO_REFACTOR, VALID_MODES, Job, RequestQueue, Stats
from daemon.remote import CancelSignal, RemoteBackend
from daemon.config_watch import ConfigWatch
from daemon.runtime import (AlreadyRunning, acquire_lock, bind_socket, load_feedback,  # noqa: F401
                            lock_holder, peer_credentials, prepare_runtime_dir, reported_build, save_feedback,
                            setup_logging, start_observer, token_path)
from daemon.worker import LocalWorker
from daemon.workspace import Workspace

log = logging.getLogger("tricode.daemon")

NOT_COUNTED = (protocol.SUPERSEDED, protocol.ABORTED, protocol.SHUTTING_DOWN)
DRAIN_LIMIT_S = 300.0       # a drain-then-exit shutdown waits at most this long for running requests


# -- connections ----------------------------------------------------------------------------------------

class Connection:
    _ids = itertools.count(1)

    def __init__(self, writer: asyncio.StreamWriter, tcp: bool = False, peer=None):
        self.id = next(self._ids)
        self.writer = writer
        self.tcp = tcp
        self.peer = peer
        self.client = ""
        self.hello = False
        self.closed = False

    def send(self, frame: dict) -> None:
        if self.closed or self.writer.is_closing():
            return
        try:
            data = protocol.pack(frame)
        except protocol.ProtocolError as e:
            data = protocol.pack(protocol.error(frame.get("id", -1), protocol.INTERNAL, f"reply not sent: {e.message}"))
        except Exception as e:  # noqa: BLE001 - e.g. a value msgpack cannot encode
            data = protocol.pack(protocol.error(frame.get("id", -1), protocol.INTERNAL, f"reply not sent: {e}"))
        try:
            self.writer.write(data)
        except (OSError, RuntimeError):
            self.closed = True

    def close(self) -> None:
        self.closed = True
        try:
            self.writer.close()
        except (OSError, RuntimeError):
            pass


async def _linger_close(reader, writer, limit: int = 1 << 16, timeout: float = 1.0) -> None:
    """Close after the last reply reached the peer: half-close, then swallow a little of what it
    still sends (closing with unread input would reset the connection and lose the reply)."""
    try:
        if writer.can_write_eof():
            writer.write_eof()
        end = time.monotonic() + timeout
        seen = 0
        while seen < limit:
            left = end - time.monotonic()
            if left <= 0:
                break
            chunk = await asyncio.wait_for(reader.read(limit), left)
            if not chunk:
                break
            seen += len(chunk)
    except (asyncio.TimeoutError, OSError, RuntimeError):
        pass
    finally:
        try:
            writer.close()
        except (OSError, RuntimeError):
            pass


# -- the daemon -----------------------------------------------------------------------------------------

class Daemon:
    def __init__(self, model_override: str | Path | None = None, foreground: bool = True):
        self.model_override = str(model_override) if model_override else None
        self.foreground = foreground
        self.sock_path = protocol.socket_path()
        self.config_watch = ConfigWatch(self.apply_config)     # the file's stamp before it is read
        self.cfg, self.config_problems = config_mod.load()
        self.config_loaded_at = time.time()
        self.started = time.time()
        self.conns: dict[int, Connection] = {}
        self.stopping = False
        self.draining = False           # a drain-then-exit shutdown: no new work, running work finishes
        self.stop_reason = ""
        self.last_activity = time.monotonic()
        self.tcp_server = None
        self.tcp_token = ""
        self.feedback_dirty = False

    # entry point
    def run(self) -> int:
        log_file = setup_logging(self.cfg.log_level, self.foreground)
        for p in self.config_problems:
            log.warning("config: %s", p)
        try:
            prepare_runtime_dir(self.sock_path)
            self.lock_fd = acquire_lock(self.sock_path)
        except AlreadyRunning as e:
            print(f"tricode: {e}; socket {self.sock_path}", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"tricode: cannot set up {self.sock_path.parent}: {e}", file=sys.stderr)
            log.error("cannot set up %s: %s", self.sock_path.parent, e)
            return 2
        log.info("tricode daemon %d starting: socket %s, log %s", os.getpid(), self.sock_path, log_file)
        try:
            asyncio.run(self._main())
        finally:
            self._cleanup_files()
        log.info("tricode daemon %d stopped (%s)", os.getpid(), self.stop_reason or "exit")
        return 0

    def _cleanup_files(self) -> None:
        try:
            st = self.sock_path.stat()
            if getattr(self, "sock_ino", None) == st.st_ino:
                self.sock_path.unlink()
        except OSError:
            pass
        try:
            if self.tcp_token:
                token_path(self.sock_path).unlink()
        except OSError:
            pass
        fd = getattr(self, "lock_fd", None)
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                os.close(fd)
            except OSError:
                pass
            self.lock_fd = None

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self._stopped = asyncio.Event()
        self.stats = Stats()
        self._load_feedback()
        self.queue = RequestQueue(loop, self.stats)
        self.config_watch.loop = loop
        self.observer = start_observer(lambda: self.loop.call_soon_threadsafe(self.reload_config))
        self.workspace = Workspace(self.cfg.max_file_kb * 1024, self.observer, repo_context=self.cfg.repo_context)
        self.worker = LocalWorker(self.queue, self.workspace, self.cfg, self.stats, self._deliver_threadsafe,
                                  self.model_override, self._on_progress)
        self.remote = RemoteBackend(self.workspace, lambda: self.cfg, self.stats, self._deliver, self.worker)
        sock = bind_socket(self.sock_path)
        self.sock_ino = self.sock_path.stat().st_ino
        self.server = await asyncio.start_unix_server(self._handle_unix, sock=sock, limit=2**20)
        if self.cfg.tcp_port:
            await self._start_tcp(self.cfg.tcp_port)
        for sig, why in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
            loop.add_signal_handler(sig, self.request_stop, why)
        loop.add_signal_handler(signal.SIGHUP, self.reload_config, True)
        self.worker.start()
        housekeeping = loop.create_task(self._housekeeping())
        log.info("listening on %s", self.sock_path)
        await self._stopped.wait()
        housekeeping.cancel()
        self.config_watch.close()
        await self._shutdown()

    def request_stop(self, why: str = "") -> None:
        if not self.stopping:
            self.stop_reason = why
            log.info("stopping: %s", why)
            self.stopping = True
            self._stopped.set()

    async def _shutdown(self) -> None:
        self.server.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        self.queue.shutdown()
        self.remote.close()
        await self.loop.run_in_executor(None, self.worker.join, 10.0)
        if self.worker.is_alive():
            log.warning("the worker thread did not stop within 10 s; exiting anyway")
        for conn in list(self.conns.values()):
            conn.close()
        await asyncio.sleep(0.05)  # let the transports flush the last replies
        self._save_feedback()
        try:
            self.workspace.close()
            if self.observer is not None:
                self.observer.stop()
        except Exception:  # noqa: BLE001
            pass

    def reload_config(self, force: bool = False) -> None:
        """A sign that config.toml changed: applied once the file has settled (daemon/config_watch.py)."""
        self.config_watch.poke(force)

    def apply_config(self, cfg: config_mod.Config | None, problems: list[str]) -> None:
        """The settled file's config (None: not valid TOML, the settings in effect are kept)."""
        old = self.cfg
        if cfg is None:
            cfg, problems = old, [problems[0] + "; keeping the settings in effect until it is fixed"]
        self.cfg, self.config_problems = cfg, problems
        self.config_loaded_at = time.time()
        for p in problems:
            log.warning("config: %s", p)
        if cfg == old:
            return
        logging.getLogger().setLevel(cfg.log_level.upper())
        self.workspace.max_file_bytes = cfg.max_file_kb * 1024
        if cfg.max_file_kb != old.max_file_kb:
            self.workspace.set_repo_context(False)      # the indexes are rebuilt with the new limit
        self.workspace.set_repo_context(cfg.repo_context)
        reload = self.worker.set_config(cfg)
        self.remote.config_changed(old, cfg)
        changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(old, f.name)]
        log.info("config reloaded: %s changed%s", ", ".join(changed), "; reloading the model" if reload else "")
        if cfg.tcp_port != old.tcp_port:
            self.loop.create_task(self._restart_tcp(cfg.tcp_port))

    # -- optional TCP listener ----------------------------------------------------------------------

    async def _start_tcp(self, port: int) -> None:
        self.tcp_token = secrets.token_hex(24)
        path = token_path(self.sock_path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.tcp_token + "\n")
        try:
            self.tcp_server = await asyncio.start_server(
                lambda r, w: self._handle(r, w, tcp=True), host="127.0.0.1", port=port, limit=2**20)
            log.info("TCP listener on 127.0.0.1:%d (token in %s)", port, path)
        except OSError as e:
            log.error("cannot listen on 127.0.0.1:%d: %s", port, e)
            self.tcp_server = None

    async def _restart_tcp(self, port: int) -> None:
        if self.tcp_server is not None:
            self.tcp_server.close()
            self.tcp_server = None
        if port:
            await self._start_tcp(port)

    # -- housekeeping -------------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(1.0)
            tick += 1
            try:
                if tick % 2 == 0:
                    self.reload_config()        # the poll behind the watchdog
                if self.feedback_dirty and tick % 5 == 0:
                    self._save_feedback()
                idle = self.cfg.idle_exit_minutes
                if (idle > 0 and not self.conns and not self.queue.running and not self.queue.queue_length()
                        and time.monotonic() - self.last_activity > idle * 60):
                    self.request_stop(f"idle for {idle} min")
            except Exception:  # noqa: BLE001
                log.exception("housekeeping")

    def _deliver(self, job: Job, frame: dict) -> None:
        """A backend's one frame for `job` (loop thread): counted when it is a result, then replied."""
        if frame.get("type") in ("result", "next_edit_result") and not job.replied:
            self.stats.served += 1
            self.stats.by_kind[job.kind] = self.stats.by_kind.get(job.kind, 0) + 1
        self.queue.reply(job, frame)

    def _deliver_threadsafe(self, job: Job, frame: dict) -> None:
        self.loop.call_soon_threadsafe(self._deliver, job, frame)

    def _on_progress(self, stage: str, fraction: float, message: str) -> None:
        frame = protocol.to_wire(protocol.Progress(stage, fraction, message))
        self.loop.call_soon_threadsafe(self._broadcast, frame)

    def _broadcast(self, frame: dict) -> None:
        for conn in list(self.conns.values()):
            if conn.hello:
                conn.send(frame)

    # -- feedback counters --------------------------------------------------------------------------

    def _load_feedback(self) -> None:
        load_feedback(self.stats.feedback)

    def _save_feedback(self) -> None:
        if not self.feedback_dirty:
            return
        self.feedback_dirty = False
        save_feedback(self.stats.feedback)

    # -- connections --------------------------------------------------------------------------------

    async def _handle_unix(self, reader, writer) -> None:
        await self._handle(reader, writer, tcp=False)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tcp: bool) -> None:
        peer = None
        if not tcp:
            peer = peer_credentials(writer)
            if peer is None or peer[1] != os.getuid():
                self.stats.refused_peers += 1
                self.stats.error(protocol.FORBIDDEN)
                log.warning("refused a connection from uid %s (pid %s)", peer and peer[1], peer and peer[0])
                conn = Connection(writer)
                conn.send(protocol.error(-1, protocol.FORBIDDEN, "this daemon serves its own user only"))
                await _linger_close(reader, writer)
                return
        conn = Connection(writer, tcp=tcp, peer=peer)
        self.conns[conn.id] = conn
        self.last_activity = time.monotonic()
        try:
            while not conn.closed:
                try:
                    frame = await protocol.read_frame(reader)
                except protocol.ProtocolError as e:
                    self._bad(conn, e)
                    if e.fatal:          # the stream is no longer at a frame boundary: answer, then close
                        conn.closed = True
                        await _linger_close(reader, writer)
                        break
                    continue
                except (ConnectionError, OSError):
                    break
                if frame is None:
                    break
                self.last_activity = time.monotonic()
                try:
                    msg = protocol.decode_request(frame)
                except protocol.ProtocolError as e:
                    self._bad(conn, e)
                    continue
                try:
                    self._dispatch(conn, msg)
                except Exception as e:  # noqa: BLE001 - never die from input
                    log.exception("handling %s", msg.type)
                    self.stats.error(protocol.INTERNAL)
                    conn.send(protocol.error(msg.id, protocol.INTERNAL, f"{type(e).__name__}: {e}"))
                transport = writer.transport
                if transport is not None and transport.get_write_buffer_size() > 2**20:
                    try:
                        await writer.drain()
                    except (ConnectionError, OSError):
                        break
        except asyncio.CancelledError:
            pass
        finally:
            conn.closed = True
            self.queue.drop_connection(conn)
            self.remote.drop_connection(conn.id)
            self.workspace.drop_owner(conn.id)
            self.conns.pop(conn.id, None)
            self.last_activity = time.monotonic()
            try:
                writer.close()
            except (OSError, RuntimeError):
                pass

    def _bad(self, conn: Connection, e: protocol.ProtocolError) -> None:
        self.stats.error(e.code)
        log.info("connection %d: %s: %s", conn.id, e.code, e.message)
        conn.send(protocol.error(e.id, e.code, e.message))

    def _dispatch(self, conn: Connection, msg) -> None:
        kind = msg.type
        if kind == "hello":
            if msg.version != protocol.PROTOCOL_VERSION:
                self.stats.error(protocol.VERSION)
                conn.send(dict(protocol.error(msg.id, protocol.VERSION,
                                              f"protocol version {msg.version} is not supported: this daemon speaks "
                                              f"version {protocol.PROTOCOL_VERSION} (restart it: tricode daemon restart)"),
                               version=protocol.PROTOCOL_VERSION, build=reported_build(), pid=os.getpid()))
                conn.close()
                return
            if conn.tcp and not (self.tcp_token and hmac.compare_digest(msg.token, self.tcp_token)):
                self.stats.refused_peers += 1
                self.stats.error(protocol.FORBIDDEN)
                conn.send(protocol.error(msg.id, protocol.FORBIDDEN, "wrong or missing token"))
                conn.close()
                return
            conn.hello, conn.client = True, msg.client
            e = self.worker
            conn.send(protocol.to_wire(protocol.HelloReply(
                id=msg.id, build=reported_build(), pid=os.getpid(), state=e.state, model=str(e.model_path or ""),
                device=e.device, progress=e.progress, message=e.error or e.stage, budget_tokens=self.cfg.context_tokens)))
            return
        if not conn.hello and not (kind == "shutdown" and not conn.tcp):
            # shutdown needs no hello on the Unix socket (peers are this user's): a newer `tricode lsp`
            # whose hello this daemon refuses can still ask it to drain and exit
            self._bad(conn, protocol.ProtocolError(protocol.BAD_REQUEST, "the first frame must be hello", msg.id))
            if conn.tcp:
                conn.close()
            return
        if kind in ("complete", "generate", "next_edit"):
            self._submit(conn, msg)
        elif kind == "prefetch":
            self._prefetch(conn, msg)
        elif kind == "abort":
            self.queue.abort(conn, msg.target)
            conn.send(protocol.ok(msg.id))
        elif kind == "feedback":
            if msg.event not in ("accepted", "rejected", "partial"):
                self._bad(conn, protocol.ProtocolError(
                    protocol.BAD_REQUEST, f"feedback.event {msg.event!r}: accepted, rejected or partial", msg.id))
                return
            fb = self.stats.feedback
            fb[msg.event] += 1
            fb["shown_chars"] += max(msg.shown, 0)
            fb["accepted_chars"] += max(min(msg.accepted, msg.shown) if msg.shown else msg.accepted, 0)
            self.feedback_dirty = True
            conn.send(protocol.ok(msg.id))
        elif kind == "document":
            self.workspace.set_document(msg.uri, msg.path, msg.language, msg.text, owner=conn.id)
            conn.send(protocol.ok(msg.id))
        elif kind == "status":
            conn.send(self.status(msg.id))
        elif kind == "shutdown":
            conn.send(protocol.ok(msg.id))
            who = conn.client or "a client"
            if msg.drain:
                self.drain_then_stop(f"drain-then-exit shutdown requested by {who}")
            else:
                self.request_stop(f"shutdown requested by {who}")

    def drain_then_stop(self, why: str, limit_s: float = DRAIN_LIMIT_S) -> None:
        """Refuse new work from now on (SHUTTING_DOWN), let every queued and running request finish
        and be answered, then stop (at most `limit_s` later: then the rest is answered SHUTTING_DOWN)."""
        if self.stopping or self.draining:
            return
        self.draining = True
        log.info("draining: %s (%d requests in flight)", why, len(self.queue.jobs))

        async def wait_then_stop():
            end = time.monotonic() + limit_s
            while self.queue.jobs and time.monotonic() < end:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)       # let the last replies reach their connections
            self.request_stop(why)
        self.loop.create_task(wait_then_stop())

    def _submit(self, conn: Connection, msg) -> None:
        if self.stopping or self.draining:
            conn.send(protocol.error(msg.id, protocol.SHUTTING_DOWN, "the daemon is shutting down"))
            return
        e = self.worker
        if e.state != "ready":
            self.stats.error(protocol.NOT_READY)
            detail = e.error if e.state == "error" else f"{e.stage} ({e.progress:.0%})"
            conn.send(protocol.error(msg.id, protocol.NOT_READY, f"the model is {e.state}: {detail}"))
            return
        if msg.type == "next_edit":   # checked and admitted as an inline job; run by the local worker
            problem = next_edit_run.check(msg)
            if problem:
                self._bad(conn, protocol.ProtocolError(protocol.BAD_REQUEST, problem, msg.id))
            else:
                self.queue.register(job := next_edit_run.job(conn, msg, self.cfg, CancelSignal()))
                self.worker.submit(job)
            return
        problem = None
        if msg.mode not in VALID_MODES:
            problem = f"{msg.type}.mode {msg.mode!r}: choose ar, diffusion or spec (or '' for the default)"
        elif min(msg.max_tokens, msg.max_lines, msg.deadline_ms, msg.block_size) < 0:
            problem = "max_tokens, max_lines, deadline_ms and block_size must be >= 0"
        elif not 0.0 <= msg.threshold <= 1.0 or msg.temperature < 0:
            problem = "threshold must be within [0, 1] and temperature >= 0"
        if problem:
            self._bad(conn, protocol.ProtocolError(protocol.BAD_REQUEST, problem, msg.id))
            return
        cfg = self.cfg
        inline = msg.type == "complete"
        cap = cfg.max_tokens if inline else cfg.refactor_max_tokens
        max_tokens = min(msg.max_tokens or (64 if inline else 256), cap)
        deadline_ms = msg.deadline_ms or (cfg.deadline_ms if inline else cfg.refactor_deadline_ms)
        now = time.perf_counter()
        remote = self.remote.wants(cfg)
        job = Job(conn=conn, msg=msg, kind=msg.type, priority=PRIO_INLINE if inline else PRIO_REFACTOR,
                  mode=msg.mode or (cfg.inline_mode if inline else cfg.refactor_mode), max_tokens=max_tokens,
                  deadline=time.monotonic() + deadline_ms / 1e3 if deadline_ms > 0 else None, arrived=now,
                  cancel=CancelSignal(), decode_s=deadline_ms / 1e3 if inline else None)
        self.queue.register(job)      # the bookkeeping (supersede, abort, the one reply) stays the queue's
        (self.remote if remote else self.worker).submit(job)

    def _prefetch(self, conn: Connection, msg) -> None:
        """Answer at once; queue the prefill when the model is ready and prefetch is on (else say why
        not in the `ok`: a prefetch is advice, never an error)."""
        e = self.worker
        why = ("the daemon is shutting down" if self.stopping else f"the model is {e.state}" if e.state != "ready"
               else "prefetch is off (prefetch_tokens_per_s = 0)" if self.cfg.prefetch_tokens_per_s <= 0
               else "completions go to the remote backend" if self.cfg.backend == "openai" else "")
        if why:
            conn.send(protocol.ok(msg.id, queued=False, reason=why))
            return
        job = Job(conn=conn, msg=msg, kind="prefetch", priority=PRIO_PREFETCH, mode="", max_tokens=0,
                  deadline=None, arrived=time.perf_counter())
        self.queue.submit_prefetch(job)
        conn.send(protocol.ok(msg.id, queued=True))

    # -- status -------------------------------------------------------------------------------------

    def status(self, rid: int = 0) -> dict:
        e, st, cfg = self.worker, self.stats, self.cfg
        fb = st.feedback
        decided = fb["accepted"] + fb["rejected"] + fb["partial"]
        running = list(self.queue.running)
        errors = sum(n for code, n in st.errors.items() if code not in NOT_COUNTED)
        return {
            "type": "status", "id": rid,
            "version": protocol.PROTOCOL_VERSION, "build": reported_build(), "pid": os.getpid(),
            "draining": self.draining,
            "uptime_s": round(time.time() - self.started, 1),
            "state": e.state, "error": e.error, "progress": round(e.progress, 3), "stage": e.stage,
            "model": str(e.model_path or ""), "model_name": e.model_path.name if e.model_path else "",
            # what the loaded checkpoint is and can do (engine Checkpoint.capabilities): family,
            # format, drafter, modes ({} while loading, on error, and for a remote-only backend)
            "capabilities": dict(e.capabilities),
            "runner": e.runner, "runner_failures": dict(e.fallback.failed),
            "device": e.device, "dtype": e.dtype, "prefill_dtype": e.prefill_dtype, "lora": e.lora, "load_ms": round(e.load_ms, 1),
            "memory": e.memory(), "threads": e.thread_rule.status(cfg, e.ck.model if e.ck is not None else None),
            "modes": {"inline": cfg.inline_mode, "refactor": cfg.refactor_mode, "spec_variant": e.spec_variant(cfg)},
            "deadline_ms": cfg.deadline_ms,
            "queue_length": self.queue.queue_length(),
            "running": [{"id": j.id, "client": j.conn.client, "connection": j.conn.id, "kind": j.kind,
                         "doc": j.msg.doc, "tokens": len(j.tokens)} for j in running],
            "batch_size": cfg.batch_size,
            "connections": len(self.conns),
            "clients": sorted({c.client for c in self.conns.values() if c.client}),
            "requests_served": st.served, "served_by_kind": dict(st.by_kind),
            "tokens_generated": st.tokens, "forwards": st.nfe,
            "mean_tokens_per_forward": round(st.tokens / st.nfe, 4) if st.nfe else 0.0,
            "mean_accept_length": round(st.accept_sum / st.accept_n, 4) if st.accept_n else 0.0,
            "prefill_tokens": st.prefill_tokens, "reused_tokens": st.reused_tokens,
            "prefix_reuse": round(st.reused_tokens / (st.reused_tokens + st.prefill_tokens), 4)
            if st.reused_tokens + st.prefill_tokens else 0.0,
            "superseded": st.superseded, "aborted": st.aborted, "deadline_stops": st.deadline,
            "aged_refactors": st.aged, "loop_cuts": st.loop_cuts, "prefetch": dict(st.prefetch), "prompt_sizing": e.sizer.describe(),
            "feedback": dict(fb),
            "acceptance_rate": round((fb["accepted"] + fb["partial"]) / decided, 4) if decided else None,
            "errors": errors, "errors_by_code": dict(st.errors), "refused_peers": st.refused_peers,
            "config": {"path": str(config_mod.config_path()), "problems": list(self.config_problems),
                       "loaded_at": self.config_loaded_at, "values": dataclasses.asdict(cfg)},
            "socket": str(self.sock_path), "log": str(config_mod.log_path()),
            "tcp": f"127.0.0.1:{cfg.tcp_port}" if self.tcp_server is not None else "",
            "workspace": {"open_documents": len(self.workspace.docs), "recent_files": len(self.workspace.recent),
                          "roots": [str(r) for r in self.workspace.roots],
                          "repo_index": self.workspace.repo.status() if self.workspace.repo is not None else []},
            "last_result": dict(st.last_result),
            "backend": cfg.backend,
            "remote": self.remote.status(cfg) if cfg.backend == "openai" else {},
        }


def run(model: str | Path | None = None, foreground: bool = True) -> int:
    return Daemon(model, foreground).run()
