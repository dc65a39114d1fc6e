"""A completion function for scripts/repo_context_eval.py backed by the embedded model (engine/), laid
out as the daemon lays out an inline completion today: PromptBuilder's window layout within BUDGET
tokens with today's context (the imported files) as extra entries.

With snippets the total stays BUDGET: the prompt is built within BUDGET minus the snippets' tokens
and the snippets go in right after [bos], each as [file_sep] enc(path + "\\n" + text), before
everything else (the stable part of the prompt, ahead of the cursor's window). Greedy spec decoding
with the daemon's newline stop, as scripts/prompt_layout_eval.py.

    python scripts/repo_context_eval.py --completer scripts.repo_context_embedded:complete
"""
from __future__ import annotations

BUDGET = 1024          # the daemon's default context_tokens (the embedded model was trained on 1024)
_s: dict = {}


def _load() -> dict:
    if not _s:
        import torch
        from daemon.prompt import PromptBuilder, protect_special_tokens
        from textkit.tokenizer import Tokenizer
        from engine.checkpoint import load_checkpoint
        from engine.embedded_model import default_model
        from training.evaluate import newline_stop
        torch.set_num_threads(1)
        d = default_model()
        tok = Tokenizer(d)
        protect_special_tokens(tok)
        _s.update(ck=load_checkpoint(d, device="cpu"), tok=tok, builder=PromptBuilder(tok),
                  stop=newline_stop(tok.decode))
    return _s


def complete(case, prefix: str, suffix: str, context: list[tuple[str, str]], today=()) -> str:
    from engine.generate import DecodeParams, generate
    from training.evaluate import cut_at_newline
    s = _load()
    tok = s["tok"]
    extra: list[int] = []
    for label, text in context:
        extra += [tok.fim["file_sep"]] + tok.encode(f"{label}\n{text}")
    p = s["builder"].build(prefix, suffix, BUDGET - len(extra), list(today), layout="window", label=case.path)
    ids = [p.ids[0]] + extra + p.ids[1:]
    r = generate(s["ck"].model, ids, DecodeParams(mode="spec", max_new_tokens=48), stop=s["stop"])
    return cut_at_newline(tok.decode(r.tokens))
