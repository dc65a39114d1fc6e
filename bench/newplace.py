"""Section 2b: the first suggestion at a new place, through the real stack (next to the typing replay).

For each of N held-out files (copies in a project folder of the bench's own, as bench/latency.py
does), a language client in front of a private, warm daemon:

1. opens the file (`didOpen`: the LSP prefetches the prompt part that does not depend on the
   cursor), rests the cursor at the end of a line inside a function, waits a user's pause (PAUSE_S),
   presses Enter (a fresh line with the line's indentation) and asks for an inline completion there
   (`open`);
2. jumps to another function of the same file (at least MIN_JUMP lines away), rests, waits, presses
   Enter and asks again (`jump`).

Each variant runs against its own daemon: the `plugin` client also sends `tricode/cursorIdle` when
the cursor comes to rest (as the Neovim and VS Code clients do after ~300 ms; REST_S here), the
`plain` client only opens files; `before` runs the daemon without prefetch and with the contiguous
prompt layout (the behaviour before prefetch existed). Latency is client-side, from the Enter
(didChange) to the response. The daemon's split (prefill tokens, prefill and decode ms) rides along
in the item's command; the share of suggestions the loop guard cut comes from `loop_cut`.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bench.common import dist, median
from bench.latency import Editor, Req, _await_req, private_daemon, u16

PAUSE_S = 1.0           # the user's pause at a new place before typing
REST_S = 0.3            # the editor client's idle time before tricode/cursorIdle
MIN_JUMP = 25           # lines between the two places of a file
_DEF = re.compile(r"^(\s*)(async\s+)?def\s")


@dataclass
class Place:
    line: int             # the line whose end the cursor rests at; Enter opens line + 1
    indent: str           # the fresh line's indentation (the line's own)


@dataclass
class PlaceFile:
    uri: str
    text: str
    places: tuple[Place, Place]


def function_lines(text: str) -> list[tuple[int, str]]:
    """(line, indentation) of lines inside a function body after which a fresh line stays in the
    body: an indented code line (not a decorator, comment or a line that opens a block) whose next
    non-blank line has the same indentation."""
    lines = text.split("\n")
    out = []
    body_indent = None           # indentation of the innermost `def` seen, while inside it
    for i, ln in enumerate(lines[:-1]):
        s = ln.strip()
        if not s:
            continue
        ind = len(ln) - len(ln.lstrip(" "))
        m = _DEF.match(ln)
        if m:
            body_indent = len(m.group(1))
            continue
        if body_indent is not None and ind <= body_indent:
            body_indent = None               # left the function
        if body_indent is None:
            continue
        if s.startswith(("#", "@", '"', "'")) or s.endswith((":", "(", "[", "{", ",", "\\")) or "\t" in ln:
            continue
        nxt = next((x for x in lines[i + 1:] if x.strip()), None)
        if nxt is None or len(nxt) - len(nxt.lstrip(" ")) != ind or nxt.strip().startswith((")", "]", "}")):
            continue
        out.append((i, ln[:ind]))
    return out


def make_place_files(files, n: int, seed: int, workspace: Path) -> list[PlaceFile]:
    """N files (sorted by key, then a seeded shuffle) with two places each in different functions."""
    rng = random.Random(f"tricode-bench-newplace/{seed}")
    items = sorted(files)
    rng.shuffle(items)
    out = []
    for key, text in items:
        if not text.isascii() or len(text) > 60_000:
            continue
        cands = function_lines(text)
        if len(cands) < 2:
            continue
        a = rng.choice(cands)
        far = [c for c in cands if abs(c[0] - a[0]) >= MIN_JUMP]
        if not far:
            continue
        b = rng.choice(far)
        rel = "newplace/" + key.lstrip("/").replace("..", "_")
        path = workspace / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        out.append(PlaceFile(path.resolve().as_uri(), text, (Place(*a), Place(*b))))
        if len(out) >= n:
            break
    return out


def _idle(ed: Editor, uri: str, line: int, col: int) -> None:
    ed.client.protocol.notify("tricode/cursorIdle", {"textDocument": {"uri": uri},
                                                     "position": {"line": line, "character": col}})


async def replay(ed: Editor, pfiles: Sequence[PlaceFile], *, send_idle: bool, pause_s: float = PAUSE_S,
                 log=print) -> list[Req]:
    reqs: list[Req] = []
    tasks: set = set()
    for fi, pf in enumerate(pfiles):
        lines = pf.text.split("\n")
        ed.open(pf.uri, pf.text)
        shift = 0                                  # lines the earlier Enter added above a later place
        for phase, place in zip(("open", "jump"), pf.places):
            line = place.line + (shift if place.line > pf.places[0].line else 0)
            col = u16(lines[place.line])
            t_rest = time.perf_counter()
            if send_idle:
                await asyncio.sleep(REST_S)
                _idle(ed, pf.uri, line, col)
            await asyncio.sleep(max(pause_s - (time.perf_counter() - t_rest), 0.0))
            ed.insert(pf.uri, line, col, "\n" + place.indent)
            mid, fut = ed.request(pf.uri, line + 1, u16(place.indent))
            req = Req(mid, time.perf_counter(), place.indent, phase=phase)
            reqs.append(req)
            task = asyncio.ensure_future(_await_req(ed, req, fut, reqs, tasks))
            await asyncio.wait({task}, timeout=60)
            shift += 1
        ed.close(pf.uri)
        log(f"    file {fi + 1}/{len(pfiles)}: open {reqs[-2].ms:.0f} ms, jump {reqs[-1].ms:.0f} ms")
    return reqs


def summarize(reqs: Sequence[Req]) -> dict:
    out = {}
    for phase in ("open", "jump", "all"):
        rs = [r for r in reqs if phase == "all" or r.phase == phase]
        model = [r for r in rs if r.cls == "daemon"]
        keys = ("prefill_tokens", "reused_tokens", "prompt_tokens", "prefill_ms", "decode_ms", "total_ms", "tokens")
        out[phase] = {
            "latency": dist([r.ms for r in rs if r.t_done]),
            "classes": {c: sum(r.cls == c for r in rs) for c in sorted({r.cls for r in rs})},
            "split": {k: round(median([float(r.info.get(k) or 0) for r in model]), 1) for k in keys} if model else {},
            "suggestions": sum(1 for r in model if r.info.get("text") or r.info.get("shown")),
            "loop_cut": sum(1 for r in model if r.info.get("loop_cut")),
            "model_calls": len(model),
            "prompt_forms": {f: sum((r.info.get("prompt_form") or "") == f for r in model)   # prompt sizing
                             for f in sorted({r.info.get("prompt_form") or "" for r in model})},
        }
    return out


async def _run(env: dict, pfiles, send_idle: bool, options: dict, root: Path, log, pause_s: float) -> dict:
    ed = Editor(env, options, root)
    await ed.start()
    try:
        await ed.wait_ready()
        warm = pfiles[0]                     # warm-up (not counted): one request in a scratch copy
        ed.open(warm.uri + ".warmup.py", warm.text)
        _, fut = ed.request(warm.uri + ".warmup.py", warm.places[0].line, 0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(fut, 60)
        ed.close(warm.uri + ".warmup.py")
        await asyncio.sleep(0.5)
        reqs = await replay(ed, pfiles, send_idle=send_idle, pause_s=pause_s, log=log)
        st = await ed.status()
    finally:
        await ed.stop()
    s = summarize(reqs)
    d = st.get("daemon", {})
    s["daemon"] = {"prefetch": d.get("prefetch"), "loop_cuts": d.get("loop_cuts"),
                   "requests_served": d.get("requests_served")}
    s["lsp_prefetch"] = st.get("lsp", {}).get("prefetch")
    return s


VARIANTS = (("before", {"prefetch_tokens_per_s": 0, "prompt_layout": "contiguous"}, False),
            ("plain", {}, False),
            ("plugin", {}, True))


def run_new_place(model_dir: Path, files, *, n: int, seed: int = 0, variants=VARIANTS, options: dict | None = None,
                  pause_s: float = PAUSE_S, log=print) -> dict:
    ws_tmp = tempfile.TemporaryDirectory(prefix="tricode-bench-np-")
    ws = Path(ws_tmp.name) / "project"
    pfiles = make_place_files(files, n, seed + 2000, ws)
    if not pfiles:
        return {"skipped": "no held-out file with two places in functions"}
    opts = {"debounce_ms": 30, **(options or {})}
    res: dict = {"files": len(pfiles), "pause_s": pause_s, "rest_s": REST_S, "options": opts, "variants": {}}
    for label, dcfg, send_idle in variants:
        with private_daemon(Path(model_dir), dcfg) as env:
            s = asyncio.run(_run(env, pfiles, send_idle, opts, ws, log, pause_s))
        s.update(daemon_config=dcfg, cursor_idle=send_idle)
        res["variants"][label] = s
        o, j = s["open"], s["jump"]
        log(f"  new place {label}: open p50 {o['latency']['p50']:.0f} p95 {o['latency']['p95']:.0f} ms "
            f"(prefill {o['split'].get('prefill_tokens')} tokens); jump p50 {j['latency']['p50']:.0f} "
            f"p95 {j['latency']['p95']:.0f} ms (prefill {j['split'].get('prefill_tokens')} tokens)")
    ws_tmp.cleanup()
    return res
