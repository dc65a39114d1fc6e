"""The daemon's files and process set-up: the lock (one daemon per socket), the socket itself, the
TCP token, peer credentials, the log, and the build it reports. See daemon/server.py for the list of
files; this module knows nothing of requests.
"""
from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
import socket
import struct
from pathlib import Path

import protocol
from daemon import config as config_mod

log = logging.getLogger("tricode.daemon")


def reported_build() -> int:
    """protocol.DAEMON_BUILD, or TRICODE_TEST_DAEMON_BUILD (tests make an "older" daemon with it)."""
    forced = os.environ.get("TRICODE_TEST_DAEMON_BUILD", "")
    return int(forced) if forced.isdigit() else protocol.DAEMON_BUILD


# -- runtime files ------------------------------------------------------------------------------------

def lock_path(sock: Path | None = None) -> Path:
    sock = sock or protocol.socket_path()
    return sock.with_name(sock.name + ".lock")


def token_path(sock: Path | None = None) -> Path:
    sock = sock or protocol.socket_path()
    return sock.with_name("tcp_token")


def lock_holder(sock: Path | None = None) -> int | None:
    """The pid of the daemon holding the lock, or None when no daemon holds it."""
    path = lock_path(sock)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.read(fd, 64).decode().strip() or 0) or -1
            except ValueError:
                return -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class AlreadyRunning(Exception):
    def __init__(self, pid):
        super().__init__(f"a tricode daemon is already running (pid {pid})")
        self.pid = pid


def acquire_lock(sock: Path) -> int:
    """Take the per-user lock (a stale one left by a killed daemon is simply taken over)."""
    path = lock_path(sock)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = int(os.read(fd, 64).decode().strip() or 0)
        except ValueError:
            pid = -1
        os.close(fd)
        raise AlreadyRunning(pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def prepare_runtime_dir(sock: Path) -> None:
    d = sock.parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{d} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
                              f"refusing to put the daemon's socket there")
    if d == protocol.runtime_dir() and st.st_mode & 0o077:
        os.chmod(d, 0o700)


def bind_socket(sock_path: Path) -> socket.socket:
    try:
        if sock_path.is_socket() or sock_path.exists():
            sock_path.unlink()          # stale: we hold the lock, so no live daemon owns it
            log.info("removed a stale socket %s", sock_path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        s.bind(str(sock_path))
    finally:
        os.umask(old)
    os.chmod(sock_path, 0o600)
    s.listen(64)
    s.setblocking(False)
    return s


def peer_credentials(writer) -> tuple[int, int, int] | None:
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", raw)     # pid, uid, gid


def setup_logging(level: str, foreground: bool) -> Path:
    path = config_mod.log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if not foreground:
        for h in list(root.handlers):
            root.removeHandler(h)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 2**20, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    return path


# -- watching the config and keeping the feedback counters ----------------------------------------------

def start_observer(on_config_change):
    """A watchdog observer (or None without watchdog) that calls `on_config_change()` from its thread
    when config.toml changes; the workspace schedules its own watches on it."""
    try:
        from watchdog.observers import Observer
        from watchdog.events import FileSystemEventHandler
    except ImportError:
        log.warning("watchdog is not installed: no config or workspace watching")
        return None
    observer = Observer()
    observer.daemon = True
    home = config_mod.config_home()

    class ConfigHandler(FileSystemEventHandler):
        def on_any_event(self, event):
            paths = [event.src_path, getattr(event, "dest_path", "")]
            if any(os.fsdecode(p).endswith("config.toml") for p in paths if p):
                on_config_change()

    try:
        home.mkdir(parents=True, exist_ok=True)
        observer.schedule(ConfigHandler(), str(home), recursive=False)
        observer.start()
    except Exception as e:  # noqa: BLE001 - inotify limits: the housekeeping poll still works
        log.warning("cannot watch %s (%s); polling it instead", home, e)
        try:
            observer.start()
        except Exception:  # noqa: BLE001
            return None
    return observer


def feedback_file() -> Path:
    return config_mod.state_home() / "feedback.json"


def load_feedback(counters: dict) -> None:
    """Fill the accept/reject `counters` from feedback.json (kept across restarts)."""
    try:
        data = json.loads(feedback_file().read_text())
        for k in counters:
            if isinstance(data.get(k), int):
                counters[k] = data[k]
    except (OSError, ValueError, AttributeError):
        pass


def save_feedback(counters: dict) -> None:
    try:
        path = feedback_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counters))
        tmp.replace(path)
    except OSError as e:
        log.warning("cannot save feedback counters: %s", e)
