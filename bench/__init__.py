"""`make bench` (``python -m bench``): speed, latency and quality of tricode per decoding mode, side by
side with the engines a user would pick instead, on the same weights, prompts and machine, in one run.

    decoding.py  section 1: per mode and block size on held-out single- and multi-line completions
                 (+ the forward-cost curve and a torch.profiler summary: where the milliseconds go)
    latency.py   section 2: keystroke-to-suggestion latency through `tricode lsp` + a warm daemon
    peers.py     section 3: HF transformers greedy generate (+ prompt lookup) and llama.cpp
                 (llama-cpp-python) on the same weights, exported here
    quality.py   section 4: HumanEval single-line infilling pass@1 per mode (sandboxed tests)
    report.py    docs/benchmarks.md, docs/benchmarks.png (a minimal PNG writer) and the stdout table
    common.py    machine description, load average, timing helpers

The tasks, prompt layout and metrics are training/evaluate.py's (its functions are called, not
copied). `--smoke` runs everything on a tiny random checkpoint in seconds (tests/test_bench.py).
"""
