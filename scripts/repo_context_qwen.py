"""A completion function for scripts/repo_context_eval.py backed by a real model: Qwen2.5-Coder
(GGUF) through llama-cpp-python, in the model family's own repository layout (the one
daemon/layouts.py renders for `qwen`):

    with snippets:  <|repo_name|>R\\n<|file_sep|>path\\ncontent ... <|file_sep|>current path\\n
                    <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>
    without:        <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>

The prefix keeps its last PREFIX_TOKENS tokens and the suffix its first SUFFIX_TOKENS (whole lines),
the same for both runs, so the only difference is the snippets. Greedy, stops at the end of the line.

    QWEN_GGUF=qwen2.5-coder-0.5b python scripts/repo_context_eval.py \\
        --completer scripts.repo_context_qwen:complete
"""
from __future__ import annotations

import os

PREFIX_TOKENS = 512
SUFFIX_TOKENS = 128
TODAY_TOKENS = 256     # each imported file's first lines (today's context), the same in both runs
_llm = None


def _model():
    global _llm
    if _llm is None:
        from registry.models import resolve
        from bench.llamacpp import plain_llama     # llama.cpp's repacking off (segfaults here)
        path = str(resolve(os.environ.get("QWEN_GGUF", "qwen2.5-coder-0.5b")))
        _llm = plain_llama(path, n_ctx=4096, n_threads=int(os.environ.get("QWEN_THREADS", "2")),
                     verbose=False, seed=0)
    return _llm


def _ntok(text: str) -> int:
    return len(_model().tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _clip_left(text: str, budget: int) -> str:
    lines = text.split("\n")
    out: list[str] = []
    used = 0
    for ln in reversed(lines):
        n = _ntok(ln + "\n")
        if used + n > budget and out:
            break
        out.append(ln)
        used += n
    return "\n".join(reversed(out))


def _clip_right(text: str, budget: int) -> str:
    out: list[str] = []
    used = 0
    for ln in text.split("\n"):
        n = _ntok(ln + "\n")
        if used + n > budget and out:
            break
        out.append(ln)
        used += n
    return "\n".join(out)


def complete(case, prefix: str, suffix: str, context: list[tuple[str, str]], today=()) -> str:
    p = _clip_left(prefix, PREFIX_TOKENS)
    s = _clip_right(suffix, SUFFIX_TOKENS)
    head = ""
    files = [(label, _clip_right(text, TODAY_TOKENS)) for label, text in today] + list(context)
    if files:
        head = f"<|repo_name|>{case.package}\n" + "".join(f"<|file_sep|>{label}\n{text}" for label, text in files)
        head += f"<|file_sep|>{case.path}\n"
    prompt = f"{head}<|fim_prefix|>{p}<|fim_suffix|>{s}<|fim_middle|>"
    out = _model().create_completion(prompt, max_tokens=48, temperature=0.0, stop=["\n", "<|endoftext|>",
                                                                                  "<|file_sep|>"])
    return out["choices"][0]["text"]
