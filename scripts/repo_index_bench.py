"""Build time, memory and update/query latency of the workspace index (daemon/repo_index.py).

For each size N a tree of N real Python files is made in a temporary directory (a seeded sample of
the running interpreter's standard library and site-packages, copied with their relative paths), and
a fresh child process indexes it, so that its peak RSS is the index's alone:

  * foreground build (one thread, full speed) or the paced background build (`--background`:
    RepoIndex.start(), 40 ms of work then 10 ms of sleep)
  * wall and CPU seconds of the build (CPU seconds are what it costs where nothing else runs; the
    paced build's wall time there is about CPU / 0.8)
  * peak RSS growth over the process before the build (resource.getrusage), and the index's own
    estimate (RepoIndex.memory_bytes)
  * single-file update latency: a file rewritten and RepoIndex.update() timed (median, p95 of 50)
  * retrieval latency: Retriever.retrieve() at 50 seeded cursors (median, p95), budget 2048 chars

    python scripts/repo_index_bench.py --sizes 1000,10000 [--background] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import site
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def source_files(roots: list[Path]) -> list[tuple[Path, Path]]:
    """(root, file) for every .py file under the roots, sorted (no __pycache__)."""
    out = []
    seen = set()
    for root in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                if f.endswith(".py"):
                    p = Path(d) / f
                    rp = p.resolve()
                    if rp not in seen:
                        seen.add(rp)
                        out.append((root, p))
    return out


def make_tree(n: int, dest: Path, seed: int = 0, roots: list[Path] | None = None) -> int:
    roots = roots or [Path(sysconfig.get_paths()["stdlib"])] + [Path(p) for p in site.getsitepackages()]
    files = source_files([r for r in roots if r.is_dir()])
    if len(files) < n:
        raise SystemExit(f"only {len(files)} .py files under {roots}; ask for fewer")
    rnd = random.Random(seed)
    pick = rnd.sample(files, n)
    total = 0
    for i, (root, p) in enumerate(pick):
        rel = p.relative_to(root) if p.is_relative_to(root) else Path(p.name)
        out = dest / f"r{roots.index(root) if root in roots else 0}" / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(p, out)
            total += out.stat().st_size
        except OSError:
            pass
    (dest / ".git").mkdir(exist_ok=True)
    return total


def measure(tree: Path, background: bool, seed: int = 0) -> dict:
    """Runs in the child process."""
    from daemon.repo_index import RepoIndex
    from daemon.retrieval import Retriever
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    idx = RepoIndex(tree)
    t0 = time.perf_counter()
    c0 = time.process_time()
    if background:
        idx.start()
        idx.wait()
    else:
        idx.build()
    build_s = time.perf_counter() - t0
    build_cpu_s = time.process_time() - c0     # CPU seconds: what the build costs on an idle core
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    st = idx.stats()
    rnd = random.Random(seed)
    files = idx.files()
    upd = []
    for p in rnd.sample(files, min(50, len(files))):
        text = Path(p).read_text(encoding="utf-8")
        Path(p).write_text(text + "\n# edited\n", encoding="utf-8")
        t = time.perf_counter()
        idx.update(p)
        upd.append((time.perf_counter() - t) * 1000)
    r = Retriever(idx)
    ret = []
    nsn = []
    for p in rnd.sample(files, min(50, len(files))):
        text = Path(p).read_text(encoding="utf-8")
        n_lines = text.count("\n")
        line = rnd.randrange(1, max(2, n_lines))
        t = time.perf_counter()
        sn = r.retrieve(p, text, line, 2048)
        ret.append((time.perf_counter() - t) * 1000)
        nsn.append(len(sn))

    def q(xs, f):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(f * len(xs)))], 2)

    return {"files": st.files, "chunks": st.chunks, "definitions": st.definitions, "identifiers": st.identifiers,
            "postings": st.postings, "skipped": st.skipped, "build_s": round(build_s, 2), "build_cpu_s": round(build_cpu_s, 2),
            "background": background, "index_bytes": st.memory_bytes, "rss_growth_bytes": rss1 - rss0,
            "update_ms_p50": round(statistics.median(upd), 2), "update_ms_p95": q(upd, 0.95),
            "retrieve_ms_p50": round(statistics.median(ret), 2), "retrieve_ms_p95": q(ret, 0.95),
            "snippets_mean": round(statistics.mean(nsn), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--background", action="store_true", help="the paced background build instead of full speed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    ap.add_argument("--roots", default="", help="comma-separated folders to sample .py files from (default: this "
                                                 "interpreter's stdlib and site-packages; the sample depends on them)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure(Path(a.child), a.background, a.seed)))
        return 0
    results = []
    for n in [int(x) for x in a.sizes.split(",") if x]:
        with tempfile.TemporaryDirectory(prefix=f"repo-bench-{n}-") as d:
            tree = Path(d) / "tree"
            source_bytes = make_tree(n, tree, a.seed, [Path(r) for r in a.roots.split(",") if r] or None)
            cmd = [sys.executable, __file__, "--child", str(tree), "--seed", str(a.seed)]
            if a.background:
                cmd.append("--background")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res.update(size=n, source_mb=round(source_bytes / 1e6, 1), python=sys.executable)
            results.append(res)
            print(f"{n} files ({res['source_mb']} MB): build {res['build_s']} s, {res['build_cpu_s']} CPU s "
                  f"({'background' if a.background else 'foreground'}), index {res['index_bytes'] / 1e6:.1f} MB, "
                  f"peak RSS +{res['rss_growth_bytes'] / 1e6:.1f} MB, {res['files']} files / {res['chunks']} chunks / "
                  f"{res['definitions']} definitions; update p50 {res['update_ms_p50']} ms p95 {res['update_ms_p95']} ms; "
                  f"retrieve p50 {res['retrieve_ms_p50']} ms p95 {res['retrieve_ms_p95']} ms", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
