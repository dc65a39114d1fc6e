"""Is a llama.cpp forward batch-invariant on this CPU? The logits of one token after a 300-token
context, computed in forwards of 1..16 tokens (the token first), against the 1-token forward and
against a 1-token forward padded with a second token of another sequence; and the next step's logits
after K/V written by one 4-token forward vs by four single steps. What decides whether greedy spec
can equal ar exactly on llama.cpp's kernels (docs/cpu_speed.md section 7).

    python scripts/batch_invariance.py [--model qwen2.5-coder-0.5b] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from registry.models import model_arg
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=model_arg, default="qwen2.5-coder-0.5b", help="a pulled model's name or a .gguf file")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    from engine.llama_runner import LlamaModel
    lm = LlamaModel.load(a.model, threads=a.threads, n_ctx=2048, n_seq=4)
    context = [1000 + (i * 37) % 5000 for i in range(300)]
    toks = [17, 2345, 999, 4242, 77, 88, 99, 1234, 555, 666, 7777, 12, 13, 14, 15, 16]

    def fresh():
        c = lm.new_cache(512)
        lm.decode([(c, context, False)])
        c.commit(context)
        return c

    first = {k: lm.decode([(fresh(), toks[:k], True)])[0] for k in range(1, 17)}
    pad = lm.decode([(fresh(), toks[:1], True), (lm.new_cache(64), [5], True)])[0]
    diff = lambda x, y: float(np.abs(x - y).max())  # noqa: E731
    print("max |logit difference| of the first token's row")
    for k in range(2, 17):
        print(f"  {k:2d}-token forward vs 1-token: {diff(first[k], first[1]):.4f}   vs padded 1-token: "
              f"{diff(first[k], pad):.4f}")
    a4 = fresh()
    lm.decode([(a4, toks[:4], False)])
    a4.commit(toks[:4])
    s4 = fresh()
    for t in toks[:4]:
        lm.decode([(s4, [t], False)])
        s4.commit([t])
    nxt = diff(lm.decode([(a4, toks[4:5], True)])[0], lm.decode([(s4, toks[4:5], True)])[0])
    print(f"next step after K/V from one 4-token forward vs four 1-token steps: {nxt:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
