"""The latency of the follow-up next-edit request after an accept, with the language server's prefetch
(lsp/next_edit.py) on and off, side by side: the real daemon (the embedded model unless --model) and the
real `tricode lsp`, driven like an editor (tests/test_lsp.py's client).

A round: a fresh document with N methods calling `super(A, self)`; the user removes `A, self` on the first
one (one didChange), asks at the second (answered with that edit), looks at it for --think seconds,
accepts it (one didChange applying it) and the editor asks again at once at the end of the applied text.
The figure is that follow-up request's wall time at the client. Rounds alternate prefetch on / off (a
server of each, one daemon).

    PYTHONPATH=$PWD python -m bench.next_edit_prefetch --rounds 10 --think 0 1
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_lsp import daemon_status, edit, editor, open_doc, private_env, status, wait_ready  # noqa: E402

SRC = "class A(Base):\n" + "".join(f"    def m{i}(self, x):\n        return super(A, self).m{i}(x)\n\n"
                                   for i in range(6)) + "".join(f"y{i} = {i}\n" for i in range(10))


async def _ask(c, uri, version, line, char) -> tuple[list, float]:
    t0 = time.perf_counter()
    res = await asyncio.wait_for(c.protocol.send_request_async("textDocument/copilotInlineEdit", {
        "textDocument": {"uri": uri, "version": version}, "position": {"line": line, "character": char}}), 120)
    return list(res.edits if hasattr(res, "edits") else res["edits"]), (time.perf_counter() - t0) * 1e3


async def one_round(c, uri: str, think_s: float) -> dict:
    open_doc(c, uri, SRC)
    lines = SRC.splitlines()
    col = lines[2].index("A, self")
    edit(c, uri, 2, 2, col, 2, col + 7, "")
    first, first_ms = await _ask(c, uri, 2, 5, 8)
    a = lines[5].index("A, self")
    await asyncio.sleep(think_s)
    edit(c, uri, 3, 5, a, 5, a + 7, "")                       # the accept
    second, ms = await _ask(c, uri, 3, 5, a)                  # the editor asks again at once
    last = (await status(c))["lsp"]["next_edit"]["last"]
    return {"first_ms": first_ms, "follow_ms": ms, "first_edits": len(first), "follow_edits": len(second),
            "prefetched": last.get("prefetched"), "daemon_ms": last.get("total_ms")}


async def run(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ne_prefetch"))
    env, short = private_env(root, Path(args.model))
    proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(args.model)],
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    out: dict = {"model": str(args.model), "rounds": args.rounds, "think_s": args.think, "results": {}}
    try:
        for _ in range(900):
            st = daemon_status(env)
            if st and st.get("state") == "ready":
                break
            time.sleep(0.2)
        async with editor(env, options={"next_edit_prefetch": True, "deadline_ms": 60000, "debounce_ms": 30}) as on, \
                editor(env, options={"next_edit_prefetch": False, "deadline_ms": 60000, "debounce_ms": 30}) as off:
            await wait_ready(on)
            await wait_ready(off)
            await one_round(on, "file:///bench/warm.py", 0.0)        # warm-up, not counted
            for think in args.think:
                rows = {"on": [], "off": []}
                for r in range(args.rounds):
                    for name, c in (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on)):
                        rows[name].append(await one_round(c, f"file:///bench/{name}_{think}_{r}.py", think))
                res = {}
                for name, rs in rows.items():
                    f = sorted(x["follow_ms"] for x in rs)
                    res[name] = {"follow_p50_ms": round(statistics.median(f), 1),
                                 "follow_p95_ms": round(f[min(len(f) - 1, int(0.95 * len(f)))], 1),
                                 "first_p50_ms": round(statistics.median(x["first_ms"] for x in rs), 1),
                                 "prefetched": sum(bool(x["prefetched"]) for x in rs),
                                 "follow_edits": sum(x["follow_edits"] for x in rs), "n": len(rs)}
                out["results"][str(think)] = res
                print(json.dumps({"think_s": think, **res}), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(short, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv=None) -> int:
    from engine.embedded_model import default_model
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(default_model()), help="checkpoint or GGUF (default: the embedded one)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--think", type=float, nargs="+", default=[0.0, 1.0], help="seconds between answer and accept")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
