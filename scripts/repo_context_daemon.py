"""A completion function for scripts/repo_context_eval.py answered by the daemon itself: the wired
repository context (daemon/repo_context.py) against the same daemon with `repo_context = false`.
The eval calls the completer twice per case, "off" first and "on" second: the first call of a case
goes to the daemon with `repo_context = false`, the second to the one with `true` (whether or not
the eval's own retrieval found snippets: the daemon retrieves its own).

Two private daemons (bench/latency.py's `private_daemon`: their own sockets and XDG dirs) serve the
model named by TRICODE_EVAL_MODEL (a checkpoint directory or a model the registry knows; default:
the embedded model), one with `repo_context = true`, one with `false`, both with the same budget
and greedy decoding. The eval's "off" call (no snippets) goes to the second, its "on" call to the
first; the snippets the eval computed itself are ignored: the daemon retrieves its own from its
index of the case's tree (which holds the case's file as the eval wrote it), and its own today's
context (imports, open documents), so the difference measured is exactly the daemon's feature.
Each reply's `repo_context` is kept in LAST for the row. The trees are found under
TRICODE_EVAL_WORK (the eval's --work; default /tmp/repo-eval/work).

    TRICODE_EVAL_MODEL=<the real model, once the daemon serves it> python scripts/repo_context_eval.py \\
        --data /tmp/repo-eval --completer scripts.repo_context_daemon:complete
"""
from __future__ import annotations

import atexit
import contextlib
import os
import time
from pathlib import Path

CONFIG = {"context_tokens": 1024, "deadline_ms": 120000, "inline_mode": "ar", "max_tokens": 64,
          "cpu_threads": int(os.environ.get("TRICODE_EVAL_THREADS", "1"))}
_s: dict = {}
LAST: dict = {}


def _daemons() -> dict:
    if not _s:
        from bench.latency import private_daemon
        from engine.embedded_model import default_model
        model = os.environ.get("TRICODE_EVAL_MODEL") or str(default_model())
        stack = contextlib.ExitStack()
        atexit.register(stack.close)
        # a pretrained model's inline format takes snippets only with repo_context_pretrained (off by default)
        _s["on"] = stack.enter_context(private_daemon(Path(model), {**CONFIG, "repo_context": True,
                                                                    "repo_context_pretrained": True}))
        _s["off"] = stack.enter_context(private_daemon(Path(model), {**CONFIG, "repo_context": False}))
    return _s


def _indexed(env: dict, path: Path, text: str, root: Path, timeout: float = 600.0) -> None:
    """Open the case's file in the "on" daemon and wait until the index of its root is built (the
    daemon keeps MAX_INDEXED_ROOTS = 3 indexes and the eval has 4 trees: a root seen before may have
    been closed since, and is indexed again)."""
    from protocol import DocumentUpdate, Status
    from protocol.client import call
    sock = env["TRICODE_SOCKET"]
    call(DocumentUpdate(uri=path.as_uri(), path=str(path), language="python", text=text), socket_path=sock)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        idx = call(Status(), socket_path=sock, timeout=10.0)[0]["workspace"]["repo_index"]
        mine = [i for i in idx if i["root"] == str(root.resolve())]
        if mine and not mine[0]["building"] and mine[0]["files"] > 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the repository index of {path} was not built in {timeout:.0f} s")


def _root(case) -> Path:
    """The eval's working copy of the case's tree (repo_context_eval.py's --work, default DATA/work)."""
    work = Path(os.environ.get("TRICODE_EVAL_WORK", "/tmp/repo-eval/work"))
    for d in sorted(work.iterdir()):
        if d.name.lower().startswith(case.package.lower()) and (d / case.path).is_file():
            return d
    raise RuntimeError(f"{case.id}: no tree of {case.package} under {work} (set TRICODE_EVAL_WORK to --work)")


def complete(case, prefix: str, suffix: str, context, today=()) -> str:
    from protocol import Complete
    from protocol.client import call
    s = _daemons()
    calls = s.setdefault("calls", {})
    mode = "on" if calls.get(case.id) == "off" else "off"
    calls[case.id] = mode
    env = s[mode]
    root = _root(case)
    path = (root / case.path).resolve()
    if mode == "on":
        _indexed(env, path, prefix + suffix, root)
    elif os.environ.get("TRICODE_EVAL_REUSE_OFF"):      # the "off" replies of an earlier run's log
        if "reuse" not in s:
            import json
            s["reuse"] = {r["id"]: r["text"] for r in map(json.loads, open(os.environ["TRICODE_EVAL_REUSE_OFF"]))
                          if r["mode"] == "off"}
        if case.id in s["reuse"]:
            return s["reuse"][case.id]
    r = call(Complete(doc=path.as_uri(), path=str(path), prefix=prefix, suffix=suffix, max_tokens=64, max_lines=1,
                      language="python", deadline_ms=120000), socket_path=env["TRICODE_SOCKET"], timeout=300.0)[0]
    if r.get("type") != "result":
        raise RuntimeError(f"{case.id}: {r.get('code')}: {r.get('message')}")
    LAST[(case.id, mode)] = r.get("repo_context") or []
    log = os.environ.get("TRICODE_EVAL_LOG")
    if log:                 # each reply as it comes: the snippets the daemon put in, its prompt size
        import json
        with open(log, "a") as f:
            f.write(json.dumps({"id": case.id, "mode": mode, "text": r["text"], "target": case.target,
                                "repo_context": LAST[(case.id, mode)],
                                **{k: r.get(k) for k in ("prompt_tokens", "total_ms", "prefill_ms")}}) + "\n")
    return r["text"]
