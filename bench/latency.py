"""Section 2: keystroke-to-suggestion latency through the real stack.

A private daemon (its own XDG dirs and socket, never the user's) is started and warmed up; a
language client (pygls' LanguageClient, JSON-RPC over stdio) starts `tricode lsp` in front of it and
replays an editing session on real held-out files, as VS Code drives an inline-completion server:

* per site (a held-out line, training/evaluate.py's single-line tasks): open the file with that line's
  content removed, put the cursor there and ask once (a document the daemon has not seen: the whole
  prompt is prefilled, class ``open``), then type the line character by character at 10 to 20
  characters per second (seeded intervals of 50 to 100 ms), with an inline-completion request after
  every keystroke and a ``$/cancelRequest`` for the previous request when it is still pending, as an
  editor sends them; at word boundaries the typist sometimes pauses (0.6 to 1.2 s), which lets the
  request of that moment be answered; close the file.
* every request is classified by how it ended: ``cancelled`` (RequestCancelled), ``superseded``
  (answered empty because a newer keystroke came), ``cache`` (answered by the LSP's cache: typed
  through the shown suggestion, or the same context again), ``daemon`` (a model call: the cache-miss
  latency), ``unknown`` (an empty answer whose source could not be read back). The source and the
  daemon-side split ride along in the item's command (lsp/SETTINGS.md); for an empty answer they are
  read from ``tricode/status``'s ``last`` (checked against the cursor line).

Latency is measured in the client: from the keystroke (the didChange sent) to the response, so it
includes the LSP's debounce (default 30 ms), JSON-RPC and the daemon. The daemon-side split is the
Result's queue / context / prefill / decode / total ms; post-processing (not forwarded by the LSP) is
total minus the others.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from bench.common import REPO, dist, median
from lsp.server import plain

CANCELLED = -32800
BOUNDARY = set(" .(,[=:")


@dataclass
class Site:
    uri: str
    text: str            # the document as opened (the line's content removed)
    line: int            # cursor line
    col16: int           # cursor column in UTF-16 units (the negotiated encoding)
    typed: str           # what the typist types
    line_prefix: str     # the cursor line before typing


@dataclass
class Req:
    mid: int
    t_send: float
    line_prefix: str
    cls: str = "pending"
    t_done: float | None = None
    info: dict = field(default_factory=dict)
    newer_sent: bool = False
    phase: str = "typing"        # open | typing | pause

    @property
    def ms(self) -> float:
        return (self.t_done - self.t_send) * 1e3 if self.t_done else 0.0


def u16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def make_sites(files, n: int, seed: int, workspace: Path, min_chars: int = 6, max_chars: int = 60) -> list[Site]:
    """Sites on copies of the held-out files in ``workspace`` (a project folder of the bench's own: the
    originals live in site-packages and the like, which a venv's or the project's .gitignore hides
    from completion, as an editor's would be)."""
    from training.evaluate import make_fim_tasks
    tasks = [t for t in make_fim_tasks(files, 6 * n + 20, seed=seed)
             if min_chars <= len(t.middle) <= max_chars and t.middle.isascii()]
    sites, seen = [], set()
    for t in tasks:
        key = t.task_id.rsplit(":", 1)[0]
        if key in seen:
            continue
        seen.add(key)
        rel = key.lstrip("/").replace("..", "_")
        path = workspace / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(t.prefix + t.suffix, encoding="utf-8")
        uri = path.resolve().as_uri()
        lp = t.prefix.rsplit("\n", 1)[-1]
        sites.append(Site(uri=uri, text=t.prefix + t.suffix, line=t.prefix.count("\n"), col16=u16(lp),
                          typed=t.middle, line_prefix=lp))
        if len(sites) >= n:
            break
    return sites


# ----------------------------------------------------------------------------- the private stack


@contextlib.contextmanager
def private_daemon(model_dir: Path, daemon_config: dict | None = None, timeout: float = 300.0):
    """A daemon on its own socket and XDG dirs, ready (model loaded, warmed up); yields the env."""
    from protocol.client import call
    from protocol import Status
    root = Path(tempfile.mkdtemp(prefix="tcbench"))           # short: socket paths have a length limit
    env = dict(os.environ)
    env.update(TRICODE_SOCKET=str(root / "d.sock"), XDG_RUNTIME_DIR=str(root), XDG_STATE_HOME=str(root / "state"),
               XDG_CONFIG_HOME=str(root / "config"), TRICODE_MODEL=str(model_dir), TRICODE_LSP_LOG="warning")
    env.pop("PYTHONSTARTUP", None)
    if daemon_config:
        (root / "config" / "tricode").mkdir(parents=True)
        lines = [f"{k} = {json.dumps(v)}" for k, v in daemon_config.items()]   # JSON scalars are TOML
        (root / "config" / "tricode" / "config.toml").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(model_dir)],
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = call(Status(), socket_path=env["TRICODE_SOCKET"], timeout=5.0)[0]
            except Exception:  # noqa: BLE001 - not up yet
                st = None
            if st and st.get("state") == "ready":
                break
            if proc.poll() is not None:
                raise RuntimeError("the daemon exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon was not ready within {timeout:.0f} s: {st}")
            time.sleep(0.2)
        env["_BENCH_DAEMON_PID"] = str(proc.pid)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


class Editor:
    """The client side: what an editor sends, with request ids we choose (for $/cancelRequest)."""

    def __init__(self, env: dict, options: dict | None = None, root: Path | None = None):
        self.env, self.options, self.root = env, options or {}, root
        self.client = None
        self._ids = iter(range(1000, 10**9))
        self.versions: dict[str, int] = {}

    async def start(self) -> None:
        from lsprotocol import types as T
        from pygls.lsp.client import LanguageClient
        self.client = LanguageClient("tricode-bench", "0.1")
        log_file = Path(self.env["XDG_STATE_HOME"]) / "lsp.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        await self.client.start_io(sys.executable, "-m", "tricode", "lsp", "--log-file", str(log_file),
                                   env=self.env, cwd=str(REPO))
        caps = T.ClientCapabilities(
            text_document=T.TextDocumentClientCapabilities(
                inline_completion=T.InlineCompletionClientCapabilities(),
                synchronization=T.TextDocumentSyncClientCapabilities()),
            general=T.GeneralClientCapabilities(position_encodings=[T.PositionEncodingKind.Utf16]))
        await asyncio.wait_for(self.client.initialize_async(T.InitializeParams(
            capabilities=caps, client_info=T.ClientInfo(name="tricode-bench"),
            root_uri=self.root.resolve().as_uri() if self.root else None,
            workspace_folders=[T.WorkspaceFolder(uri=self.root.resolve().as_uri(), name="bench")] if self.root else None,
            initialization_options=self.options)), 60)
        self.client.initialized(T.InitializedParams())

    async def stop(self) -> None:
        if self.client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.stop(), 10)

    async def status(self) -> dict:
        return plain(await asyncio.wait_for(self.client.protocol.send_request_async("tricode/status", {}), 20))

    async def wait_ready(self, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status()
            if st.get("state") == "ready":
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"tricode lsp not ready: {st.get('state')} {st.get('connection')}")
            await asyncio.sleep(0.2)

    def configure(self, settings: dict) -> None:
        from lsprotocol import types as T
        self.client.workspace_did_change_configuration(T.DidChangeConfigurationParams(settings={"tricode": settings}))

    def open(self, uri: str, text: str) -> None:
        from lsprotocol import types as T
        self.versions[uri] = 1
        self.client.text_document_did_open(T.DidOpenTextDocumentParams(
            text_document=T.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))

    def close(self, uri: str) -> None:
        from lsprotocol import types as T
        self.client.text_document_did_close(T.DidCloseTextDocumentParams(
            text_document=T.TextDocumentIdentifier(uri=uri)))

    def insert(self, uri: str, line: int, col: int, text: str) -> None:
        from lsprotocol import types as T
        self.versions[uri] += 1
        pos = T.Position(line=line, character=col)
        self.client.text_document_did_change(T.DidChangeTextDocumentParams(
            text_document=T.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[T.TextDocumentContentChangePartial(range=T.Range(start=pos, end=pos), text=text)]))

    def request(self, uri: str, line: int, col: int):
        from lsprotocol import types as T
        mid = next(self._ids)
        params = T.InlineCompletionParams(
            context=T.InlineCompletionContext(trigger_kind=T.InlineCompletionTriggerKind.Automatic),
            text_document=T.TextDocumentIdentifier(uri=uri), position=T.Position(line=line, character=col))
        fut = self.client.protocol.send_request(T.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=mid)
        return mid, asyncio.wrap_future(fut)

    def cancel(self, mid: int) -> None:
        from lsprotocol import types as T
        self.client.protocol.notify(T.CANCEL_REQUEST, T.CancelParams(id=mid))


# ----------------------------------------------------------------------------- the replay


async def _await_req(ed: Editor, req: Req, fut, reqs: list[Req], tasks: set) -> None:
    from pygls.exceptions import JsonRpcException
    try:
        res = await asyncio.wait_for(fut, 60)
    except JsonRpcException as e:
        req.t_done = time.perf_counter()
        req.cls = "cancelled" if e.code == CANCELLED else "error"
        req.info = {"error": str(e)}
        return
    except asyncio.TimeoutError:
        req.cls = "timeout"
        return
    req.t_done = time.perf_counter()
    items = list(getattr(res, "items", None) or [])
    if items:
        cmd = items[0].command
        info = plain(cmd.arguments[0]) if cmd and cmd.arguments else {}
        req.info = info if isinstance(info, dict) else {}
        req.info["text"] = items[0].insert_text
        req.cls = req.info.get("source", "unknown")
        return
    if req.newer_sent:
        req.cls = "superseded"
        return
    # empty and nothing newer: the LSP's `last` is this request's outcome (checked by the cursor line)
    req.cls = "unknown"
    try:
        last = (await ed.status())["lsp"]["completions"]["last"]
    except Exception:  # noqa: BLE001
        return
    if last.get("line_prefix") == req.line_prefix and last.get("uri"):
        req.info = {k: v for k, v in last.items() if k not in ("raw", "plan", "context_files")}
        req.cls = last.get("source", "unknown")


async def replay(ed: Editor, sites: Sequence[Site], *, seed: int, cps: tuple[float, float] = (10.0, 20.0),
                 pause_p: float = 0.35, pause_s: tuple[float, float] = (0.6, 1.2), open_wait: float = 0.3,
                 log=print) -> list[Req]:
    rng = random.Random(f"tricode-bench-typing/{seed}")
    reqs: list[Req] = []
    tasks: set = set()

    def send(site: Site, col: int, line_prefix: str, phase: str) -> tuple[Req, asyncio.Future]:
        for r in reqs:
            if r.cls == "pending":
                r.newer_sent = True
        mid, fut = ed.request(site.uri, site.line, col)
        req = Req(mid, time.perf_counter(), line_prefix, phase=phase)
        reqs.append(req)
        task = asyncio.ensure_future(_await_req(ed, req, fut, reqs, tasks))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return req, task

    for si, site in enumerate(sites):
        ed.open(site.uri, site.text)
        await asyncio.sleep(open_wait)
        req, task = send(site, site.col16, site.line_prefix, "open")
        await asyncio.wait({task}, timeout=30)
        col, lp, pending = site.col16, site.line_prefix, (req, task)
        for i, ch in enumerate(site.typed):
            await asyncio.sleep(rng.uniform(1.0 / cps[1], 1.0 / cps[0]))
            prev, _ = pending
            if prev.cls == "pending":
                ed.cancel(prev.mid)             # the editor drops the request of the previous keystroke
            ed.insert(site.uri, site.line, col, ch)
            col, lp = col + u16(ch), lp + ch
            pause = ch in BOUNDARY and i < len(site.typed) - 1 and rng.random() < pause_p
            pending = send(site, col, lp, "pause" if pause else "typing")
            if pause:
                await asyncio.sleep(rng.uniform(*pause_s))
        await asyncio.wait({pending[1]}, timeout=30)
        await asyncio.sleep(rng.uniform(*pause_s))
        ed.close(site.uri)
        log(f"    site {si + 1}/{len(sites)}: {len(site.typed)} chars typed")
    if tasks:
        await asyncio.wait(set(tasks), timeout=60)
    return reqs


def summarize(reqs: Sequence[Req], counters: dict, debounce_ms: float) -> dict:
    n = len(reqs)
    by = {}
    for r in reqs:
        by.setdefault(r.cls, []).append(r)
    share = {k: round(len(v) / n, 4) for k, v in sorted(by.items())} if n else {}
    daemon = [r for r in by.get("daemon", []) if r.phase != "open"]
    opened = [r for r in by.get("daemon", []) if r.phase == "open"]
    cache = by.get("cache", [])
    typed = [r for r in cache if r.info.get("typed")]
    answered = [r for r in reqs if r.cls in ("daemon", "cache")]

    def split(rs: Sequence[Req]) -> dict:
        keys = ("queue_ms", "context_ms", "prefill_ms", "decode_ms", "total_ms")
        out = {k: round(median([float(r.info.get(k) or 0.0) for r in rs]), 2) for k in keys}
        out["post_ms"] = round(median([max(float(r.info.get("total_ms") or 0) - sum(
            float(r.info.get(k) or 0) for k in keys[:4]), 0.0) for r in rs]), 2)
        out["lsp_ms"] = round(median([float(r.info.get("latency_ms") or 0.0) for r in rs]), 2)
        out["client_ms"] = round(median([r.ms for r in rs]), 2)
        out["outside_daemon_ms"] = round(out["client_ms"] - out["total_ms"], 2)
        out["prefill_tokens"] = round(median([float(r.info.get("prefill_tokens") or 0) for r in rs]), 1)
        out["reused_tokens"] = round(median([float(r.info.get("reused_tokens") or 0) for r in rs]), 1)
        out["prompt_tokens"] = round(median([float(r.info.get("prompt_tokens") or 0) for r in rs]), 1)
        out["tokens"] = round(median([float(r.info.get("tokens") or 0) for r in rs]), 1)
        out["tokens_per_forward"] = round(median([float(r.info.get("tokens_per_forward") or 0) for r in rs]), 2)
        out["prompt_forms"] = {f: sum((r.info.get("prompt_form") or "") == f for r in rs)     # prompt sizing
                               for f in sorted({r.info.get("prompt_form") or "" for r in rs})}
        return out

    return {
        "requests": n, "keystrokes": sum(r.phase != "open" for r in reqs), "classes": share,
        "answered_share": round(len(answered) / n, 4) if n else 0.0,
        "cache_share": round(len(cache) / n, 4) if n else 0.0,
        "superseded_share": round((len(by.get("superseded", [])) + len(by.get("cancelled", []))) / n, 4) if n else 0.0,
        "latency_all_answered": dist([r.ms for r in answered]),
        "latency_cache_miss": dist([r.ms for r in daemon]),
        "latency_open": dist([r.ms for r in opened]),
        "latency_cache_hit": dist([r.ms for r in cache]),
        "latency_typed_through": dist([r.ms for r in typed]),
        "latency_superseded": dist([r.ms for r in reqs if r.cls in ("superseded", "cancelled")]),
        "split_cache_miss": split(daemon) if daemon else {},
        "split_open": split(opened) if opened else {},
        "lsp_counters": counters, "debounce_ms": debounce_ms,
        "suggestions_nonempty": sum(1 for r in answered if r.info.get("text") or r.info.get("shown")),
        "loop_cut": sum(1 for r in by.get("daemon", []) if r.info.get("loop_cut")),
        "model_answers": len(by.get("daemon", [])),
        "raw_cache_miss_ms": [round(r.ms, 2) for r in daemon], "raw_cache_hit_ms": [round(r.ms, 2) for r in cache],
    }


async def _index_built(env: dict, log, timeout: float = 600.0) -> list[dict]:
    """Wait until the daemon's repository indexes (if it builds any: repo_context) are built, so that
    the replay measures typing with a built index; their status entries."""
    from protocol import Status
    from protocol.client import call
    end = time.monotonic() + timeout
    while True:
        st = (await asyncio.to_thread(call, Status(), socket_path=env["TRICODE_SOCKET"], timeout=10.0))[0]
        idx = (st.get("workspace") or {}).get("repo_index") or []
        if not any(i["building"] for i in idx) or time.monotonic() > end:
            for i in idx:
                log(f"  repository index {i['root']}: {i['files']} files, {i['chunks']} chunks, "
                    f"{i['memory_bytes'] / 2**20:.1f} MiB, built in {i['build_seconds']:.1f} s")
            return idx
        await asyncio.sleep(0.5)


async def _run(env: dict, sites: Sequence[Site], variants: Sequence[tuple[str, str]], seed: int, options: dict,
               cps, log, root: Path) -> dict:
    """variants: (label, inline mode) replayed in turn against the daemon of ``env``."""
    out = {}
    ed = Editor(env, options, root)
    await ed.start()
    try:
        st = await ed.wait_ready()
        out["_daemon"] = {k: st.get(k) for k in ("model", "device", "mode")}
        # warm-up: one document, a few requests (not counted)
        warm = sites[0]
        ed.open(warm.uri + ".warmup.py", warm.text)
        for _ in range(2):
            _, fut = ed.request(warm.uri + ".warmup.py", warm.line, warm.col16)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fut, 60)
        ed.close(warm.uri + ".warmup.py")
        out["_index"] = await _index_built(env, log)
        for label, mode in variants:
            ed.configure({"inline_mode": mode})
            await asyncio.sleep(0.3)
            before = (await ed.status())["lsp"]["completions"]
            t0 = time.perf_counter()
            reqs = await replay(ed, sites, seed=seed, cps=cps, log=log)
            after = (await ed.status())["lsp"]["completions"]
            counters = {k: after.get(k, 0) - before.get(k, 0) for k in
                        ("requests", "cache_hits", "daemon_calls", "suggestions", "empty", "superseded",
                         "superseded_total", "cancelled", "errors")}
            s = summarize(reqs, counters, options.get("debounce_ms", 30))
            s["seconds"] = round(time.perf_counter() - t0, 1)
            s["mode"] = mode
            out[label] = s
            m = s["latency_cache_miss"]
            log(f"  lsp {label}: {s['requests']} requests; cache-miss p50 {m['p50']:.0f} ms p95 {m['p95']:.0f} "
                f"(n={m['n']}); cache hits {s['cache_share']:.0%}, superseded {s['superseded_share']:.0%}")
    finally:
        await ed.stop()
    return out


def run_latency(model_dir: Path, files, *, sites: int, variants: Sequence[tuple[str, str, dict]] = (
                    ("spec", "spec", {}), ("ar", "ar", {})), seed: int = 0, options: dict | None = None,
                cps: tuple[float, float] = (10.0, 20.0), log=print, project: bool = False) -> dict:
    """variants: (label, inline mode, daemon config); one private daemon per distinct daemon config.
    `project`: the workspace is a repository (a .git marker, every held-out file copied in, the sites'
    files as opened), as the daemon's repository index wants one; else only the sites' files, no marker."""
    ws_tmp = tempfile.TemporaryDirectory(prefix="tricode-bench-ws-")
    ws = Path(ws_tmp.name) / "project"
    if project:
        (ws / ".git").mkdir(parents=True)
        for key, text in files:
            path = ws / key.lstrip("/").replace("..", "_")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    ss = make_sites(files, sites, seed=seed + 1000, workspace=ws)
    if not ss:
        return {"skipped": "no usable held-out lines for the replay"}
    opts = {"debounce_ms": 30, **(options or {})}
    res: dict = {"variants": {}}
    groups: dict[str, list] = {}
    for label, mode, dcfg in variants:
        groups.setdefault(json.dumps(dcfg, sort_keys=True), []).append((label, mode))
    for key, vs in groups.items():
        dcfg = json.loads(key)
        with private_daemon(Path(model_dir), dcfg) as env:     # started and polled outside the event loop
            out = asyncio.run(_run(env, ss, vs, seed, opts, cps, log, ws))
        daemon = out.pop("_daemon", {})
        index = out.pop("_index", [])
        for label, s in out.items():
            s["daemon_config"] = dcfg
            s["repo_index"] = index
            res["variants"][label] = s
        res["daemon"] = daemon
    res.update(sites=len(ss), chars=sum(len(s.typed) for s in ss), options=opts, cps=list(cps),
               files=sorted({s.uri.rsplit('/', 1)[-1] for s in ss}))
    ws_tmp.cleanup()
    return res
