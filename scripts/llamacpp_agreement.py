"""Greedy agreement between tricode's engine and llama.cpp on the same GGUF file.

N prompts are cut from the held-out code files (engine/embedded/heldout_files.txt: a random line start
in each file, the `--chars` characters before it, prefix only); both engines get the same token ids
(llama.cpp's tokenizer) and greedy-decode `--tokens` tokens: tricode in `ar` mode, with `--runner
torch` the GGUF dequantized into tricode's own float32 model (no bf16 prefill twin), with `--runner
llama` on tricode's llama.cpp runner (engine/llama_runner.py, what the daemon runs a GGUF with on a
CPU: the same kernels, tricode's batching, KV cache and decoder); llama-cpp-python with temperature
0 / top_k 1. Reports how many prompts agree on
every token, the mean agreeing prefix, and for each disagreement tricode's top-2 logit margin where
the two first differ (torch runner only; a small margin means a near-tie that rounding decides: llama.cpp multiplies
quantized weights by 8-bit-quantized activations, tricode dequantized weights by float32 ones).
Also: tricode's load time, RSS after loading, and AR decode ms per token at `--threads`.

    nice python scripts/llamacpp_agreement.py --model /tmp/models/qwen2.5-coder-0.5b.gguf --prompts 50
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def heldout_prompts(n: int, chars: int, seed: int) -> list[tuple[str, str]]:
    """(file key, prefix text) for n held-out files that resolve on this machine."""
    from training.corpus import resolve_key
    keys = (REPO / "engine/embedded/heldout_files.txt").read_text().split()
    rng = random.Random(seed)
    rng.shuffle(keys)
    out = []
    for key in keys:
        path = resolve_key(key)
        if path is None:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        starts = [i + 1 for i, c in enumerate(text) if c == "\n" and 300 <= i + 1 <= len(text) - 50]
        if not starts:
            continue
        cut = rng.choice(starts)
        out.append((key, text[max(0, cut - chars):cut]))
        if len(out) == n:
            break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b", help="GGUF file or model name (tricode model list)")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--chars", type=int, default=1200, help="characters of prefix before the cut")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runner", choices=("torch", "llama"), default="torch",
                    help="tricode's side: the dequantized float32 model (torch) or the llama.cpp runner")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the per-prompt results here")
    args = ap.parse_args(argv)
    from registry.models import resolve
    args.model = str(resolve(args.model))

    import torch
    from bench.llamacpp import plain_llama
    from engine.checkpoint import load_checkpoint
    from engine.generate import DecodeParams, generate

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.runner == "llama":
        from training.evaluate import load_for_eval
        ck, _ = load_for_eval(Path(args.model), "cpu", "llama")
    else:
        ck = load_checkpoint(args.model, device="cpu", dtype="float32")
    load_s = time.perf_counter() - t0
    rss = rss_mib()
    llm = plain_llama(args.model, n_ctx=2048, logits_all=False, verbose=False,
                      n_threads=args.threads, n_threads_batch=args.threads)
    eos = {llm.token_eos(), ck.config.eos_token_id}
    prompts = heldout_prompts(args.prompts, args.chars, args.seed)
    rows, ms_per_token = [], []
    for key, text in prompts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        res = generate(ck.model, ids, DecodeParams(mode="ar", max_new_tokens=args.tokens))
        ours = res.tokens
        if len(ours) > 1:
            ms_per_token.append((res.elapsed_ms - res.prefill_ms) / (len(ours) - 1))
        theirs = []
        for tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if tok in eos or len(theirs) == args.tokens:
                break
            theirs.append(tok)
        prefix = 0
        while prefix < min(len(ours), len(theirs)) and ours[prefix] == theirs[prefix]:
            prefix += 1
        margin = None
        if ours != theirs and args.runner == "torch":
            with torch.inference_mode():
                x = torch.tensor([ids + ours[:prefix]])
                logits = ck.model(x, ck.model.new_cache(x.shape[1] + 1), last_only=True)[0, -1]
            top = torch.topk(logits.float(), 2).values
            margin = float(top[0] - top[1])
        rows.append({"file": key, "prompt_tokens": len(ids), "agree_prefix": prefix, "all_agree": ours == theirs,
                     "tricode": ours, "llama_cpp": theirs, "margin_at_divergence": margin})
        print(f"{key}: {len(ids)} prompt tokens, agree {prefix}/{max(len(ours), len(theirs))}"
              + (f", tricode top-2 margin there {margin:.3f}" if margin is not None else ""), flush=True)
    agree = sum(r["all_agree"] for r in rows)
    summary = {
        "model": args.model, "runner": args.runner, "prompts": len(rows), "tokens": args.tokens,
        "threads": args.threads,
        "all_tokens_agree": agree, "mean_agreeing_prefix": statistics.mean(r["agree_prefix"] for r in rows),
        "divergence_margins": sorted(r["margin_at_divergence"] for r in rows if r["margin_at_divergence"] is not None),
        "tricode_load_s": round(load_s, 2), "tricode_rss_after_load_mib": round(rss),
        "tricode_ar_decode_ms_per_token_median": round(statistics.median(ms_per_token), 1) if ms_per_token else None,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
