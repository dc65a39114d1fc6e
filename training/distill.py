"""Self-distillation rows for the drafter: training text followed by the model's own greedy continuation.

A draft token is kept when it equals the model's greedy choice, not when it equals the text, so the
drafter learns most from rows whose later part is what the model itself writes. Each row here is `ctx`
tokens cut from a packed training row, then `gen` tokens of the model's greedy AR continuation (fp32,
the arithmetic the CPU decoders verify with). The rows are written as train_<ctx+gen>.npy (and a small
heldout_<ctx+gen>.npy from the held-out rows) with the tokenizer, ready for

    python -m training.distill --out data/distill
    tricode train --drafter-rank 64 --init engine/embedded --data-dir data/distill --seq-len 256 --block 4

Generation runs batched over one KV cache (every row has the same length), so it costs about one
forward of `batch` tokens per generated position.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


@torch.inference_mode()
def continue_rows(model, contexts: np.ndarray, gen: int) -> np.ndarray:
    """contexts [B, ctx] -> [B, ctx + gen]: each row followed by its greedy continuation."""
    x = torch.from_numpy(contexts.astype(np.int64)).to(model.head.weight.device)
    B, ctx = x.shape
    cache = model.new_cache(ctx + gen, batch=B)
    mask_id = model.cfg.mask_token_id
    logits = model(x, cache, last_only=True)[:, -1]
    out = []
    for i in range(gen):
        logits[:, mask_id] = float("-inf")
        nxt = logits.argmax(-1)
        out.append(nxt)
        if i + 1 < gen:
            logits = model(nxt[:, None], cache)[:, -1]
    return np.concatenate([contexts, torch.stack(out, 1).cpu().numpy().astype(contexts.dtype)], axis=1)


def make_rows(model, data: np.ndarray, n: int, ctx: int, gen: int, batch: int, seed: int, log) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, ctx + gen), dtype=data.dtype)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        b = min(batch, n - start)
        rows = np.sort(rng.integers(0, data.shape[0], b))
        offs = rng.integers(0, data.shape[1] - ctx + 1, b)
        contexts = np.stack([data[r, o:o + ctx] for r, o in zip(rows, offs)])
        out[start:start + b] = continue_rows(model, contexts, gen)
        done = start + b
        rate = done * gen / (time.perf_counter() - t0)
        log(f"\r  {done}/{n} rows, {rate:.0f} generated tokens/s, ETA {(n - done) * gen / rate:.0f} s")
    log("\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.distill", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "engine" / "embedded")
    p.add_argument("--data-dir", type=Path, default=REPO / "data", help="where train_1024.npy / heldout_1024.npy are")
    p.add_argument("--out", type=Path, default=REPO / "data" / "distill")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--heldout-rows", type=int, default=128, dest="heldout_rows")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--gen", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    from engine.checkpoint import load_checkpoint
    ck = load_checkpoint(args.model, device=args.device, dtype="float32", lora=False)
    log = lambda m: print(m, end="", file=sys.stderr, flush=True)  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    L = args.ctx + args.gen
    for split, n in (("heldout", args.heldout_rows), ("train", args.rows)):
        src = np.load(args.data_dir / f"{split}_1024.npy", mmap_mode="r")
        log(f"{split}: {n} rows of {args.ctx} text + {args.gen} greedy tokens\n")
        rows = make_rows(ck.model, src, n, args.ctx, args.gen, args.batch, args.seed + (split == "train"), log)
        np.save(args.out / f"{split}_{L}.npy", rows)
    for name in ("tokenizer.json", "heldout_files.txt"):
        shutil.copy(args.model / name, args.out / name)
    log(f"wrote {args.out}/train_{L}.npy\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
