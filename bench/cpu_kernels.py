"""The CPU kernel candidates for a real model, measured on the machine at hand (issue 22, part 1).

    python -m bench.cpu_kernels --gguf /tmp/models/qwen2.5-coder-0.5b.gguf --threads 1,2 --out /tmp/k.json

For the GGUF's model shape (read from the file), at each thread count:
  bandwidth       memory bandwidth: a 1 GiB torch copy (bytes read + written / s) and a read-only sum
                  of a 1 GiB tensor; the floor of a forward is its weight bytes / that bandwidth
  llama.cpp       the GGUF's own kernels at its quantized width through llama-cpp-python's low-level
                  API: after a ~`--context`-token prefix, one llama_decode of k tokens with logits for
                  every position, then the k tokens removed from the KV cache (llama_memory_seq_rm) so
                  that every repeat sees the same prefix; and prefill tokens/s on prompts of 360-1000
                  tokens (one decode per 512-token batch, as llama.cpp's own eval does)
  torch fp32/bf16 the matmuls only: F.linear over the 24 layers' weight shapes (qkv, o, gate+up, down)
                  and the head, for k rows; attention, norms and RoPE are left out, so these are
                  lower bounds of a torch forward
  torch int8      the same with torch._weight_int8pack_mm (weight-only int8, per-channel scales)

Every timing is the median of `--repeat` runs after a warm-up; the load average before and after is
recorded with it. Knows nothing of tricode's model or decoders: it measures kernels on shapes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import cpu_model, loadavg

# Source text for the token streams (code of this repository: any real code serves for kernel timing)
_SOURCES = ("engine/generate.py", "engine/model.py", "engine/runner.py", "daemon/scheduler.py")


def _median_ms(fn, repeat: int, warm: int = 1) -> float:
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


# ----------------------------------------------------------------------------- GGUF shape


def gguf_shape(path: Path) -> dict:
    """The model shape and the bytes of weights one forward reads (every tensor but the embedding,
    of which a forward reads only its rows), from the GGUF's header (the `gguf` package, memory-mapped)."""
    from collections import Counter

    from gguf import GGUFReader
    rd = GGUFReader(str(path))

    def meta(key):
        f = rd.fields[key]
        v = f.parts[f.data[0]]
        return bytes(v).decode() if f.types[0].name == "STRING" else v.tolist()[0]

    arch = meta("general.architecture")
    g = lambda k: meta(f"{arch}.{k}")  # noqa: E731
    tensors = {t.name: t for t in rd.tensors}
    read = sum(int(t.n_bytes) for n, t in tensors.items() if n != "token_embd.weight")
    if "output.weight" not in tensors:          # a tied head reads the whole embedding
        read += int(tensors["token_embd.weight"].n_bytes)
    n_heads, hidden = g("attention.head_count"), g("embedding_length")
    return {"arch": arch, "layers": g("block_count"), "hidden": hidden, "intermediate": g("feed_forward_length"),
            "heads": n_heads, "kv_heads": g("attention.head_count_kv"), "head_dim": hidden // n_heads,
            "vocab": int(tensors["token_embd.weight"].shape[-1]), "file_bytes": path.stat().st_size,
            "weight_bytes_read_per_forward": read,
            "quant_types": dict(Counter(t.tensor_type.name for t in tensors.values()))}


# ----------------------------------------------------------------------------- bandwidth


def bandwidth(repeat: int) -> dict:
    import torch
    n = 1 << 30
    a = torch.ones(n // 4, dtype=torch.float32)
    b = torch.empty_like(a)
    copy_ms = _median_ms(lambda: b.copy_(a), repeat)
    sum_ms = _median_ms(lambda: a.sum(), repeat)
    return {"copy_gbps": round(2 * n / copy_ms / 1e6, 2), "read_gbps": round(n / sum_ms / 1e6, 2)}


# ----------------------------------------------------------------------------- torch matmuls


def torch_linears(shape: dict, ks, repeat: int, kinds=("fp32", "bf16", "int8")) -> dict:
    """ms of the matmuls of one forward of k tokens, per kind, and the bytes of weights each reads.
    Per layer: x += o(qkv(x)[:, :h]); x += down(first half of gate_up(x)); then the head."""
    import torch
    import torch.nn.functional as F
    h, i, d = shape["hidden"], shape["intermediate"], shape["head_dim"]
    qkv = (shape["heads"] + 2 * shape["kv_heads"]) * d
    layer_shapes = [(qkv, h), (shape["heads"] * d, h), (2 * i, h), (h, i)]
    out = {}
    g = torch.Generator().manual_seed(0)
    for kind in kinds:
        dt = torch.bfloat16 if kind == "bf16" else torch.float32
        ws = [[torch.randn(o, n, generator=g).mul_(0.02) for o, n in layer_shapes] for _ in range(shape["layers"])]
        head = torch.randn(shape["vocab"], h, generator=g).mul_(0.02)
        if kind == "int8":
            def q8(w):
                s = w.abs().amax(1) / 127
                return (w / s[:, None]).round().to(torch.int8), s

            ws = [[q8(w) for w in layer] for layer in ws]
            head = q8(head)
            nbytes = sum(w.numel() + s.numel() * 4 for layer in ws for w, s in layer) + head[0].numel()

            def lin(x, w):
                return torch._weight_int8pack_mm(x, *w)
        elif kind in ("fp32", "bf16"):
            ws = [[w.to(dt) for w in layer] for layer in ws]
            head = head.to(dt)
            nbytes = sum(w.numel() * w.element_size() for layer in ws for w in layer) + head.numel() * head.element_size()
            lin = F.linear
        else:
            raise ValueError(f"torch kind {kind!r}: choose fp32, bf16 or int8")

        def fwd(x, ws=ws, head=head, lin=lin):
            for wqkv, wo, wgu, wd in ws:
                x = x + lin(lin(x, wqkv)[:, :h].contiguous(), wo)
                x = x + lin(lin(x, wgu)[:, :i].contiguous(), wd)
            return lin(x, head)

        rows = {}
        with torch.inference_mode():
            for k in ks:
                x = torch.randn(k, h, generator=g).to(dt)
                rows[k] = round(_median_ms(lambda: fwd(x), repeat, warm=2), 3)
        out[kind] = {"ms": rows, "weight_bytes": nbytes}
        del ws, head
    return out


# ----------------------------------------------------------------------------- llama.cpp


def code_tokens(model_path: Path, n: int) -> list[int]:
    """n tokens of real code (this repository's sources, repeated if short), tokenized by the GGUF's
    own vocabulary."""
    from bench.llamacpp import Vocab
    repo = Path(__file__).resolve().parent.parent
    text = "\n".join((repo / s).read_text() for s in _SOURCES if (repo / s).exists())
    ids = Vocab(model_path).encode(text)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def llamacpp_costs(model_path: Path, threads: int, ks, context: int, prefills, repeat: int) -> dict:
    """ms of one llama_decode of k tokens (logits at every position) after `context` tokens, the KV of
    the k tokens dropped after each (engine/llama_runner.py's LlamaModel.measure_step_costs, the
    widths interleaved); prefill tokens/s for each prompt length."""
    import llama_cpp as L
    from engine.llama_runner import LlamaModel
    ids = code_tokens(model_path, max(context + max(ks), max(prefills)) + 1)
    lm = LlamaModel.load(model_path, threads=threads, n_ctx=max(prefills) + max(ks) + 64, n_seq=2)
    costs = lm.measure_step_costs(ids[:context], ks=tuple(ks), repeat=repeat)
    pre = {}
    for n in prefills:
        ts = []
        for _ in range(max(3, repeat // 2)):
            cache = lm.new_cache(n + 1)
            t0 = time.perf_counter()
            lm.decode([(cache, ids[:n], False)])
            ts.append((time.perf_counter() - t0) * 1e3)
            del cache
        ms = statistics.median(ts)
        pre[n] = {"ms": round(ms, 1), "tokens_per_s": round(n / ms * 1e3, 1)}
    info = L.llama_print_system_info().decode()
    lm.close()
    return {"ms": costs["ms"], "prefill": pre, "system_info": info}


# ----------------------------------------------------------------------------- main


def ratios(ms: dict) -> dict:
    base = ms[min(ms)]
    return {k: round(v / base, 2) for k, v in ms.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--ks", default="1,2,4,8,16")
    p.add_argument("--context", type=int, default=500)
    p.add_argument("--prefills", default="360,600,1000")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--candidates", default="bandwidth,llama.cpp,torch")
    p.add_argument("--torch-kinds", default="fp32,bf16,int8", dest="torch_kinds")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    import torch
    ks = [int(x) for x in a.ks.split(",")]
    cands = a.candidates.split(",")
    shape = gguf_shape(a.gguf)
    r = {"cpu": cpu_model(), "flags": _cpu_flags(), "gguf": str(a.gguf), "shape": shape, "context": a.context,
         "repeat": a.repeat, "load_before": loadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "torch": torch.__version__, "by_threads": {}}
    print(f"{r['cpu']} ({r['flags']}); {a.gguf.name}: {shape['weight_bytes_read_per_forward'] / 1e6:.0f} MB of "
          f"weights read per forward; load {r['load_before']}", flush=True)
    for th in [int(x) for x in a.threads.split(",")]:
        torch.set_num_threads(th)
        row: dict = {}
        if "bandwidth" in cands:
            row["bandwidth"] = bandwidth(a.repeat)
            print(f"[{th} thr] bandwidth {row['bandwidth']}", flush=True)
        if "llama.cpp" in cands:
            row["llama.cpp"] = llamacpp_costs(a.gguf, th, ks, a.context,
                                              [int(x) for x in a.prefills.split(",")], a.repeat)
            row["llama.cpp"]["weight_bytes"] = shape["weight_bytes_read_per_forward"]
            print(f"[{th} thr] llama.cpp k->ms {row['llama.cpp']['ms']} ratios {ratios(row['llama.cpp']['ms'])} "
                  f"prefill {row['llama.cpp']['prefill']}", flush=True)
        if "torch" in cands:
            for kind, v in torch_linears(shape, ks, a.repeat, a.torch_kinds.split(",")).items():
                row[f"torch {kind}"] = v
                print(f"[{th} thr] torch {kind} k->ms {v['ms']} ratios {ratios(v['ms'])}", flush=True)
        if "bandwidth" in row:
            bw = row["bandwidth"]["read_gbps"]
            for name, v in row.items():
                if isinstance(v, dict) and "weight_bytes" in v:
                    v["weight_read_ms"] = round(v["weight_bytes"] / bw / 1e6, 2)
                    v["ratios"] = ratios(v["ms"])
                    v["x_weight_read"] = {k: round(ms / v["weight_read_ms"], 2) for k, ms in v["ms"].items()}
        r["by_threads"][th] = row
    r["load_after"] = loadavg()
    text = json.dumps(r, indent=1)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


def _cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "?"
    have = set(flags.split(":", 1)[1].split())
    return " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in have)


if __name__ == "__main__":
    sys.exit(main())
