"""Keystroke-to-suggestion latency through the remote backend next to the local one.

The same LSP replay as section 2 (bench/latency.py: held-out lines typed at 10-20 characters per
second, a request per keystroke, cancels as an editor sends them) against three private daemons on
the embedded model: local `spec`, local `ar`, and `backend = "openai"` with the model served by
llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (the embedded model exported to GGUF f32,
one thread, like the local daemon's one torch thread). The remote daemon loads no weights; its
model calls are HTTP streams to the server.

    python -m bench.remote [--sites 6] [--out build/remote_latency.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    from bench import latency
    from bench.gguf_export import LlamaServer, export
    from engine.embedded_model import default_model
    from training import evaluate as ev

    ap = argparse.ArgumentParser(prog="python -m bench.remote", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sites", type=int, default=6, help="held-out lines typed per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    model_dir = default_model()
    if model_dir is None:
        print("the embedded model is not installed", file=sys.stderr)
        return 2
    files, _ = ev.read_heldout_files(model_dir, None, print)
    tmp = tempfile.TemporaryDirectory(prefix="tricode-bench-remote-")
    gguf = export(model_dir, Path(tmp.name) / "embedded.gguf", "f32")
    server = LlamaServer(gguf, Path(tmp.name) / "server.log", alias="tricode-embedded", threads=1)
    try:
        remote = {"backend": "openai", "remote_url": server.url, "remote_model": "tricode-embedded"}
        res = latency.run_latency(model_dir, files, sites=args.sites, seed=args.seed, variants=(
            ("local spec", "spec", {}), ("local ar", "ar", {}), ("remote (llama_cpp.server)", "spec", remote)))
    finally:
        server.stop()
        tmp.cleanup()
    print("| variant | requests | cache-miss p50 ms | p95 ms | n | daemon total p50 ms | open p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for label, s in res.get("variants", {}).items():
        m, o = s["latency_cache_miss"], s["latency_open"]
        print(f"| {label} | {s['requests']} | {m['p50']:.0f} | {m['p95']:.0f} | {m['n']} | "
              f"{s['split_cache_miss'].get('total_ms', 0):.0f} | {o['p50']:.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
