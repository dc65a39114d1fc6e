"""Upgrades: `tricode lsp` (its Backend) finds a daemon of an older build, asks it for a drain-then-exit
shutdown, the older daemon finishes the request another editor has running, exits, and a new daemon is
started and used. The older daemon is a real daemon made to report build 1 with
TRICODE_TEST_DAEMON_BUILD (the one test hook, protocol/messages.py)."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from protocol.client import DaemonClient
from protocol import DAEMON_BUILD, Complete, Generate, Status
from lsp.backend import Backend
from tests.test_lsp import REPO, daemon_status, private_env, stop_daemon_at, stop_pid

pytestmark = [pytest.mark.slow]


def test_older_daemon_drains_then_is_replaced(tiny_ckpt, tmp_path, monkeypatch):
    env, short = private_env(tmp_path, tiny_ckpt)
    for k in ("TRICODE_SOCKET", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "TRICODE_MODEL"):
        monkeypatch.setenv(k, env[k])           # the Backend starts the new daemon with this environment
    monkeypatch.delenv("TRICODE_TEST_DAEMON_BUILD", raising=False)
    old = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(tiny_ckpt)],
                           env=dict(env, TRICODE_TEST_DAEMON_BUILD="1"), cwd=REPO, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    new_pid = None
    try:
        deadline = time.monotonic() + 180
        while not ((st := daemon_status(env)) and st.get("state") == "ready"):
            assert old.poll() is None and time.monotonic() < deadline, st
            time.sleep(0.2)
        assert st["build"] == 1 and st["pid"] == old.pid

        async def scenario():
            other = DaemonClient(env["TRICODE_SOCKET"], client_name="other-editor", autostart=False)
            await other.connect()
            _, running = other.submit(Generate(doc="file:///w/long.py", prefix="def long():\n", max_tokens=400,
                                               deadline_ms=120000))
            await other._drain()
            while not (await other.request(Status()))["running"]:
                await asyncio.sleep(0.01)
            backend = Backend(socket_path=env["TRICODE_SOCKET"], client_name="lsp:test", start_timeout=120)
            t0 = time.monotonic()
            connecting = asyncio.ensure_future(backend.ensure())
            # the late request goes in as soon as the old daemon drains (a fixed pause could outlast the
            # running request on an idle machine, and the drained daemon would be gone)
            while not (await other.request(Status())).get("draining"):
                await asyncio.sleep(0.02)
            late = await asyncio.wait_for(other.request(Complete(doc="file:///w/x.py", prefix="x = ")), 30)
            reply = await asyncio.wait_for(running, 120)       # the older daemon finished it before exiting
            await asyncio.wait_for(connecting, 180)
            seconds = time.monotonic() - t0
            await backend.wait_ready(120)                        # the new daemon loads the model
            st_new = await backend.request(Status(), 10)
            result = await backend.request(Complete(doc="file:///w/y.py", prefix="def f():\n    return ",
                                                    max_tokens=4), 60)
            await backend.close()
            await other.close()
            return late, reply, st_new, result, backend, seconds

        late, reply, st_new, result, backend, seconds = asyncio.run(scenario())
        assert reply["type"] == "result" and reply["tokens"] > 0, reply      # not SHUTTING_DOWN
        assert late["type"] == "error" and late["code"] == "shutting_down", late   # no new work while draining
        assert old.wait(10) == 0                                              # it exited cleanly
        new_pid = st_new["pid"]
        assert new_pid != old.pid and st_new["build"] == DAEMON_BUILD
        assert backend.replaced and backend.replaced[0]["pid"] == old.pid and backend.replaced[0]["build"] == 1
        assert result["type"] == "result", result
        print(f"replaced pid {old.pid} by {new_pid} in {seconds:.1f} s (drain included)")
    finally:
        if old.poll() is None:
            old.kill()
        stop_pid(new_pid)
        stop_daemon_at(env["TRICODE_SOCKET"])     # the new daemon also when the test failed before its pid
        import shutil
        shutil.rmtree(short, ignore_errors=True)


def test_daemon_of_an_older_protocol_drains_without_hello(tiny_ckpt, tmp_path, monkeypatch):
    """A newer `tricode lsp` (here: this process's client made to speak protocol PROTOCOL_VERSION + 1)
    is refused hello by the daemon; the refusal names the daemon's protocol and pid; the Backend sends
    shutdown {drain} without hello; the daemon finishes another editor's running request and exits. The
    daemon started next is this same code (the older protocol again): that is reported, not retried."""
    import protocol.client as client_mod
    import lsp.backend as backend_mod
    from protocol.client import DaemonVersionMismatch
    from protocol import PROTOCOL_VERSION, Hello

    env, short = private_env(tmp_path, tiny_ckpt)
    for k in ("TRICODE_SOCKET", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "TRICODE_MODEL"):
        monkeypatch.setenv(k, env[k])
    old = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(tiny_ckpt)],
                           env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not ((st := daemon_status(env)) and st.get("state") == "ready"):
            assert old.poll() is None and time.monotonic() < deadline, st
            time.sleep(0.2)

        async def scenario():
            other = DaemonClient(env["TRICODE_SOCKET"], client_name="other-editor", autostart=False)
            await other.connect()
            _, running = other.submit(Generate(doc="file:///w/long.py", prefix="def long():\n", max_tokens=400,
                                               deadline_ms=120000))
            await other._drain()
            while not (await other.request(Status()))["running"]:
                await asyncio.sleep(0.01)
            monkeypatch.setattr(client_mod, "Hello", lambda **kw: Hello(version=PROTOCOL_VERSION + 1, **kw))
            monkeypatch.setattr(backend_mod, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
            backend = Backend(socket_path=env["TRICODE_SOCKET"], client_name="lsp:newer", start_timeout=120)
            with pytest.raises(DaemonVersionMismatch) as refused:
                await asyncio.wait_for(backend.ensure(), 180)
            reply = await asyncio.wait_for(running, 120)
            await other.close()
            return reply, refused.value, backend

        reply, refused, backend = asyncio.run(scenario())
        assert reply["type"] == "result" and reply["tokens"] > 0, reply     # drained, not cut
        assert old.wait(10) == 0
        assert backend.replaced and backend.replaced[0]["pid"] == old.pid and backend.replaced[0]["protocol"] == 1
        assert refused.reply["version"] == 1 and refused.reply["pid"] != old.pid   # the next daemon, reported
        assert "speaks version 1" in str(refused)
    finally:
        monkeypatch.undo()              # this process's client speaks protocol 1 again (status, below)
        if old.poll() is None:
            old.kill()
        st = daemon_status(env)
        stop_pid(st and st.get("pid"))
        stop_daemon_at(env["TRICODE_SOCKET"])     # also one that was still loading (no status answer)
        import shutil
        shutil.rmtree(short, ignore_errors=True)
