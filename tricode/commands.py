"""CLI subcommands that talk to the daemon: daemon start|stop|status|restart|run, complete, demo.

None of them imports torch except `daemon run` (the daemon itself)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from registry.models import model_arg

DEMO_SAMPLE = Path(__file__).resolve().parent / "demo_sample.py"
DEMO_CURSOR = "    # demo: complete here\n"


def add_commands(sub) -> None:
    d = sub.add_parser("daemon", help="the background process that keeps the model loaded")
    dsub = d.add_subparsers(dest="daemon_command", required=True)

    p = dsub.add_parser("start", help="start the daemon in the background and wait until the model is ready")
    p.add_argument("--model", type=model_arg, help="checkpoint directory (default: config, TRICODE_MODEL, embedded)")
    p.add_argument("--no-wait", action="store_true", help="return as soon as the daemon process is launched")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the model (default 600)")
    p.set_defaults(func=cmd_start)

    p = dsub.add_parser("stop", help="stop the daemon (clean shutdown)")
    p.add_argument("--timeout", type=float, default=20.0)
    p.set_defaults(func=cmd_stop)

    p = dsub.add_parser("status", help="state, model, device, queue, statistics")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = dsub.add_parser("restart", help="stop, then start")
    p.add_argument("--model", type=model_arg)
    p.add_argument("--timeout", type=float, default=600.0)
    p.set_defaults(func=cmd_restart, no_wait=False)

    p = dsub.add_parser("run", help="run the daemon in the foreground (for systemd or a terminal)")
    p.add_argument("--model", type=model_arg)
    p.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("complete", help="complete a file at a position through the daemon (starts it if needed)")
    p.add_argument("--file", type=Path, required=True)
    p.add_argument("--line", type=int, required=True, help="0-based line")
    p.add_argument("--character", type=int, required=True, help="0-based character (code point) in the line")
    p.add_argument("--json", action="store_true", help="print the daemon's result as JSON")
    p.add_argument("--mode", choices=("ar", "diffusion", "spec"), help="default: the daemon's inline mode")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-lines", type=int, default=0, help="0 = until the model stops (default)")
    p.add_argument("--deadline-ms", type=int, default=0, help="0 = the daemon's default")
    p.add_argument("--model", type=model_arg, help="model for a daemon started by this command")
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("demo", help="start the daemon, complete a sample file, show how to connect editors")
    p.add_argument("--model", type=model_arg, help="checkpoint directory (default: the embedded model)")
    p.set_defaults(func=cmd_demo)


# -- helpers ----------------------------------------------------------------------------------------

def _err(msg: str) -> None:
    print(f"tricode: {msg}", file=sys.stderr)


def _hello(timeout: float = 5.0):
    """(client, hello) for a running daemon, or (None, None). Blocking, via a private event loop."""
    import asyncio

    from protocol.client import DaemonClient, DaemonUnavailable

    async def go():
        c = DaemonClient(client_name="cli", autostart=False)
        try:
            return await asyncio.wait_for(c.connect(), timeout)
        except (DaemonUnavailable, asyncio.TimeoutError, OSError):
            return None
        finally:
            await c.close()
    return asyncio.run(go())


def _request(*msgs, timeout: float | None = 30.0) -> list[dict] | None:
    from protocol.client import DaemonUnavailable, call
    try:
        return call(*msgs, timeout=timeout)
    except (DaemonUnavailable, OSError):
        return None


def _spawn(model: Path | None) -> subprocess.Popen:
    from daemon import config
    state = config.state_home()
    state.mkdir(parents=True, exist_ok=True)
    out = open(state / "daemon.stderr", "ab")
    cmd = [sys.executable, "-m", "tricode", "daemon", "run", "--detached"]
    if model:
        cmd += ["--model", str(Path(model).expanduser().resolve())]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True, close_fds=True, cwd="/")
    finally:
        out.close()


class _ProgressLine:
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def __call__(self, frame: dict) -> None:
        frac = frame.get("fraction", 0.0) or 0.0
        line = f"[{int(frac * 100):3d}%] {frame.get('message', '')}"
        if line == self.last:
            return
        self.last = line
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
            if frame.get("stage") in ("ready", "error"):
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def wait_ready(timeout: float, on_progress=None, start: bool = False, model: Path | None = None,
               spawned: bool = False) -> dict:
    """Connect (with `start`: launching the daemon unless `spawned` says it was just launched, and
    waiting for its socket), follow its progress until the model is ready; return the status dict.
    Raises DaemonUnavailable (no daemon / no answer) or RuntimeError (the model failed to load)."""
    import asyncio

    from protocol.client import DaemonClient, DaemonUnavailable
    from protocol import Status

    async def go():
        done = asyncio.Event()

        def progress(frame):
            if on_progress:
                on_progress(frame)
            if frame.get("stage") in ("ready", "error"):
                done.set()

        nonlocal spawned
        c = DaemonClient(client_name="cli", on_progress=progress, autostart=False)
        end = time.monotonic() + min(timeout, 60.0)
        while True:
            try:
                await c.connect()
                break
            except DaemonUnavailable:
                await c.close()
                if not start:
                    raise
                if not spawned and lock_pid() is None:
                    _spawn(model)
                    spawned = True
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.1)
        try:
            end = time.monotonic() + timeout
            while True:
                st = await c.request(Status())
                if st.get("state") == "ready":
                    return st
                if st.get("state") == "error":
                    raise RuntimeError(st.get("error") or "the model failed to load")
                if on_progress and not done.is_set():
                    on_progress({"stage": "loading", "fraction": st.get("progress", 0.0),
                                 "message": st.get("stage", "")})
                left = end - time.monotonic()
                if left <= 0:
                    raise DaemonUnavailable(f"the model was not ready within {timeout:.0f} s")
                try:
                    await asyncio.wait_for(done.wait(), min(left, 1.0))
                except asyncio.TimeoutError:
                    pass
                done.clear()
        finally:
            await c.close()
    return asyncio.run(go())


def lock_pid() -> int | None:
    from daemon.server import lock_holder
    return lock_holder()


# -- daemon start|stop|status|restart|run -------------------------------------------------------------

def cmd_start(args) -> int:
    import protocol
    from protocol.client import DaemonUnavailable
    hello = _hello()
    if hello is not None:
        print(f"tricode daemon already running: pid {hello.get('pid')}, {hello.get('state')}, "
              f"model {hello.get('model') or '-'}, socket {protocol.socket_path()}")
        return 0
    pid = lock_pid()
    if pid is None:
        _spawn(args.model)
        if args.no_wait:
            return 0
    elif args.no_wait:
        return 0
    try:
        st = wait_ready(args.timeout, on_progress=_ProgressLine(), start=True, spawned=True)
    except RuntimeError as e:
        _err(f"the daemon is up but the model failed to load: {e}")
        _err("fix the model setting (tricode daemon status shows it), then: tricode daemon restart")
        return 1
    except DaemonUnavailable as e:
        _err(f"the daemon did not start: {e}")
        _err(f"see {_log_hint()}")
        return 1
    print(f"tricode daemon ready: pid {st['pid']}, model {st['model']}, {st['device']} {st['dtype']}, "
          f"socket {protocol.socket_path()}")
    return 0


def _log_hint() -> str:
    from daemon import config
    return f"{config.log_path()} and {config.state_home() / 'daemon.stderr'}"


def cmd_stop(args) -> int:
    from protocol import Shutdown
    hello = _hello()
    pid = hello.get("pid") if hello else lock_pid()
    if not pid or pid < 0:
        print("tricode daemon is not running")
        return 0
    if hello is not None:
        _request(Shutdown(), timeout=5.0)
    else:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + args.timeout
    while time.monotonic() < end:
        if lock_pid() is None:
            print(f"tricode daemon stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    _err(f"the daemon (pid {pid}) did not stop within {args.timeout:.0f} s; sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return 1


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def cmd_status(args) -> int:
    import protocol
    from protocol import Status
    replies = _request(Status(), timeout=10.0)
    if not replies:
        pid = lock_pid()
        if args.json:
            print(json.dumps({"state": "stopped" if pid is None else "not answering", "pid": pid}))
        else:
            print("tricode daemon is not running" if pid is None else
                  f"tricode daemon (pid {pid}) holds the lock but does not answer on {protocol.socket_path()}")
        return 3
    st = replies[0]
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    mem = st.get("memory", {})
    fb = st.get("feedback", {})
    rate = st.get("acceptance_rate")
    lines = [
        f"state        {st['state']}" + (f" ({st['stage']}, {st['progress']:.0%})" if st["state"] == "loading" else "")
        + (f": {st['error']}" if st.get("error") else ""),
        f"pid          {st['pid']}, up {st['uptime_s']:.0f} s, protocol {st['version']}",
        f"model        {st['model'] or '-'}" + (" (+ drafter LoRA)" if st.get("lora") else ""),
        *_capability_lines(st),
        f"device       {st['device'] or '-'} {st['dtype']}" + (f", runner {st['runner']}" if st.get("runner") else "")
        + (f" (prompts prefilled in {st['prefill_dtype']})" if st.get("prefill_dtype", st["dtype"]) != st["dtype"] else ""),
        *_thread_lines(st.get("threads") or {}),
        f"memory       rss {_fmt_bytes(mem.get('rss_bytes'))}, weights {_fmt_bytes(mem.get('model_bytes'))}, "
        f"kv caches {_fmt_bytes(mem.get('kv_cache_bytes'))}"
        + (f", cuda {_fmt_bytes(mem.get('cuda_allocated_bytes'))}" if "cuda_allocated_bytes" in mem else ""),
        f"modes        inline {st['modes']['inline']}, refactor {st['modes']['refactor']} "
        f"(spec {st['modes']['spec_variant']})",
        f"queue        {st['queue_length']} waiting, running "
        f"{', '.join(str(r['kind']) + ' for ' + str(r['client']) for r in st['running']) or '-'} "
        f"(batch of up to {st.get('batch_size', 1)}), "
        f"{st['connections']} connection(s) {', '.join(st['clients'])}",
        f"served       {st['requests_served']} ({st['served_by_kind'].get('complete', 0)} inline, "
        f"{st['served_by_kind'].get('generate', 0)} refactor), {st['superseded']} superseded, "
        f"{st['aborted']} aborted, {st['deadline_stops']} hit the deadline",
        f"speed        {st['mean_tokens_per_forward']:.2f} tokens/forward, accept length "
        f"{st['mean_accept_length']:.2f}, prefix reuse {st['prefix_reuse']:.0%}",
        f"feedback     {'-' if rate is None else f'{rate:.0%} accepted'} ({fb.get('accepted', 0)} accepted, "
        f"{fb.get('partial', 0)} partial, {fb.get('rejected', 0)} rejected)",
        f"errors       {st['errors']}" + (f" {st['errors_by_code']}" if st["errors"] else "")
        + (f", {st['refused_peers']} refused peer(s)" if st["refused_peers"] else ""),
        *_remote_lines(st),
        *_index_lines(st),
        f"config       {st['config']['path']}" + ("".join(f"\n  ! {p}" for p in st["config"]["problems"])),
        f"socket       {st['socket']}" + (f", tcp {st['tcp']}" if st.get("tcp") else ""),
        f"log          {st['log']}",
    ]
    print("\n".join(lines))
    return 0


def _thread_lines(th: dict) -> list[str]:
    """The CPU threads line: llama.cpp's count now and why (daemon/cpu_share.py), or torch's rule."""
    if not th:
        return []
    if "llama_threads" not in th:
        return [f"threads      torch: {th['rule']}"]
    others = th.get("others_busy_cores")
    return [f"threads      llama.cpp {th['llama_threads']} ({th['rule']}"
            + (f"; other processes keep {others:g} cores busy" if others is not None else "") + ")"]


def _capability_lines(st: dict) -> list[str]:
    """The checkpoint line of `tricode daemon status`: family, format, drafter, the modes it serves."""
    caps = st.get("capabilities") or {}
    if not caps:
        return []
    params = caps.get("parameters") or 0
    size = f", {params / 1e6:,.0f}M parameters" if params else ""
    drafter = "with a drafter" if caps.get("drafter") else "no drafter (spec drafts from the context)"
    lines = [f"checkpoint   {caps.get('family', '?')} ({caps.get('format', '?')}{size}), {drafter}, "
             f"modes {', '.join(caps.get('modes', ())) or '-'}"]
    if caps.get("drafter_note"):       # a drafter the runner cannot run, or one refused (daemon/model_load.py)
        lines.append(f"  ! {caps['drafter_note']}")
    return lines


def _index_lines(st: dict) -> list[str]:
    """The repository index lines of `tricode daemon status`: one per indexed workspace root."""
    indexes = (st.get("workspace") or {}).get("repo_index")
    if indexes is None:
        return []
    if not indexes:
        return ["repo index   none" + (" (repo_context = false)" if not st["config"]["values"].get("repo_context")
                                      else " (no project root seen yet)")]
    lines = []
    for i in indexes:
        state = "building" if i["building"] else f"built in {i['build_seconds']:.1f} s"
        skipped = sum(i.get("skipped", {}).values())
        lines.append(f"repo index   {i['root']}: {i['files']} files, {i['chunks']} chunks, {i['definitions']} "
                     f"definitions, {_fmt_bytes(i['memory_bytes'])}, {state}"
                     + (f", {skipped} skipped" if skipped else "") + (", TRUNCATED at the limits" if i["truncated"] else "")
                     + ("" if i.get("watched", True) else ", not watched"))
    return lines


def _remote_lines(st: dict) -> list[str]:
    """The backend lines of `tricode daemon status` (nothing for the local backend)."""
    r = st.get("remote") or {}
    if st.get("backend", "local") != "openai" or not r:
        return []

    def ms(v):
        return "-" if v is None else f"{v:.0f} ms"

    health = {"ok": "ok", "unknown": "not used yet"}.get(r.get("state"), f"ERROR ({r.get('error_kind')})")
    errs = ", ".join(f"{n} {k}" for k, n in sorted(r.get("errors_by_kind", {}).items())) or "none"
    lines = [
        f"backend      openai: {r.get('url')}, model {r.get('model') or '(first listed)'}, "
        f"prompt layout {r.get('prompt_layout')}, token {r.get('api_key')}",
        f"remote       {health}; {r.get('requests', 0)} request(s), latency p50 {ms(r.get('total_ms_p50'))} "
        f"(first byte {ms(r.get('first_byte_ms_p50'))}, last {ms(r.get('last_total_ms'))}); errors: {errs}"
        + (f"; fallback local ({r.get('fallbacks', 0)} served locally)" if r.get("fallback") else ""),
    ]
    if r.get("error"):
        lines.append(f"  ! {r['error']}")
    return lines


def cmd_restart(args) -> int:
    rc = cmd_stop(argparse.Namespace(timeout=20.0))
    if rc != 0:
        return rc
    return cmd_start(argparse.Namespace(model=args.model, no_wait=False, timeout=args.timeout))


def cmd_run(args) -> int:
    from daemon.server import run
    return run(args.model, foreground=not args.detached)


# -- complete ----------------------------------------------------------------------------------------

LANGUAGES = {".py": "python", ".pyi": "python", ".js": "javascript", ".ts": "typescript", ".rs": "rust",
             ".go": "go", ".c": "c", ".h": "c", ".cpp": "cpp", ".java": "java", ".lua": "lua", ".sh": "shellscript"}


def split_at(text: str, line: int, character: int) -> tuple[str, str]:
    """(prefix, suffix) of `text` at a 0-based (line, character in code points); clamped to the text."""
    lines = text.split("\n")
    line = max(0, min(line, len(lines) - 1))
    offset = sum(len(x) + 1 for x in lines[:line]) + max(0, min(character, len(lines[line])))
    return text[:offset], text[offset:]


def cmd_complete(args) -> int:
    from protocol.client import DaemonUnavailable
    from protocol import Complete
    path = args.file.expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        _err(f"cannot read {args.file}: {e}")
        return 2
    prefix, suffix = split_at(text, args.line, args.character)
    try:
        wait_ready(600.0, on_progress=_ProgressLine(), start=True, model=args.model)
    except RuntimeError as e:
        _err(f"the model failed to load: {e}")
        return 1
    except DaemonUnavailable as e:
        _err(f"no daemon: {e}; see {_log_hint()}")
        return 1
    msg = Complete(doc=path.as_uri(), prefix=prefix, suffix=suffix, path=str(path),
                   language=LANGUAGES.get(path.suffix, "plaintext"), mode=args.mode or "",
                   max_tokens=args.max_tokens, max_lines=args.max_lines, deadline_ms=args.deadline_ms)
    replies = _request(msg, timeout=120.0)
    if not replies:
        _err("the daemon went away during the request")
        return 1
    reply = replies[0]
    if reply.get("type") == "error":
        _err(f"{reply.get('code')}: {reply.get('message')}")
        if args.json:
            print(json.dumps(reply))
        return 1
    if args.json:
        print(json.dumps(reply, ensure_ascii=False))
    else:
        print(reply["text"])
    return 0


# -- demo ----------------------------------------------------------------------------------------------

# The demo shows the completion; its timing line shows what it cost. The real 0.5B's cold prefill of
# the sample (~250 tokens) takes about 4 s on one idle core of a 2-core CPU and several times that
# when the cores are shared: an editor's 1 s inline deadline would cut it short.
DEMO_DEADLINE_MS = 60000


def completed_lines(prefix: str, completion: str) -> str:
    """The cursor's line with the completion in it, as the demo shows it: the completion may run into
    the blank lines after the function (max_lines counts them), which are not part of what was
    written, so trailing whitespace and blank lines are left out."""
    return (prefix.rstrip("\n").split("\n")[-1] + completion).rstrip()


def cmd_demo(args) -> int:
    import protocol
    from daemon.config import DEFAULT_MODEL, default_model_path
    from engine.embedded_model import EMBEDDED_MODEL
    from protocol.client import DaemonUnavailable
    from protocol import Complete

    # the default: the pulled qwen2.5-coder-0.5b (`make run` pulls it), else the embedded model
    model = args.model or default_model_path()
    running = _hello()
    if running is None and model is None:
        _err(f"the embedded model is not installed yet ({EMBEDDED_MODEL} has no config.json) and "
             f"{DEFAULT_MODEL} is not pulled.")
        _err(f"Run `tricode model pull {DEFAULT_MODEL}` (or `make run`), or `tricode demo --model NAME|PATH`.")
        return 2
    print("== tricode demo ==")
    if running is not None:
        print(f"daemon already running (pid {running.get('pid')}), model {running.get('model') or '-'}")
    else:
        print(f"starting the daemon with {model}")
    t0 = time.perf_counter()
    try:
        st = wait_ready(600.0, on_progress=_ProgressLine(sys.stdout), start=True, model=model)
    except RuntimeError as e:
        _err(f"the model failed to load: {e}")
        return 1
    except DaemonUnavailable as e:
        _err(f"the daemon did not start: {e}; see {_log_hint()}")
        return 1
    ready_s = time.perf_counter() - t0
    print(f"ready in {ready_s:.1f} s: {st['model_name']} on {st['device']} ({st['dtype']}), "
          f"inline mode {st['modes']['inline']}")

    text = DEMO_SAMPLE.read_text()
    cut = text.index(DEMO_CURSOR)
    prefix, suffix = text[:cut] + "    ", "\n" + text[cut + len(DEMO_CURSOR):]
    print(f"\n--- {DEMO_SAMPLE.name}, completing at the cursor (|) ---")
    shown = prefix.rstrip("\n").split("\n")[-6:]
    print("\n".join(shown) + "|")
    msgs = [Complete(doc=DEMO_SAMPLE.as_uri(), prefix=prefix, suffix=suffix, path=str(DEMO_SAMPLE),
                     max_tokens=48, max_lines=3, deadline_ms=DEMO_DEADLINE_MS),
            # one keystroke later: the prompt's prefix is reused from the KV cache
            Complete(doc=DEMO_SAMPLE.as_uri(), prefix=prefix + "r", suffix=suffix, path=str(DEMO_SAMPLE),
                     max_tokens=48, max_lines=3, deadline_ms=DEMO_DEADLINE_MS)]
    replies = _request(*msgs, timeout=120.0)
    if not replies:
        _err("the daemon went away during the demo")
        return 1
    for label, r in zip(("completion", "after typing 'r'"), replies):
        if r.get("type") == "error":
            _err(f"{label}: {r.get('code')}: {r.get('message')}")
            return 1
    first, second = replies
    print("--- completion ---")
    if first["text"].strip():
        print(completed_lines(prefix, first["text"]))
    else:
        print(f"(nothing written: stop {first['stop_reason']})")
    print("------------------")
    for label, r in (("first request", first), ("one keystroke later", second)):
        print(f"{label:20s} {r['total_ms']:7.1f} ms total (prefill {r['prefill_ms']:.1f} ms for "
              f"{r['prefill_tokens']} tokens, {r['reused_tokens']} reused from the cache; decode "
              f"{r['decode_ms']:.1f} ms), {r['tokens']} tokens, {r['tokens_per_forward']:.2f} tokens/forward, "
              f"mode {r['mode']}, stop {r['stop_reason']}")
    print(f"""
The daemon keeps running in the background (pid {st['pid']}, socket {protocol.socket_path()}).
  tricode daemon status     state, model, speed, acceptance
  tricode daemon stop       stop it
  tricode complete --file F --line L --character C    complete from a terminal

Connect an editor (the language server command is `tricode lsp`; it starts the daemon if needed):
  Neovim:  add editor_clients/nvim to your runtimepath and call require("tricode").setup()
           (or any LSP client config with cmd = {{ "{_tricode_exe()}", "lsp" }})
  VS Code: install the extension in editor_clients/vscode (npm install && npx vsce package, then
           "Extensions: Install from VSIX..."), it runs `tricode lsp` for you.
See README.md for the settings (the same keys as ~/.config/tricode/config.toml).""")
    return 0


def _tricode_exe() -> str:
    exe = Path(sys.executable).with_name("tricode")
    return str(exe) if exe.exists() else "tricode"
