"""Section 6: load as a team's machine sees it: several editors typing against one daemon, refactors
in between.

One private daemon (bench.latency.private_daemon); `editors` processes of `tricode lsp`, each driven
over stdio by bench/rawlsp.py. Each editor types into its own document at `rate` keystrokes per
second: a didChange inserting one character, then a textDocument/inlineCompletion at the new cursor;
when the previous request of that editor is still unanswered it is cancelled ($/cancelRequest) half of
the time and otherwise left to be superseded (both happen in editors). Every `refactor_every` seconds
one editor (in turn) runs the `tricode.refactor` command (complete a function body) on a second
document it does not type into (the edit is acknowledged, not applied, so every refactor has work). After `seconds` of typing, every request still open is waited for (at most DRAIN_S).

Reported: requests sent and answered, by outcome (a suggestion, empty, RequestCancelled, an error),
latency p50/p95 of the answers (client side, from the request to its response), the refactors' times
(send to applied answer) and how often the scheduler let a waiting refactor go ahead by ageing, the
daemon's RSS at the start (after warm-up) and at the end with samples in between, the daemon's own
counters. What it does not measure: suggestion quality (the figures hold for any output).

    python -m bench.load --model DIR [--editors 4 --rate 20 --seconds 60 --refactor-every 5]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from bench.common import dist
from bench.rawlsp import RawLsp, initialize_params

CANCELLED = -32800
DRAIN_S = 120.0

TYPED = ("    total = 0\n    for item in items:\n        if item.price > limit:\n"
         "            total += item.price * item.count\n    return total\n\n\n")
HEAD = "import math\n\n\ndef subtotal(items, limit):\n"
LIB = ("def mean(values):\n    return sum(values) / len(values) if values else 0.0\n\n\n"
       "def scale(values, factor):\n    pass\n")
LIB_PASS = (5, 8)           # the `pass` line and its end: "complete this function body" replaces it


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Typist:
    """One editor: its LSP process, its document and cursor, and every request it sent."""

    def __init__(self, n: int, client: RawLsp, root: Path, rng: random.Random):
        self.n, self.c, self.rng = n, client, rng
        self.uri = (root / f"editor{n}.py").as_uri()
        self.lib = (root / f"lib{n}.py").as_uri()
        self.text = HEAD
        self.version = 1
        self.typed = 0
        self.requests: list[dict] = []      # {id, kind, sent, done, outcome, code}
        self.pending = None

    def open(self) -> None:
        for uri, text in ((self.uri, self.text), (self.lib, LIB)):
            self.c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                                    "version": 1, "text": text}})

    def cursor(self) -> tuple[int, int]:
        lines = self.text.split("\n")
        return len(lines) - 1, len(lines[-1])

    def keystroke(self) -> str:
        ch = TYPED[self.typed % len(TYPED)]
        self.typed += 1
        line, col = self.cursor()
        self.version += 1
        self.c.notify("textDocument/didChange", {
            "textDocument": {"uri": self.uri, "version": self.version},
            "contentChanges": [{"range": {"start": {"line": line, "character": col},
                                          "end": {"line": line, "character": col}}, "text": ch}]})
        self.text += ch
        if self.pending is not None and "done" not in self.pending and self.rng.random() < 0.5:
            self.c.notify("$/cancelRequest", {"id": self.pending["id"]})
        line, col = self.cursor()
        rid = self.c.send_request("textDocument/inlineCompletion", {
            "textDocument": {"uri": self.uri}, "position": {"line": line, "character": col},
            "context": {"triggerKind": 2}})
        self.pending = {"id": rid, "kind": "inline", "sent": time.monotonic()}
        self.requests.append(self.pending)
        return ch

    def refactor(self) -> dict:
        rid = self.c.send_request("workspace/executeCommand", {
            "command": "tricode.refactor", "arguments": [{"action": "complete_body", "uri": self.lib,
                                                          "range": [*LIB_PASS, *LIB_PASS]}]})
        req = {"id": rid, "kind": "refactor", "sent": time.monotonic()}
        self.requests.append(req)
        return req


async def _collect(t: Typist, req: dict, deadline: float) -> None:
    try:
        reply = await t.c.reply(req["id"], max(0.1, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        req["outcome"] = "unanswered"
        return
    req["done"] = time.monotonic()
    err = reply.get("error")
    if err is not None:
        req["code"] = err.get("code")
        req["outcome"] = "cancelled" if err.get("code") == CANCELLED else "error"
        req["message"] = err.get("message", "")
    elif req["kind"] == "inline":
        req["outcome"] = "suggestion" if (reply.get("result") or {}).get("items") else "empty"
    else:
        req["outcome"] = "applied" if (reply.get("result") or {}).get("applied") else "refactor_result"


async def run_load_async(env: dict, *, editors: int, rate: float, seconds: float, refactor_every: float,
                         options: dict, pauses: float = 0.0, seed: int = 0, log=print) -> dict:
    """`pauses`: the chance that the typist stops for 0.6 to 1.2 s at the end of a word (a space or a
    newline after a non-blank; 0: it types without a break, and every request meets the next keystroke)."""
    from protocol.client import DaemonClient
    from protocol import Status
    pid = int(env["_BENCH_DAEMON_PID"])
    root = Path(env["XDG_STATE_HOME"]).parent / "work"
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    typists = []
    for n in range(editors):
        c = await RawLsp.start(env)
        reply = await c.request("initialize", initialize_params(root, name=f"load{n}", options=options), 60)
        if "result" not in reply:
            raise RuntimeError(f"initialize failed: {reply}")
        c.notify("initialized", {})
        t = Typist(n, c, root, random.Random(rng.random()))
        t.open()
        await c.drain()
        typists.append(t)
    for t in typists:       # warm: one answered completion per editor (connects, prefills the document)
        t.keystroke()
        await t.c.drain()
        await _collect(t, t.requests[-1], time.monotonic() + 120)
    for t in typists:
        t.requests.clear()

    daemon = DaemonClient(env["TRICODE_SOCKET"], client_name="bench-load", autostart=False)
    await daemon.connect()
    st0 = await daemon.request(Status())
    rss = [(0.0, _rss(pid))]
    log(f"  load: {editors} editors x {rate:g} keystrokes/s for {seconds:g} s, a refactor every "
        f"{refactor_every:g} s; daemon RSS at start {rss[0][1] / 2**20:.1f} MiB")

    tasks: set = set()
    t0 = time.monotonic()
    period = 1.0 / rate
    next_key = [t0 + rng.random() * period for _ in typists]
    next_refactor, turn, next_sample = t0 + refactor_every, 0, t0 + 5.0
    end_typing = t0 + seconds
    drain_by = end_typing + DRAIN_S
    while True:
        now = time.monotonic()
        if now >= end_typing:
            break
        for i, t in enumerate(typists):
            if now >= next_key[i]:
                ch = t.keystroke()
                tasks.add(asyncio.ensure_future(_collect(t, t.requests[-1], drain_by)))
                next_key[i] += period
                if ch in " \n" and t.text[-2:-1] not in (" ", "\n", "") and rng.random() < pauses:
                    next_key[i] += rng.uniform(0.6, 1.2)
        if now >= next_refactor:
            t = typists[turn % editors]
            turn += 1
            req = t.refactor()
            tasks.add(asyncio.ensure_future(_collect(t, req, drain_by)))
            next_refactor += refactor_every
        if now >= next_sample:
            rss.append((round(now - t0, 1), _rss(pid)))
            next_sample += 5.0
        await asyncio.gather(*(t.c.drain() for t in typists))
        await asyncio.sleep(max(0.0, min(min(next_key), next_refactor) - time.monotonic()))
    await asyncio.gather(*tasks)
    drained_s = time.monotonic() - end_typing
    rss.append((round(time.monotonic() - t0, 1), _rss(pid)))
    st1 = await daemon.request(Status())
    await daemon.close()
    alive = all(t.c.alive for t in typists)
    for t in typists:
        await t.c.close()

    reqs = [r for t in typists for r in t.requests]
    inline = [r for r in reqs if r["kind"] == "inline"]
    refs = [r for r in reqs if r["kind"] == "refactor"]
    outcomes: dict = {}
    for r in reqs:
        key = f"{r['kind']}:{r.get('outcome', 'unanswered')}"
        outcomes[key] = outcomes.get(key, 0) + 1
    answered = [r for r in reqs if "done" in r]
    ms = lambda rs: [(r["done"] - r["sent"]) * 1e3 for r in rs if "done" in r]  # noqa: E731
    errors = [r for r in reqs if r.get("outcome") == "error"]
    served = lambda st: st.get("served_by_kind", {})  # noqa: E731
    res = {
        "editors": editors, "rate_per_editor": rate, "seconds": seconds, "refactor_every_s": refactor_every,
        "pauses": pauses, "keystrokes_per_s": round(len([r for r in reqs if r["kind"] == "inline"]) / seconds, 1),
        "options": options, "sent": len(reqs), "answered": len(answered),
        "unanswered": len(reqs) - len(answered), "errors": len(errors),
        "error_messages": sorted({f"{r.get('code')}: {r.get('message', '')[:120]}" for r in errors})[:5],
        "outcomes": dict(sorted(outcomes.items())), "drain_s": round(drained_s, 2), "servers_alive": alive,
        "latency_ms": dist(ms(answered)), "inline_latency_ms": dist(ms(inline)),
        "suggestion_latency_ms": dist(ms([r for r in inline if r.get("outcome") == "suggestion"])),
        "refactors": len(refs), "refactor_ms": dist(ms(refs)),
        "refactor_max_ms": round(max(ms(refs), default=0.0), 1),
        "rss_start_mib": round(rss[0][1] / 2**20, 1), "rss_end_mib": round(rss[-1][1] / 2**20, 1),
        "rss_samples_mib": [(t, round(b / 2**20, 1)) for t, b in rss],
        "daemon": {"completions_served": served(st1).get("complete", 0) - served(st0).get("complete", 0),
                   "refactors_served": served(st1).get("generate", 0) - served(st0).get("generate", 0),
                   "superseded": st1.get("superseded", 0) - st0.get("superseded", 0),
                   "aborted": st1.get("aborted", 0) - st0.get("aborted", 0),
                   "aged_refactors": st1.get("aged_refactors", 0) - st0.get("aged_refactors", 0),
                   "errors_by_code": st1.get("errors_by_code", {}), "batch_size": st1.get("batch_size")},
    }
    log(f"  load: sent {res['sent']}, answered {res['answered']}, errors {res['errors']}, latency p50 "
        f"{res['latency_ms']['p50']:.0f} ms p95 {res['latency_ms']['p95']:.0f} ms; refactors {len(refs)} "
        f"(p50 {res['refactor_ms']['p50']:.0f} ms, max {res['refactor_max_ms']:.0f} ms, aged "
        f"{res['daemon']['aged_refactors']}); RSS {res['rss_start_mib']} -> {res['rss_end_mib']} MiB")
    return res


def run_load(model_dir: Path, *, editors: int = 4, rate: float = 20.0, seconds: float = 60.0,
             refactor_every: float = 5.0, options: dict | None = None, daemon_config: dict | None = None,
             pauses: float = 0.0, seed: int = 0, log=print) -> dict:
    from bench.latency import private_daemon
    opts = {"max_tokens": 16, "max_lines": 1, "refactor_max_tokens": 48, **(options or {})}
    with private_daemon(Path(model_dir), daemon_config) as env:
        return asyncio.run(run_load_async(env, editors=editors, rate=rate, seconds=seconds, pauses=pauses,
                                          refactor_every=refactor_every, options=opts, seed=seed, log=log))


def run_variants(model_dir: Path, *, log=print, **kw) -> dict:
    """The load as the issue states it (typing without a break), and with pauses at word ends (the
    requests of the pauses are the ones that finish: the latency of real suggestions)."""
    return {"steady": run_load(model_dir, log=log, **kw), "pauses": run_load(model_dir, log=log, pauses=0.3, **kw)}


def markdown(res: dict, command: str) -> str:
    lat, sug, ref = res["latency_ms"], res["suggestion_latency_ms"], res["refactor_ms"]
    d = res["daemon"]
    rows = [
        "| figure | value |", "|---|---|",
        f"| requests sent | {res['sent']} ({res['sent'] - res['refactors']} inline, {res['refactors']} refactors) |",
        f"| answered | {res['answered']} (unanswered {res['unanswered']}) |",
        f"| errors (other than RequestCancelled) | {res['errors']} |",
        f"| outcomes | {', '.join(f'{k} {v}' for k, v in res['outcomes'].items())} |",
        f"| latency, all answers | p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms |",
        f"| latency, answers with a suggestion | " + (f"p50 {sug['p50']:.0f} ms, p95 {sug['p95']:.0f} ms (n={sug['n']})"
                                                      if sug["n"] else "none finished") + " |",
        f"| refactor, send to answer | p50 {ref['p50']:.0f} ms, p95 {ref['p95']:.0f} ms, max {res['refactor_max_ms']:.0f} ms |",
        f"| refactors let ahead by ageing | {d['aged_refactors']} |",
        f"| daemon: completions run / superseded / aborted | {d['completions_served']} / {d['superseded']} / {d['aborted']} |",
        f"| daemon RSS start -> end | {res['rss_start_mib']} -> {res['rss_end_mib']} MiB |",
        f"| RSS samples (s: MiB) | {', '.join(f'{t:g}: {m}' for t, m in res['rss_samples_mib'])} |",
        f"| drain after typing stopped | {res['drain_s']} s |",
    ]
    pause = (f"; pauses of 0.6-1.2 s at {res['pauses']:.0%} of the word ends "
             f"({res['keystrokes_per_s']:g} keystrokes/s in all)" if res.get("pauses") else ", without a break")
    return (f"{res['editors']} editors x {res['rate_per_editor']:g} keystrokes/s (each a didChange and an "
            f"inline request){pause}, for {res['seconds']:g} s against one daemon, a refactor every "
            f"{res['refactor_every_s']:g} s. Command: `{command}`.\n\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded model)")
    p.add_argument("--editors", type=int, default=4)
    p.add_argument("--rate", type=float, default=20.0, help="keystrokes (requests) per second per editor")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--refactor-every", type=float, default=5.0)
    p.add_argument("--pauses", type=float, default=0.0,
                   help="chance of a 0.6-1.2 s pause at a word end (0 = type without a break)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here as JSON")
    args = p.parse_args(argv)
    model = args.model
    if model is None:
        from engine.embedded_model import default_model
        model = default_model()
        if model is None:
            print("python -m bench.load: no model (pass --model DIR)", file=sys.stderr)
            return 2
    res = run_load(model, editors=args.editors, rate=args.rate, seconds=args.seconds,
                   refactor_every=args.refactor_every, pauses=args.pauses)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(markdown(res, "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])))
    return 0 if res["unanswered"] == 0 and res["servers_alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
