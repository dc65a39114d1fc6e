"""CPU speed and size of the embedded model per weight width (fp32, int8, int4), in one run.

    PYTHONPATH=. python scripts/quant_cpu_bench.py [--tasks 8] [--rounds 5] [--threads 1] [--json OUT]

Quantizes the embedded model to int8 and int4 (round-to-nearest, into a temporary directory) unless
--int8/--int4 name existing quantized checkpoints, then per width: size on disk (weights files),
size in memory (parameters + buffers after the layers are prepared), and, over held-out single-line
FIM prompts (training/evaluate.py's tasks and prompt layout, ~1k tokens), the median time of
  - a 1-token AR step (causal, writes its K/V) after the prompt's prefill,
  - a 4-token verify (causal over 4 tokens),
  - the prompt's prefill,
  - the whole single-line completion (`generate`, spec and ar, stopping at the newline).
Widths are interleaved round by round so that a shared machine's load falls on all of them alike;
the ratios to fp32 are the figures to read.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from textkit.tokenizer import Tokenizer  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.embedded_model import default_model  # noqa: E402
from engine.generate import DecodeParams, generate  # noqa: E402
from engine.quant import QuantSpec, memory_bytes  # noqa: E402
from engine.quantize import quantize_checkpoint  # noqa: E402
from training.evaluate import fim_prompt, make_fim_tasks, newline_stop, read_heldout_files  # noqa: E402


def weights_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def time_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--int8", type=Path, help="an int8 checkpoint of --model (default: quantize now)")
    ap.add_argument("--int4", type=Path, help="an int4 checkpoint of --model (default: quantize now, groups of 128)")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5, help="timed repetitions of the step forwards per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="tricode-quant-bench-"))
    dirs = {"fp32": args.model}
    for name, bits, group, given in (("int8", 8, None, args.int8), ("int4", 4, 128, args.int4)):
        if given is None:
            given = tmp / name
            quantize_checkpoint(args.model, given, QuantSpec(bits, group))
        dirs[name] = given
    models = {name: load_checkpoint(d, device="cpu").model for name, d in dirs.items()}
    tok = Tokenizer(args.model)
    files, _ = read_heldout_files(args.model, None)
    tasks = make_fim_tasks(files, args.tasks, seed=1)
    prompts = [fim_prompt(tok, t.prefix, t.suffix) for t in tasks]
    stop = newline_stop(tok.decode)

    times: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    same_tokens = {n: 0 for n in models}
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            for name, m in models.items():
                t = times[name]
                cache = m.new_cache(len(ids) + 64)
                x = torch.tensor([ids])
                t.setdefault("prefill_ms", []).append(time_ms(lambda: m(x, cache, last_only=True)))
                n0 = cache.length
                one, four = torch.tensor([[ids[-1]]]), torch.tensor([ids[-4:]])
                for _ in range(args.rounds):
                    t.setdefault("ar_step_ms", []).append(time_ms(lambda: m(one, cache)))
                    cache.crop(n0)
                    t.setdefault("verify4_ms", []).append(time_ms(lambda: m(four, cache)))
                    cache.crop(n0)
                sp = generate(m, ids, DecodeParams(mode="spec", max_new_tokens=48), stop=stop)
                ar = generate(m, ids, DecodeParams(mode="ar", max_new_tokens=48), stop=stop)
                same_tokens[name] += sp.tokens == ar.tokens
                t.setdefault("line_spec_ms", []).append(sp.elapsed_ms)
                t.setdefault("line_ar_ms", []).append(ar.elapsed_ms)
            print(f"task {i + 1}/{len(prompts)} ({len(ids)} prompt tokens)", file=sys.stderr, flush=True)

    report = {"threads": args.threads, "tasks": len(prompts), "rounds": args.rounds,
              "prompt_tokens_median": statistics.median(len(p) for p in prompts), "widths": {}}
    for name, m in models.items():
        med = {k: statistics.median(v) for k, v in times[name].items()}
        report["widths"][name] = {
            "checkpoint": str(dirs[name]), "disk_MiB": weights_bytes(dirs[name]) / 2**20,
            "memory_MiB": memory_bytes(m) / 2**20, **med,
            "vs_fp32": {k: med[k] / statistics.median(times["fp32"][k]) for k in med},
            "spec_equals_ar": f"{same_tokens[name]}/{len(prompts)}",
            "backend": getattr(m.layers[0].qkv, "backend", "float"),
        }
    print(f"{'width':6} {'backend':10} {'disk MiB':>8} {'mem MiB':>8} {'AR step':>8} {'verify4':>8} "
          f"{'prefill':>8} {'line spec':>9} {'line ar':>8}   (ms, medians; x fp32)")
    for name, r in report["widths"].items():
        v = r["vs_fp32"]
        print(f"{name:6} {r['backend']:10} {r['disk_MiB']:8.1f} {r['memory_MiB']:8.1f} "
              f"{r['ar_step_ms']:5.2f}/{v['ar_step_ms']:.2f}x {r['verify4_ms']:5.2f}/{v['verify4_ms']:.2f}x "
              f"{r['prefill_ms']:6.1f}/{v['prefill_ms']:.2f}x {r['line_spec_ms']:6.1f}/{v['line_spec_ms']:.2f}x "
              f"{r['line_ar_ms']:6.1f}/{v['line_ar_ms']:.2f}x  spec==ar {r['spec_equals_ar']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
