"""Daemons that tests start, found and stopped: the helpers the fixtures use and the leak guard that
tests/conftest.py runs around the session.

A test session marks its own environment with a random `TCTEST_SESSION` value; every process it starts
(the daemons it runs itself, `tricode lsp` and the daemons that one detaches with `daemon start`)
inherits it, as their environments are copies of ours. The guard therefore sees exactly this session's
daemons and never another test run's on the same machine (other engineers' runs use other runtime
dirs, and another marker or none). The name does not start with TRICODE_ because the VS Code tests
drop those variables from code-server's environment.

What this does not know: daemons started with an environment built from scratch (none of the tests
does that).
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

MARK = "TCTEST_SESSION"
TEST = "TCTEST_NODEID"        # the test whose set-up or call started the process (for the message)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, _, v = item.partition(b"=")
        if k:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def _is_daemon(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    argv = [a.decode(errors="replace") for a in argv if a]
    # `python -m tricode daemon run ...` or the installed `tricode daemon run ...`
    for i in range(len(argv) - 2):
        if argv[i].endswith("tricode") and argv[i + 1] == "daemon" and argv[i + 2] == "run":
            return True
    return False


def session_daemons(session: str) -> list[dict]:
    """The live `tricode daemon run` processes carrying this session's mark: pid, runtime dir, test."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid() or not _is_daemon(pid):
            continue
        env = _environ(pid)
        if env.get(MARK) != session:
            continue
        try:        # a zombie (exited, not yet reaped by its parent) does not count
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (OSError, IndexError):
            continue
        found.append({"pid": pid, "socket": env.get("TRICODE_SOCKET", ""),
                      "runtime_dir": env.get("XDG_RUNTIME_DIR", ""), "test": env.get(TEST, "?")})
    return found


def stop_pid(pid: int | None, wait_s: float = 5.0) -> None:
    """SIGCONT + SIGTERM (a frozen daemon first thawed), SIGKILL when it outlives `wait_s`."""
    if not pid or pid < 0:
        return
    try:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_daemon_at(socket_path: str | Path) -> list[int]:
    """Stop the daemon that holds the lock of `socket_path` (and one that a client may have started
    meanwhile); the pids stopped. For fixtures' tear-down: it works whether or not the test learned the
    pid, and with the daemon frozen, loading or broken."""
    from daemon.runtime import lock_holder
    stopped = []
    for _ in range(3):
        pid = lock_holder(Path(socket_path))
        if not pid or pid < 0 or pid in stopped:
            break
        stop_pid(pid)
        stopped.append(pid)
    return stopped
