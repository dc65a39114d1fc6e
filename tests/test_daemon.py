"""The daemon end to end: real `python -m tricode daemon run` processes on the tiny checkpoint,
real sockets, no mocks. One daemon serves the module; the lifecycle test starts its own."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import pytest

import protocol
from protocol.client import DaemonClient, DaemonUnavailable, call
from protocol import Complete, Feedback, Generate, Hello, Status
from protocol import DocumentUpdate as Document
from tests.tiny_checkpoint import write_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent
# with the tiny checkpoint (seed 0), AR runs this prompt for thousands of tokens without an EOS
LONG = dict(prefix="for i in range(10):\n    print(i)\n", suffix="\n", max_tokens=4000, max_lines=0, mode="ar",
            deadline_ms=60000)
# CPU, one torch thread: the tiny model is overhead-bound and the test machine's cores are shared
# (test_daemon_on_cuda covers the GPU)
# loop_guard off: the tiny random model's text repeats itself, and the loop guard would end the long
# completions these tests supersede, abort or run to a deadline within a fraction of a second on an idle
# machine (the guard itself: tests/test_loops.py)
BASE_CONFIG = ('max_tokens = 4000\nrefactor_max_tokens = 4000\nlog_level = "debug"\ncpu_threads = 1\n'
               'device = "cpu"\nloop_guard = false\n')


def arun(coro, timeout: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_env(base: Path) -> dict:
    # an own XDG_DATA_HOME: no pulled model there, so a daemon without --model serves the embedded
    # one (the pulled qwen2.5-coder-0.5b would be the default otherwise, and slow)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(base / "run"), XDG_CONFIG_HOME=str(base / "cfg"),
               XDG_STATE_HOME=str(base / "state"), XDG_DATA_HOME=str(base / "data"))
    for k in ("TRICODE_SOCKET", "TRICODE_MODEL"):
        env.pop(k, None)
    return env


def wait_ready(sock: Path, timeout: float = 90.0, proc=None) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {proc.returncode}")
        try:
            st = call(Status(), socket_path=sock, timeout=5)[0]
            if st["state"] == "ready":
                return st
            assert st["state"] != "error", st["error"]
        except (DaemonUnavailable, OSError, asyncio.TimeoutError):
            pass
        time.sleep(0.1)
    raise AssertionError("the daemon did not become ready")


class D:
    def __init__(self, base: Path, ckpt: Path):
        self.base, self.ckpt = base, ckpt
        self.env = make_env(base)
        self.sock = base / "run" / "tricode" / "daemon.sock"
        self.config = base / "cfg" / "tricode" / "config.toml"
        self.proc = None

    def status(self) -> dict:
        return call(Status(), socket_path=self.sock, timeout=10)[0]

    def cli(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tricode", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    async def client(self, name="test") -> DaemonClient:
        c = DaemonClient(self.sock, client_name=name, autostart=False)
        await c.connect()
        return c


@contextlib.contextmanager
def running(d: D, *args: str, timeout: float = 90.0):
    """`tricode daemon run ARGS` in d's environment, ready (its stderr's tail in the failure when it
    is not); killed and d.base removed afterwards."""
    err = open(d.base / "daemon.err", "wb")
    d.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", *args],
                              env=d.env, cwd=REPO, stdout=err, stderr=err)
    try:
        try:
            wait_ready(d.sock, timeout=timeout, proc=d.proc)
        except AssertionError:
            raise AssertionError((d.base / "daemon.err").read_text()[-4000:]) from None
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        err.close()
        shutil.rmtree(d.base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon():
    base = Path(tempfile.mkdtemp(prefix="tcd", dir="/tmp"))   # short: a socket path has a 107-byte limit
    d = D(base, write_tiny_checkpoint(base / "ck"))
    d.config.parent.mkdir(parents=True)
    d.config.write_text(BASE_CONFIG)
    with running(d, "--model", str(d.ckpt)):
        yield d


def raw_connect(sock: Path, hello: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(str(sock))
    if hello:
        s.sendall(protocol.pack(Hello(id=1, client="raw")))
        assert protocol.recv_frame(s)["type"] == "hello"
    return s


def send_body(s: socket.socket, body: bytes) -> dict:
    s.sendall(protocol.HEADER.pack(len(body)) + body)
    return protocol.recv_frame(s)


async def wait_running(c: DaemonClient, client: str, rid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        running = (await c.request(Status()))["running"]
        if any(r["client"] == client and r["id"] == rid for r in running):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"request {rid} of {client} never ran")


# -- protocol --------------------------------------------------------------------------------------------

def test_status_fields(daemon):
    replies = call(Feedback(event="accepted", doc="d", shown=10, accepted=10),
                   Feedback(event="rejected", doc="d", shown=5), Status(), socket_path=daemon.sock)
    assert [r["type"] for r in replies] == ["ok", "ok", "status"]
    st = replies[-1]
    for key in ("state", "model", "device", "dtype", "memory", "modes", "queue_length", "requests_served",
                "mean_tokens_per_forward", "acceptance_rate", "errors", "progress", "pid", "version", "lora",
                "feedback", "config", "prefix_reuse", "running", "connections", "mean_accept_length"):
        assert key in st, key
    assert st["state"] == "ready" and st["progress"] == 1.0 and st["model"] == str(daemon.ckpt)
    assert st["device"] == "cpu" and st["dtype"] == "float32" and st["memory"]["rss_bytes"] > 0
    assert st["prefill_dtype"] in ("float32", "bfloat16")
    assert st["modes"] == {"inline": "spec", "refactor": "ar", "spec_variant": "linear"}
    assert st["acceptance_rate"] == 0.5 and st["feedback"]["accepted_chars"] == 10
    assert st["config"]["values"]["max_tokens"] == 4000 and st["version"] == protocol.PROTOCOL_VERSION


def test_hello_version_mismatch_is_rejected(daemon, monkeypatch):
    s = raw_connect(daemon.sock, hello=False)
    s.sendall(protocol.pack({"type": "hello", "id": 3, "version": 999, "client": "future"}))
    reply = protocol.recv_frame(s)
    assert reply["type"] == "error" and reply["code"] == protocol.VERSION and reply["id"] == 3
    assert protocol.recv_frame(s) is None          # the daemon closed that connection
    s.close()
    import protocol.client as client_mod
    from protocol.client import DaemonVersionMismatch
    monkeypatch.setattr(client_mod, "Hello", lambda client: Hello(client=client, version=999))

    async def go():
        with pytest.raises(DaemonVersionMismatch, match="version 999"):
            await DaemonClient(daemon.sock, autostart=False).connect()
    arun(go())


def test_malformed_frames_get_errors_and_are_counted(daemon):
    before = daemon.status()["errors"]
    s = raw_connect(daemon.sock, hello=False)
    r = send_body(s, msgpack.packb({"type": "status", "id": 4}))
    assert (r["type"], r["code"], r["id"]) == ("error", protocol.BAD_REQUEST, 4)        # hello first
    s.sendall(protocol.pack(Hello(id=5)))
    assert protocol.recv_frame(s)["type"] == "hello"
    cases = [
        (msgpack.packb([1, 2, 3]), -1),                                              # not a map
        (msgpack.packb({"type": "frobnicate", "id": 7}), 7),                        # unknown type
        (msgpack.packb({"type": "complete", "id": 8, "max_tokens": "many"}), 8),    # wrong field type
        (msgpack.packb({"type": "complete", "id": 9, "mode": "turbo"}), 9),         # bad value
        (msgpack.packb({"type": "feedback", "id": 10, "event": "loved"}), 10),
    ]
    for body, rid in cases:
        r = send_body(s, body)
        assert (r["type"], r["code"], r["id"]) == ("error", protocol.BAD_REQUEST, rid), (body, r)
    r = send_body(s, msgpack.packb({"type": "status", "id": 11}))
    assert r["type"] == "status" and r["errors"] == before + 1 + len(cases)
    s.close()
    assert daemon.proc.poll() is None


def _answer_then_close(s: socket.socket, data: bytes) -> tuple[dict, float]:
    """Send `data` and read the daemon's answer: (the reply frame, seconds it took). The daemon must
    then close the connection (EOF, or a reset because the peer's unread input was discarded)."""
    t0 = time.monotonic()
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass                                        # the daemon closed while we were still sending
    r = protocol.recv_frame(s)
    took = time.monotonic() - t0
    try:
        assert protocol.recv_frame(s) is None       # closed
    except ConnectionResetError:
        pass
    return r, took


def test_frames_that_can_never_be_valid_are_answered_at_once_and_closed(daemon):
    """A length prefix over the frame limit (up to 4 GB) is answered without reading the body; a body
    that is not msgpack is answered too; both close the connection; the daemon serves on."""
    before = daemon.status()["errors_by_code"]
    cases = [
        (protocol.HEADER.pack(0xFFFFFFFF), protocol.TOO_LARGE),                        # claims 4 GB
        (protocol.HEADER.pack(protocol.MAX_FRAME + 1) + b"\0" * (1 << 16), protocol.TOO_LARGE),
        (protocol.HEADER.pack(15) + b"\xc1\xff\x00 not msgpack", protocol.BAD_REQUEST),  # undecodable
    ]
    for data, code in cases:
        s = raw_connect(daemon.sock)
        s.settimeout(5)
        r, took = _answer_then_close(s, data)
        s.close()
        assert (r["type"], r["code"], r["id"]) == ("error", code, -1), r
        assert took < 1.0, (code, took)
    assert daemon.proc.poll() is None
    # a new connection is served as usual, and the errors were counted
    st = daemon.status()
    assert st["errors_by_code"][protocol.TOO_LARGE] == before.get(protocol.TOO_LARGE, 0) + 2
    assert st["errors_by_code"][protocol.BAD_REQUEST] == before.get(protocol.BAD_REQUEST, 0) + 1
    (res,) = call(Complete(doc="file:///after.py", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock,
                  timeout=60)
    assert res["type"] == "result", res


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_other_user_is_refused(daemon):
    nobody = pwd.getpwnam("nobody")
    code = f"""
import os, socket, struct, sys
os.setgid({nobody.pw_gid}); os.setuid({nobody.pw_uid})
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)
try:
    s.connect({str(daemon.sock)!r})
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(bytes.fromhex({protocol.pack(Hello(id=1)).hex()!r}))
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.hex())
"""

    def as_nobody():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    # 1. the socket's directory (0700) and mode (0600) keep other users out
    assert (daemon.sock.parent.stat().st_mode & 0o777) == 0o700
    assert (daemon.sock.stat().st_mode & 0o777) == 0o600
    assert as_nobody() == "EACCES"
    # 2. with the permissions opened up, the peer-credential check still refuses them
    dirs = [daemon.base, daemon.sock.parent]
    modes = [(p, p.stat().st_mode & 0o777) for p in dirs + [daemon.sock]]
    before = daemon.status()["refused_peers"]
    try:
        for p in dirs:
            os.chmod(p, 0o711)
        os.chmod(daemon.sock, 0o666)
        out = as_nobody()
    finally:
        for p, m in modes:
            os.chmod(p, m)
    data = bytes.fromhex(out)
    reply = msgpack.unpackb(data[4:])
    assert reply["type"] == "error" and reply["code"] == protocol.FORBIDDEN
    assert daemon.status()["refused_peers"] == before + 1


# -- scheduling ------------------------------------------------------------------------------------------

def test_several_clients_at_once(daemon):
    async def one(name: str, mode: str):
        c = await daemon.client(name)
        futs = [c.submit(Complete(doc=f"{name}-{i}", prefix=f"def f{i}(x):\n    return ", suffix="\n",
                                  max_tokens=12, max_lines=0, mode=mode, deadline_ms=30000)) for i in range(3)]
        replies = [(rid, await f) for rid, f in futs]
        await c.close()
        return replies

    async def go():
        return await asyncio.gather(*(one(f"c{k}", mode) for k, mode in enumerate(["ar", "spec", "ar", "diffusion"])))

    results = arun(go())
    for replies in results:
        for rid, r in replies:
            assert r["type"] == "result" and r["id"] == rid and r["tokens"] > 0, r
    # greedy self-speculation produces exactly the AR text
    assert [r["text"] for _, r in results[0]] == [r["text"] for _, r in results[1]]
    assert results[1][0][1]["mode"] == "spec" and results[3][0][1]["mode"] == "diffusion"


def test_supersede(daemon):
    async def go():
        c, watch = await daemon.client("sup"), await daemon.client("watch")
        old_id, old = c.submit(Complete(doc="file:///x.py", **LONG))
        await wait_running(watch, "sup", old_id)
        t0 = time.perf_counter()
        new_id, new = c.submit(Complete(doc="file:///x.py", prefix="x = ", suffix="\n", max_tokens=4,
                                        deadline_ms=30000))
        r_old = await old
        superseded_after = time.perf_counter() - t0
        r_new = await new
        # a completion for another document of the same client does not supersede the running one
        other_id, other = c.submit(Complete(doc="file:///y.py", **LONG))
        await wait_running(watch, "sup", other_id)
        _, third = c.submit(Complete(doc="file:///z.py", prefix="y = ", suffix="\n", max_tokens=4))
        await asyncio.sleep(0.2)
        assert not other.done()
        await c.abort(other_id)
        r_other = await other
        r_third = await third
        st = await watch.request(Status())
        await c.close()
        await watch.close()
        return r_old, superseded_after, r_new, r_third, r_other, st

    r_old, after, r_new, r_third, r_other, st = arun(go())
    assert r_old["type"] == "error" and r_old["code"] == protocol.SUPERSEDED, r_old
    assert after < 1.0, after                      # answered at once, not when the decode ends
    assert r_new["type"] == "result" and r_third["type"] == "result"
    assert r_other["code"] == protocol.ABORTED and st["superseded"] >= 1


def test_abort_stops_the_decode(daemon):
    async def go():
        c, watch = await daemon.client("abort"), await daemon.client("watch")
        rid, fut = c.submit(Generate(doc="g", **LONG))
        await wait_running(watch, "abort", rid)
        t0 = time.perf_counter()
        await c.abort(rid)
        r = await fut
        replied = time.perf_counter() - t0
        end = time.monotonic() + 5
        while (await watch.request(Status()))["running"] and time.monotonic() < end:
            await asyncio.sleep(0.01)
        idle = time.perf_counter() - t0
        r2 = await c.request(Complete(doc="g2", prefix="a = ", suffix="\n", max_tokens=4))
        await c.close()
        await watch.close()
        return r, replied, idle, r2

    r, replied, idle, r2 = arun(go())
    assert r["type"] == "error" and r["code"] == protocol.ABORTED
    assert replied < 1.0 and idle < 2.0, (replied, idle)
    assert r2["type"] == "result"


def test_deadline_returns_finished_lines_in_time(daemon):
    async def go():
        c = await daemon.client("deadline")
        t0 = time.perf_counter()
        r = await c.request(Complete(doc="dl", **dict(LONG, deadline_ms=300)))
        await c.close()
        return r, time.perf_counter() - t0

    r, took = arun(go())
    assert r["type"] == "result" and r["stop_reason"] == "deadline", r
    assert 0 < r["tokens"] < 4000 and took < 2.5, (r["tokens"], took)
    assert not r["text"].endswith("\n") and daemon.status()["deadline_stops"] >= 1


def test_priority_fairness_and_slicing(daemon):
    """Refactors run in 32-token slices and connections take turns: A sends six refactors, more than
    a batch holds; B's one job, sent after them, finishes before A's last (first come first served
    would finish it last). An inline completion goes before the refactors. A sliced refactor produces
    exactly the unsliced AR text."""
    async def go():
        a, b, c = await daemon.client("A"), await daemon.client("B"), await daemon.client("C")
        order = []
        jobs = {f"A{i}": a.submit(Generate(doc=f"a{i}", **dict(LONG, max_tokens=64))) for i in range(6)}
        await wait_running(c, "A", jobs["A0"][0])
        jobs["B0"] = b.submit(Generate(doc="b0", **dict(LONG, max_tokens=64)))
        jobs["C0"] = c.submit(Complete(doc="c0", prefix="z = ", suffix="\n", max_tokens=4))
        for name, (_, fut) in jobs.items():
            fut.add_done_callback(lambda f, name=name: order.append(name))
        replies = {name: await fut for name, (_, fut) in jobs.items()}
        plain = await c.request(Complete(doc="c1", **dict(LONG, max_tokens=64)))
        for x in (a, b, c):
            await x.close()
        return order, replies, plain

    order, replies, plain = arun(go())
    assert order[0] == "C0" and order.index("B0") < order.index("A5"), order
    assert all(r["type"] == "result" for r in replies.values()), replies
    assert replies["A0"]["tokens"] == 64 and replies["B0"]["tokens"] == 64
    assert replies["A0"]["text"] == plain["text"] and replies["B0"]["text"] == plain["text"]


def test_batched_decodes(daemon):
    """Four editors at once: their completions run as one batch (status shows them running together)
    and each gets exactly the text it gets alone."""
    prompts = [f"def f{i}(x):\n    y = x * {i}\n    return " for i in range(4)]

    async def go():
        clients = [await daemon.client(f"batch{i}") for i in range(4)]
        watch = await daemon.client("watch")
        alone = [await clients[0].request(Complete(doc=f"solo{i}", prefix=p, suffix="\n", max_tokens=48,
                                                   max_lines=0, mode="ar", deadline_ms=60000))
                 for i, p in enumerate(prompts)]
        futs = [c.submit(Complete(doc=f"b{i}", prefix=p, suffix="\n", max_tokens=48, max_lines=0, mode="ar",
                                  deadline_ms=60000)) for i, (c, p) in enumerate(zip(clients, prompts))]
        most = 0
        while not all(f.done() for _, f in futs):
            most = max(most, len((await watch.request(Status()))["running"]))
            await asyncio.sleep(0.005)
        together = [await f for _, f in futs]
        for c in clients + [watch]:
            await c.close()
        return alone, together, most

    alone, together, most = arun(go())
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    assert all(r["tokens"] == 48 for r in together)
    assert most >= 2, most


# -- context ---------------------------------------------------------------------------------------------

def test_prefix_reuse_after_one_keystroke(daemon):
    lines = []
    for i in range(60):
        lines.append(f"def handler_{i}(request, value={i}):\n    return request.process(value) + {i}\n")
    prefix = "".join(lines) + "\ndef main():\n    res"
    suffix = "\n\nif __name__ == '__main__':\n    main()\n"

    async def go():
        c = await daemon.client("reuse")
        msg = dict(doc="file:///reuse.py", suffix=suffix, max_tokens=8, max_lines=1, deadline_ms=30000)
        first = await c.request(Complete(prefix=prefix, **msg))
        second = await c.request(Complete(prefix=prefix + "u", **msg))
        await c.close()
        return first, second

    first, second = arun(go())
    print(f"\nprefix reuse: first prefill {first['prefill_tokens']} tokens in {first['prefill_ms']:.2f} ms "
          f"(reused {first['reused_tokens']}); after one keystroke {second['prefill_tokens']} tokens in "
          f"{second['prefill_ms']:.2f} ms (reused {second['reused_tokens']}); prompt {second['prompt_tokens']}")
    assert first["prompt_tokens"] > 500 and first["prefill_tokens"] >= first["prompt_tokens"] - 1
    assert second["prefill_tokens"] <= 8 and second["reused_tokens"] >= second["prompt_tokens"] - 8
    assert daemon.status()["reused_tokens"] >= second["reused_tokens"]


# -- prefetch --------------------------------------------------------------------------------------------

def wait_prefetched(daemon, run: int, timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = daemon.status()
        if st["prefetch"]["run"] >= run and not st["running"] and not st["queue_length"]:
            return st
        time.sleep(0.02)
    raise AssertionError(f"no prefetch ran: {daemon.status()['prefetch']}")


def test_prefetch_prepares_the_completions_cache(daemon):
    """A prefetch at a place (answered `ok` at once) prefills that completion's prompt into its cache:
    the completion that follows at the same place, after Enter and an indentation, prefills only
    those few tokens. A prefetch without a cursor (a file just opened) prepares the part of the
    prompt that does not depend on the cursor, which a completion anywhere in the file reuses."""
    body = "".join(f"def handler_{i}(request, value={i}):\n    return request.process(value) + {i}\n\n"
                   for i in range(40))
    prefix, suffix = body + "def main(argv):\n    args = parse(argv)", "\n    run(args)\n"

    async def go():
        c = await daemon.client("prefetch")
        run0 = (await c.request(Status()))["prefetch"]["run"]
        ok = await c.request(protocol.Prefetch(doc="file:///pf.py", prefix=prefix, suffix=suffix))
        await asyncio.to_thread(wait_prefetched, daemon, run0 + 1)
        after = await c.request(Complete(doc="file:///pf.py", prefix=prefix + "\n    ", suffix=suffix,
                                         max_tokens=8, deadline_ms=30000))
        bad = await c.request({"type": "prefetch", "id": 9, "doc": "x", "cursor": "yes"})
        await c.close()
        return ok, after, bad

    ok, after, bad = arun(go())
    assert ok["type"] == "ok" and ok["queued"] is True, ok
    assert after["type"] == "result", after
    assert after["prompt_tokens"] > 400 and after["prefill_tokens"] <= 8, after
    assert after["reused_tokens"] >= after["prompt_tokens"] - 8
    assert bad["type"] == "error" and bad["code"] == protocol.BAD_REQUEST and "cursor" in bad["message"]
    st = daemon.status()
    assert st["prefetch"]["tokens"] >= after["prompt_tokens"] - 8
    assert st["requests_served"] >= 1 and st["errors_by_code"].get(protocol.INTERNAL, 0) == 0


def test_prefetch_without_a_cursor_is_reused_by_a_completion_anywhere(daemon):
    """A prefetch without a cursor prefills only the cursor-independent part of the prompt, but into a
    cache sized for the whole prompt: the completion that follows reuses every token it prefilled
    (a cache sized for that part alone would be too small for the completion and be replaced)."""
    body = "".join(f"def handler_{i}(request, value={i}):\n    return request.process(value) + {i}\n\n"
                   for i in range(60))
    cut = body.index("def handler_45")
    # the completion may write up to the config's cap (max_tokens 4000 here): its cache is sized for that

    async def go():
        c = await daemon.client("prefetch-open")
        st0 = await c.request(Status())
        await c.request(protocol.Prefetch(doc="file:///open.py", prefix=body, suffix="", cursor=False))
        st1 = await asyncio.to_thread(wait_prefetched, daemon, st0["prefetch"]["run"] + 1)
        after = await c.request(Complete(doc="file:///open.py", prefix=body[:cut] + "def main(argv):\n    ",
                                         suffix=body[cut:], max_tokens=4000, max_lines=1, deadline_ms=30000))
        await c.close()
        return st1["prefetch"]["tokens"] - st0["prefetch"]["tokens"], after

    prefetched, after = arun(go())
    assert after["type"] == "result", after
    assert prefetched > 100 and after["prompt_tokens"] > prefetched + 100, (prefetched, after)
    assert after["reused_tokens"] >= prefetched - 2, (prefetched, after)


def test_prefetch_is_dropped_for_a_newer_one_and_for_a_completion(daemon):
    """A newer prefetch of the same document drops the older one; a completion for the document
    drops its prefetch and is answered as usual, with the same text as without any prefetch."""
    body = "".join(f"value_{i} = compute({i}, scale={i * 3})\n" for i in range(150))

    async def go():
        c = await daemon.client("prefetch2")
        before = (await c.request(Status()))["prefetch"]
        oks = [c.submit(protocol.Prefetch(doc="file:///pf2.py", prefix=body + f"x{i} = ", suffix="\n"))[1]
               for i in range(3)]
        done = await c.request(Complete(doc="file:///pf2.py", prefix=body + "y = ", suffix="\n", max_tokens=6,
                                        deadline_ms=30000))
        acks = [await f for f in oks]
        assert all(a["type"] == "ok" for a in acks), acks
        fresh = await c.request(Complete(doc="file:///pf2-fresh.py", prefix=body + "y = ", suffix="\n",
                                         max_tokens=6, deadline_ms=30000))
        after = (await c.request(Status()))["prefetch"]
        await c.close()
        return before, done, fresh, after

    before, done, fresh, after = arun(go())
    assert done["type"] == "result" and done["text"] == fresh["text"], (done, fresh)
    assert after["requested"] == before["requested"] + 3
    assert after["dropped"] >= before["dropped"] + 2, (before, after)


def test_context_from_documents_imports_and_saves(daemon, tmp_path):
    ws = daemon.base / "ws"
    (ws / ".git").mkdir(parents=True)
    (ws / ".gitignore").write_text("secret.py\n")
    (ws / "pkg").mkdir()
    (ws / "pkg" / "util.py").write_text("def helper(x):\n    return x * 2\n")
    main = ws / "main.py"
    main.write_text("from pkg import util\n\nprint(util.helper(3))\n")

    async def go():
        c = await daemon.client("ctx")
        for name, text in (("other.py", "OTHER = 1\n"), ("secret.py", "TOKEN = 'x'\n")):
            await c.request(Document(uri=(ws / name).as_uri(), path=str(ws / name), language="python", text=text))
        req = dict(doc=main.as_uri(), path=str(main), prefix="from pkg import util\n\nprint(util.",
                   suffix="\n", max_tokens=4)
        r1 = await c.request(Complete(**req))
        (ws / "saved.py").write_text("SAVED = True\n")
        end = time.monotonic() + 5
        while True:
            r2 = await c.request(Complete(**req))
            if "saved.py" in r2["context_files"] or time.monotonic() > end:
                break
            await asyncio.sleep(0.1)
        await c.request(Document(uri=(ws / "other.py").as_uri(), path=str(ws / "other.py"), text=None))
        r3 = await c.request(Complete(**req))
        await c.close()
        return r1, r2, r3

    r1, r2, r3 = arun(go())
    assert r1["context_files"] == ["pkg/util.py", "other.py"], r1
    assert r2["context_files"] == ["pkg/util.py", "other.py", "saved.py"], r2
    assert r3["context_files"] == ["pkg/util.py", "saved.py"], r3


def helper_two_files_away(root: Path) -> Path:
    """A repository whose app/main.py calls scale_vector, defined in pkg/geometry.py and reached
    through pkg/shapes.py (the line at 7:4 is blank: the cursor's place); returns main.py."""
    (root / ".git").mkdir(parents=True)
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "geometry.py").write_text(
        '"""Vectors."""\n\n\ndef scale_vector(vec, factor):\n    return [v * factor for v in vec]\n')
    (root / "pkg" / "shapes.py").write_text("from pkg.geometry import scale_vector\n\nUNIT = scale_vector([1], 1)\n")
    (root / "app").mkdir()
    main = root / "app" / "main.py"
    main.write_text("from pkg import shapes\n\n\ndef grow(points, k):\n    out = []\n    for p in points:\n"
                    "        out.append(scale_vector(p, k))\n    \n    return out\n")
    return main


def test_repo_context_end_to_end(daemon):
    """Through the real daemon: a helper defined two files away is listed by `tricode complete --json`
    as a snippet of the prompt; `tricode daemon status` shows the root's index; a file saved is
    searchable within a second; broken files (binary, not UTF-8, too large, unreadable, a symlink
    loop, a dangling link, one deleted meanwhile) never fail a completion."""
    root = daemon.base / "repo"
    main = helper_two_files_away(root)
    (root / "blob.py").write_bytes(b"\x00\x01binary" * 100)
    (root / "latin.py").write_bytes("caf\xe9 = 1\n".encode("latin-1"))
    (root / "huge.py").write_text("x = 1\n" * 120_000)          # 720 kB > max_file_kb (512)
    (root / "loop").symlink_to(root)
    (root / "dangling.py").symlink_to(root / "nowhere.py")
    locked = root / "locked.py"
    locked.write_text("SECRET = 1\n")
    locked.chmod(0)
    try:
        async def opened():
            c = await daemon.client("repo")
            await c.request(Document(uri=main.as_uri(), path=str(main), language="python", text=main.read_text()))
            await c.close()
        arun(opened())
        end = time.monotonic() + 60
        while True:
            idx = [i for i in daemon.status()["workspace"]["repo_index"] if i["root"] == str(root.resolve())]
            if idx and not idx[0]["building"] and idx[0]["files"] >= 4 and idx[0]["watched"]:
                break
            assert time.monotonic() < end, daemon.status()["workspace"]
            time.sleep(0.1)
        assert idx[0]["chunks"] >= 3 and idx[0]["memory_bytes"] > 0 and sum(idx[0]["skipped"].values()) >= 3, idx
        out = daemon.cli("complete", "--file", str(main), "--line", "7", "--character", "4", "--json",
                         "--max-tokens", "4")
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["type"] == "result", r
        assert {"path": "pkg/geometry.py", "start": 4, "end": 5} in [
            {k: s[k] for k in ("path", "start", "end")} for s in r["repo_context"]], r["repo_context"]
        st = daemon.cli("daemon", "status")
        assert st.returncode == 0 and f"repo index   {root.resolve()}: " in st.stdout, st.stdout
        st = json.loads(daemon.cli("daemon", "status", "--json").stdout)
        assert any(i["root"] == str(root.resolve()) for i in st["workspace"]["repo_index"])

        async def saved():
            c = await daemon.client("repo2")
            prefix = "from pkg import shapes\n\n\ndef grow(points, k):\n    n = fresh_helper_fn(points)\n    "
            req = dict(doc=main.as_uri(), path=str(main), prefix=prefix, suffix="\n", max_tokens=1)
            before = await c.request(Complete(**req))
            t0 = time.monotonic()
            # saved, it is a recent file too: the prompt shows its start, the snippet its helper further down
            filler = "".join(f"LIMIT_{i} = {i}  # a setting\n" for i in range(150))
            (root / "pkg" / "fresh.py").write_text(filler + "\n\ndef fresh_helper_fn(points):\n    return len(points)\n")
            (root / "pkg" / "shapes.py").unlink()        # a file deleted meanwhile
            while True:
                sent = time.monotonic() - t0
                r = await c.request(Complete(**req))
                if any(s["path"] == "pkg/fresh.py" for s in r["repo_context"]) or sent > 5:
                    break
                await asyncio.sleep(0.02)
            await c.close()
            return before, r, sent

        before, after, sent = arun(saved())
        assert before["type"] == "result" and not any(s["path"] == "pkg/fresh.py" for s in before["repo_context"])
        assert after["type"] == "result" and any(s["path"] == "pkg/fresh.py" for s in after["repo_context"]), after
        assert sent < 1.0, sent
    finally:
        locked.chmod(0o644)


# -- the CLI ---------------------------------------------------------------------------------------------

def test_tricode_complete_cli(daemon):
    f = daemon.base / "sample.py"
    f.write_text("def square(x):\n    return \n\nprint(square(3))\n")
    out = daemon.cli("complete", "--file", str(f), "--line", "1", "--character", "11", "--json", "--max-tokens", "6")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["type"] == "result" and r["tokens"] > 0 and r["mode"] == "spec"
    out2 = daemon.cli("complete", "--file", str(f), "--line", "1", "--character", "11", "--max-tokens", "6",
                      "--mode", "ar", "--json")
    r2 = json.loads(out2.stdout)
    assert r2["text"] == r["text"], (r, r2)
    out = daemon.cli("daemon", "status")
    assert out.returncode == 0 and "state        ready" in out.stdout and "served" in out.stdout


def test_demo(daemon):
    out = daemon.cli("demo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "one keystroke later" in out.stdout and "tricode lsp" in out.stdout and "Neovim" in out.stdout
    # the completion block: the cursor's line and what the model wrote, no blank lines or trailing
    # whitespace after it (whatever a random tiny model writes)
    block = out.stdout.split("--- completion ---\n", 1)[1].split("------------------\n", 1)[0]
    lines = block.split("\n")[:-1]
    assert 1 <= len(lines) <= 3 and all(ln == ln.rstrip() for ln in lines), block
    assert len(lines) == 1 or lines[-1].strip(), block


def test_demo_completed_lines():
    from tricode.commands import completed_lines
    prefix = "def f(items):\n    \"\"\"Doc.\"\"\"\n    "
    assert completed_lines(prefix, "return sum(items)\n\n") == "    return sum(items)"
    assert completed_lines(prefix, "x = 1\n    return x\n\n") == "    x = 1\n    return x"
    assert completed_lines(prefix, "return 1  \n") == "    return 1"


def test_demo_without_a_model_says_so(tmp_path):
    from engine.embedded_model import default_model
    if default_model() is not None:
        pytest.skip("the embedded model is installed")
    base = Path(tempfile.mkdtemp(prefix="tcn", dir="/tmp"))
    try:
        out = D(base, base / "none").cli("demo", timeout=60)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert out.returncode == 2 and "embedded model is not installed" in out.stderr, out.stderr


def test_config_reload(daemon):
    import secrets as _s
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def until(pred, what, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = daemon.status()
            if pred(st):
                return st
            time.sleep(0.1)
        raise AssertionError(f"the daemon did not pick up {what}: {st['config']}")

    async def inflight():
        c = await daemon.client("reload")
        rid, fut = c.submit(Generate(doc="rl", **dict(LONG, max_tokens=300)))
        await wait_running(c, "reload", rid)
        daemon.config.write_text(BASE_CONFIG + f'deadline_ms = 777\ninline_mode = "ar"\ntcp_port = {port}\n')
        r = await fut
        await c.close()
        return r

    try:
        r = arun(inflight())
        assert r["type"] == "result" and r["tokens"] > 0           # not dropped by the reload
        st = until(lambda s: s["config"]["values"]["deadline_ms"] == 777 and s["tcp"] and s["state"] == "ready",
                   "deadline_ms")
        assert st["modes"]["inline"] == "ar" and st["deadline_ms"] == 777 and st["state"] == "ready"
        r = call(Complete(doc="r", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock)[0]
        assert r["mode"] == "ar"
        # the optional TCP listener: loopback, token required
        token = (daemon.sock.parent / "tcp_token").read_text().strip()
        assert (daemon.sock.parent / "tcp_token").stat().st_mode & 0o777 == 0o600
        for tok, want in ((_s.token_hex(8), "error"), (token, "hello")):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(protocol.pack(Hello(id=1, token=tok)))
                assert protocol.recv_frame(s)["type"] == want
        # a bad value: reported, the default used, the daemon keeps serving
        daemon.config.write_text(BASE_CONFIG + 'refactor_mode = "fast"\n')
        st = until(lambda s: s["config"]["problems"], "the bad value")
        assert "refactor_mode" in st["config"]["problems"][0] and st["modes"]["refactor"] == "ar"
    finally:
        daemon.config.write_text(BASE_CONFIG)
    until(lambda s: not s["config"]["problems"] and s["modes"]["inline"] == "spec" and not s["tcp"], "the restore")


# -- process lifecycle -----------------------------------------------------------------------------------

def test_lifecycle_start_reload_model_kill9_restart_stop(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="tcl", dir="/tmp"))
    try:
        d = D(base, write_tiny_checkpoint(base / "ck1"))
        ck2 = write_tiny_checkpoint(base / "ck2", seed=1)
        d.config.parent.mkdir(parents=True)
        d.config.write_text(f'model = "{d.ckpt}"\n' + BASE_CONFIG)       # the model comes from the config
        out = d.cli("daemon", "start")
        assert out.returncode == 0 and "ready" in out.stdout, out.stdout + out.stderr
        out = d.cli("daemon", "start")
        assert out.returncode == 0 and "already running" in out.stdout
        st = d.status()
        pid = st["pid"]
        assert st["model"] == str(d.ckpt) and (d.sock.parent.stat().st_mode & 0o777) == 0o700
        lock = d.sock.with_name("daemon.sock.lock")
        assert lock.read_text().strip() == str(pid)

        # a model change in the config reloads the model between requests
        d.config.write_text(f'model = "{ck2}"\n' + BASE_CONFIG)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            st = d.status()
            if st["model"] == str(ck2) and st["state"] == "ready":
                break
            time.sleep(0.1)
        assert st["model"] == str(ck2) and st["state"] == "ready" and st["pid"] == pid

        # kill -9 with a request in flight: the pending future fails, it does not hang
        async def killed():
            c = await d.client("k9")
            rid, fut = c.submit(Generate(doc="k", **LONG))
            await wait_running(c, "k9", rid)
            os.kill(pid, signal.SIGKILL)
            t0 = time.perf_counter()
            with pytest.raises(DaemonUnavailable):
                await fut
            took = time.perf_counter() - t0
            assert not c.connected
            with pytest.raises(DaemonUnavailable):
                c.submit(Status())
            return took

        assert arun(killed()) < 2.0
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.05)
        assert d.sock.exists() and lock.exists()           # stale files left behind by the kill

        # a client that finds no daemon starts one (as the LSP does); stale socket and lock are taken
        # over; the client sees the load progress
        async def autostart():
            frames = []
            ready = asyncio.Event()

            def progress(frame):
                frames.append(frame)
                if frame["stage"] == "ready":
                    ready.set()

            c = DaemonClient(d.sock, client_name="auto", autostart=True, start_timeout=60, on_progress=progress)
            hello = await c.connect()
            if hello["state"] != "ready":
                await asyncio.wait_for(ready.wait(), 60)
                assert frames and all(f["type"] == "progress" and 0 <= f["fraction"] <= 1 for f in frames)
            await c.close()
            return hello

        env_backup = dict(os.environ)
        os.environ.update({k: v for k, v in d.env.items() if k.startswith("XDG_")})
        try:
            hello = arun(autostart(), timeout=90)
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        assert hello["pid"] != pid
        st = wait_ready(d.sock)
        assert st["pid"] == hello["pid"] and lock.read_text().strip() == str(hello["pid"])

        # idle exit (off by default): with no connection for idle_exit_minutes the daemon goes away
        d.config.write_text(f'model = "{ck2}"\nidle_exit_minutes = 0.02\n' + BASE_CONFIG)
        new_pid = hello["pid"]
        end = time.monotonic() + 20
        while os.path.exists(f"/proc/{new_pid}") and time.monotonic() < end:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{new_pid}") and not d.sock.exists()
        assert "stopped (idle for 0.02 min)" in (base / "state" / "tricode" / "daemon.log").read_text()

        d.config.write_text(f'model = "{ck2}"\n' + BASE_CONFIG)
        out = d.cli("daemon", "start")
        assert out.returncode == 0 and "ready" in out.stdout, out.stdout + out.stderr
        out = d.cli("daemon", "stop")
        assert out.returncode == 0 and "stopped" in out.stdout, out.stdout + out.stderr
        assert not d.sock.exists()
        out = d.cli("daemon", "status")
        assert out.returncode == 3 and "not running" in out.stdout
    finally:
        d2 = D(base, base / "ck1")
        pid = None
        try:
            pid = int(d2.sock.with_name("daemon.sock.lock").read_text().strip() or 0)
        except (OSError, ValueError):
            pass
        if pid and os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def test_sigterm_clean_shutdown(daemon):
    """Last on the module daemon: SIGTERM answers what is in flight and removes the socket."""
    async def go():
        c = await daemon.client("term")
        rid, fut = c.submit(Generate(doc="t", **LONG))
        await wait_running(c, "term", rid)
        daemon.proc.send_signal(signal.SIGTERM)
        r = await fut
        await c.close()
        return r

    r = arun(go())
    assert r["type"] == "error" and r["code"] == protocol.SHUTTING_DOWN
    assert daemon.proc.wait(20) == 0
    assert not daemon.sock.exists()
    log = (daemon.base / "state" / "tricode" / "daemon.log").read_text()
    assert "stopped (SIGTERM)" in log


@pytest.mark.gpu
def test_daemon_on_cuda():
    """The daemon on the GPU: default dtype (bf16), Triton kernels in every mode, CUDA memory in status."""
    base = Path(tempfile.mkdtemp(prefix="tcg", dir="/tmp"))
    d = D(base, write_tiny_checkpoint(base / "ck"))
    d.config.parent.mkdir(parents=True)
    d.config.write_text(BASE_CONFIG.replace('device = "cpu"', 'device = "cuda"'))
    d.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(d.ckpt)],
                              env=d.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        st = wait_ready(d.sock, proc=d.proc)
        assert st["device"].startswith("cuda") and st["dtype"] == "bfloat16"
        assert st["memory"]["cuda_allocated_bytes"] > 0
        long_prefix = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(40)) + "def g(y):\n    "

        async def go():
            c = await d.client("gpu")
            out = {}
            for mode in ("ar", "spec", "diffusion"):
                for k in range(2):   # the second one reuses the prompt's KV cache
                    out[mode, k] = await c.request(Complete(doc=f"{mode}.py", prefix=long_prefix + "r" * k,
                                                            suffix="\n", max_tokens=32, max_lines=0, mode=mode,
                                                            deadline_ms=30000))
            await c.close()
            return out

        out = arun(go())
        for (mode, k), r in out.items():
            assert r["type"] == "result" and r["tokens"] > 0 and r["mode"] == mode, r
            print(f"\ncuda {mode} #{k}: {r['tokens']} tokens, {r['nfe']} forwards, prefill {r['prefill_tokens']} "
                  f"tokens {r['prefill_ms']:.1f} ms (reused {r['reused_tokens']}), decode {r['decode_ms']:.1f} ms, "
                  f"total {r['total_ms']:.1f} ms")
            if k:
                assert r["prefill_tokens"] <= 8
        d.config.write_text(BASE_CONFIG.replace('device = "cpu"', 'device = "cuda"') + 'spec_variant = "quadratic"\n')
        end = time.monotonic() + 10
        while d.status()["modes"]["spec_variant"] != "quadratic" and time.monotonic() < end:
            time.sleep(0.1)
        r = call(Complete(doc="q.py", prefix=long_prefix, suffix="\n", max_tokens=32, max_lines=0, mode="spec",
                          deadline_ms=30000), socket_path=d.sock)[0]
        assert r["type"] == "result" and r["tokens"] > 0, r
        print(f"cuda spec quadratic: {r['tokens']} tokens, {r['nfe']} forwards, total {r['total_ms']:.1f} ms")
    finally:
        d.proc.terminate()
        d.proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)

