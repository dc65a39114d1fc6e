"""`tricode eval`: held-out losses, single-line fill-in-the-middle and HumanEval infilling, per mode.

What is measured (all greedy, one prompt at a time, a fresh KV cache per completion)
-------------------------------------------------------------------------------------
1. **Held-out losses**: next-token loss (AR) and masked-token loss (diffusion: plain cross-entropy
   at the masked positions; the 1/p-weighted objective value is in the JSON as
   ``masked_loss_weighted``) with :func:`training.train.evaluate_loss` on packed held-out rows.
   The rows are ``<data-dir>/heldout_<seq_len>.npy`` when it exists AND was packed with the model's
   tokenizer (``<data-dir>/tokenizer.json`` has the same content); otherwise they are rebuilt from
   ``<model>/heldout_files.txt`` (keys resolved with :func:`training.corpus.resolve_key`, packed by
   :func:`training.fim.pack_corpus` with the model's tokenizer and the data pipeline's defaults:
   seed 0, FIM rate 0.5), so a fresh clone needs nothing but the checkpoint. ``--loss-rows`` rows
   (default 32, drawn by evaluate_loss's fixed seeds): fewer than the 256 of the training report,
   so the figures agree with ``training.json`` to about +-0.05.

2. **Single-line FIM on held-out files** (:func:`make_fim_tasks`). The held-out files are the keys
   in ``<model>/heldout_files.txt`` (or ``<data-dir>/heldout_files.txt``), sorted. A task: with
   ``random.Random(f"tricode-eval-fim/{seed}")`` pick a file uniformly, then one of its non-blank
   lines uniformly (no (file, line) twice; lines whose content is more than ``max_line_tokens``
   (40) tokens are skipped, the model gets ``max_new_tokens`` (48)). The task removes the line's
   content AFTER its indentation up to (not including) its line break:

       prefix = text[:indent_end]       (ends with the indentation, as after an editor's auto-indent)
       middle = text[indent_end:content_end]
       suffix = text[content_end:]      (starts with the line break: the cursor line keeps its "\\n")

   so ``prefix + middle + suffix == text``. The model generates until a newline or EOS: a stop
   callback decodes the tokens and cuts them after the first token that holds a "\\n"; the text is
   then cut at that newline. Exact match: ``generated.rstrip() == middle.rstrip()``. Edit
   similarity: ``1 - levenshtein(a, b) / max(len(a), len(b))`` on the same right-stripped strings
   (1.0 for two empty strings). The copy-the-previous-line baseline predicts the content of the
   nearest non-blank line above, stripped ("" when there is none).

3. **HumanEval single-line infilling** (:mod:`training.humaneval`, 1033 tasks). Each task's middle
   is a whole line with its indentation and newline; it is mapped onto the layout of 2.: the
   indentation moves to the end of the prefix and the line break to the start of the suffix, the
   model writes the content, and the program tested is ``prefix + indentation + generated line +
   "\\n" + suffix`` (exactly the published construction when the line is right). Tests run through
   :func:`training.humaneval.check_many`: separate sandboxed processes (:mod:`training.sandbox`),
   a temporary working directory, a timeout, no network. Generated code never runs in this
   process. ``--humaneval-limit N`` takes a seeded sample of N tasks (in task order).

The prompt (THE INFERENCE PROMPT of :mod:`training.fim`, no extra context)::

    [BOS=EOS] [FIM_SUFFIX] enc(suffix) [FIM_PREFIX] enc(prefix) [FIM_MIDDLE]

with prefix and suffix encoded separately. They share a budget of ``prompt_tokens - 4`` tokens
(default 1024 in all): the suffix gets up to a quarter of it (more when the prefix is short), the
prefix the rest; the prefix is clipped from the left and the suffix from the right at line
boundaries (:func:`clip_left`, :func:`clip_right`). (The daemon's own prompt builder gives the
suffix 15 % and adds workspace context; this evaluation is a fixed, self-contained definition.)

Per mode: exact match, edit similarity (FIM), pass@1 (HumanEval), tokens per forward (generated
tokens after the newline cut / forwards including the prefill, summed over all tasks), mean
acceptance length (``spec``: tokens emitted per verify, pooled), mean denoise steps per block
(``diffusion``), median and p95 milliseconds per completion (prefill included). ``spec`` vs ``ar``:
the number of tasks whose token output differs (greedy spec must reproduce greedy ar: expected 0).
``diffusion``: tokens per forward at the threshold in use, its exact-match cost against ``ar``
(ar exact match - diffusion exact match, in points) and how often it writes the same line as ar.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
MODE_ORDER = ("ar", "spec", "spec-quad", "diffusion")
# What each evaluated mode decodes with (spec explicitly linear, whatever the device's default).
DECODERS = {"ar": dict(mode="ar"), "spec": dict(mode="spec", spec_variant="linear"),
            "spec-quad": dict(mode="spec", spec_variant="quadratic"), "diffusion": dict(mode="diffusion")}
DEFAULT_FIM_TASKS = 200
DEFAULT_PROMPT_TOKENS = 1024
DEFAULT_MAX_NEW_TOKENS = 48
DEFAULT_MAX_LINE_TOKENS = 40
DEFAULT_LOSS_ROWS = 32
SUFFIX_SHARE = 0.25
PROMPT_OVERHEAD = 4          # BOS, FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class FimTask:
    """One single-line infilling task: generate ``middle`` (one line's content, no line break)
    between ``prefix`` (ending with the line's indentation) and ``suffix`` (starting with its line
    break)."""
    task_id: str
    prefix: str
    middle: str
    suffix: str
    previous_line: str = ""     # the nearest non-blank line above, stripped (the baseline's guess)

    @property
    def text(self) -> str:
        return self.prefix + self.middle + self.suffix


def previous_nonblank(prefix: str) -> str:
    """The nearest non-blank line of ``prefix`` before its last (partial) line, stripped."""
    lines = prefix.split("\n")[:-1]
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return ""


def line_task(key: str, text: str, line_index: int) -> FimTask:
    """The task that removes line ``line_index`` (0-based, of :func:`training.fim.split_lines`)."""
    from training.fim import split_lines
    ln = split_lines(text)[line_index]
    if ln.blank:
        raise ValueError(f"{key}: line {line_index + 1} is blank")
    prefix = text[:ln.indent_end]
    return FimTask(task_id=f"{key}:{line_index + 1}", prefix=prefix,
                   middle=text[ln.indent_end:ln.content_end], suffix=text[ln.content_end:],
                   previous_line=previous_nonblank(prefix))


def make_fim_tasks(files: Sequence[tuple[str, str]], n: int, seed: int = 0, *,
                   count_tokens: Callable[[str], int] | None = None,
                   max_line_tokens: int = DEFAULT_MAX_LINE_TOKENS) -> list[FimTask]:
    """``n`` single-line tasks from ``files`` (``(key, text)`` pairs), deterministic given the
    files and ``seed``: a file uniformly (files sorted by key), then one of its non-blank lines
    uniformly, never the same (file, line) twice; with ``count_tokens``, lines whose content takes
    more than ``max_line_tokens`` tokens are skipped. Fewer than ``n`` when the files run out."""
    from training.fim import split_lines
    items = sorted((k, t) for k, t in files)
    cands: list[tuple[str, str, list[int]]] = []
    for key, text in items:
        idx = [i for i, ln in enumerate(split_lines(text)) if not ln.blank]
        if idx:
            cands.append((key, text, idx))
    rng = random.Random(f"tricode-eval-fim/{seed}")
    used: set[tuple[int, int]] = set()
    out: list[FimTask] = []
    total = sum(len(c[2]) for c in cands)
    attempts = 0
    while len(out) < n and len(used) < total and attempts < 50 * n + 1000:
        attempts += 1
        f = rng.randrange(len(cands))
        key, text, idx = cands[f]
        i = rng.choice(idx)
        if (f, i) in used:
            continue
        used.add((f, i))
        task = line_task(key, text, i)
        if count_tokens is not None and count_tokens(task.middle) > max_line_tokens:
            continue
        out.append(task)
    return out


def humaneval_fim_task(task) -> FimTask:
    """A :class:`training.humaneval.InfillTask` in the layout of the held-out tasks: the middle
    line's indentation ends the prefix, its line break starts the suffix."""
    line = task.middle
    body = line.rstrip("\r\n")
    eol = line[len(body):]
    content = body.lstrip(" \t")
    indent = body[:len(body) - len(content)]
    prefix = task.prefix + indent
    return FimTask(task_id=task.task_id, prefix=prefix, middle=content, suffix=eol + task.suffix,
                   previous_line=previous_nonblank(prefix))


def humaneval_completion(task, generated_line: str) -> str:
    """What :meth:`InfillTask.program` gets for a generated line: indentation + line + "\\n"."""
    body = task.middle.rstrip("\r\n")
    indent = body[:len(body) - len(body.lstrip(" \t"))]
    return indent + generated_line.rstrip("\r") + "\n"


def check_humaneval(tasks, generated_lines: Sequence[str], timeout: float = 5.0,
                    workers: int = 2) -> list[bool]:
    """pass / fail of each generated line, each program run in its own sandboxed process
    (:func:`training.humaneval.check_many`); nothing runs in this process."""
    from training.humaneval import check_many
    return check_many(list(tasks), [humaneval_completion(t, g) for t, g in zip(tasks, generated_lines)],
                      timeout=timeout, workers=workers)


# ----------------------------------------------------------------------------- metrics


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of characters)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(a: str, b: str) -> float:
    """``1 - levenshtein / max(len)`` of the right-stripped strings; 1.0 for two empty ones."""
    a, b = a.rstrip(), b.rstrip()
    m = max(len(a), len(b))
    return 1.0 if m == 0 else 1.0 - levenshtein(a, b) / m


def exact_match(generated: str, reference: str) -> bool:
    return generated.rstrip() == reference.rstrip()


def cut_at_newline(text: str) -> str:
    """The generated line: the text before the first newline."""
    return text.split("\n", 1)[0]


def newline_stop(decode: Callable[[list[int]], str]) -> Callable[[list[int]], int | None]:
    """A ``stop`` callback for :func:`engine.generate.generate`: None while the decoded tokens hold
    no newline, else the number of tokens to keep (up to and including the first token whose text
    holds the newline; the caller cuts the text with :func:`cut_at_newline`)."""
    def stop(ids: list[int]) -> int | None:
        if "\n" not in decode(ids):
            return None
        for k in range(1, len(ids) + 1):
            if "\n" in decode(ids[:k]):
                return k
        return None
    return stop


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def copy_previous_line_baseline(tasks: Sequence[FimTask]) -> dict:
    """Exact match and edit similarity of predicting the previous non-blank line's content."""
    n = len(tasks)
    if not n:
        return {"exact_match": 0.0, "edit_similarity": 0.0}
    return {"exact_match": sum(exact_match(t.previous_line, t.middle) for t in tasks) / n,
            "edit_similarity": sum(edit_similarity(t.previous_line, t.middle) for t in tasks) / n}


# ----------------------------------------------------------------------------- prompts


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def clip_left(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest tail of ``text`` that starts at a line start (or is its last line) and encodes
    within ``budget`` tokens; the last (partial) line is always kept."""
    if count(text) <= budget:
        return text
    lines = _lines(text)
    counts = [count(ln) for ln in lines]
    start, total = len(lines), 0
    while start > 0 and total + counts[start - 1] <= budget:
        start -= 1
        total += counts[start]
    start = min(start, len(lines) - 1)
    while start < len(lines) - 1 and count("".join(lines[start:])) > budget:
        start += 1
    return "".join(lines[start:])


def clip_right(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest head of ``text`` that ends at a line end and encodes within ``budget`` tokens
    (possibly empty)."""
    if count(text) <= budget:
        return text
    lines = _lines(text)
    end, total = 0, 0
    for c in (count(ln) for ln in lines):
        if total + c > budget:
            break
        total += c
        end += 1
    while end > 0 and count("".join(lines[:end])) > budget:
        end -= 1
    return "".join(lines[:end])


def pretrained_prompt(tok, prefix: str, suffix: str, prompt_tokens: int = DEFAULT_PROMPT_TOKENS):
    """The daemon's inline prompt for a pretrained code model (a GGUF vocabulary: daemon.prompt's
    measured format, PromptBuilder.build_pretrained), or None for tricode's own models. Returns the
    daemon's Prompt (its `heal`: the whitespace to remove from the completion, fim.heal)."""
    from daemon.prompt import PromptBuilder, pretrained_format
    fmt = pretrained_format(tok)
    if fmt is None:
        return None
    return PromptBuilder(tok, fmt).build_pretrained(prefix, suffix, prompt_tokens)


def fim_prompt(tok, prefix: str, suffix: str, prompt_tokens: int = DEFAULT_PROMPT_TOKENS) -> list[int]:
    """THE INFERENCE PROMPT for ``prefix`` / ``suffix`` within ``prompt_tokens`` ids in all
    (``tok``: a :class:`textkit.tokenizer.Tokenizer`); a pretrained model's is the daemon's format
    (pretrained_prompt)."""
    pre = pretrained_prompt(tok, prefix, suffix, prompt_tokens)
    if pre is not None:
        return pre.ids
    if not tok.has_fim:
        raise ValueError("the checkpoint's tokenizer has no fill-in-the-middle tokens")
    count = lambda s: len(tok.encode(s))  # noqa: E731
    budget = prompt_tokens - PROMPT_OVERHEAD
    p_ids, s_ids = tok.encode(prefix), tok.encode(suffix)
    if len(p_ids) + len(s_ids) > budget:
        s_budget = max(int(budget * SUFFIX_SHARE), budget - len(p_ids))
        suffix = clip_right(suffix, s_budget, count)
        s_ids = tok.encode(suffix)
        prefix = clip_left(prefix, budget - len(s_ids), count)
        p_ids = tok.encode(prefix)
        if len(p_ids) > budget - len(s_ids):      # one enormous line: keep the ids nearest the cursor
            p_ids = p_ids[len(p_ids) - (budget - len(s_ids)):]
    from daemon.prompt import fim_layout
    return fim_layout(tok.fim, p_ids, s_ids, bos=tok.bos_id)


# ----------------------------------------------------------------------------- running


class _Progress:
    def __init__(self, label: str, total: int, quiet: bool = False):
        self.label, self.total, self.quiet = label, total, quiet
        self.t0 = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < 5 and done < self.total):
            return
        self.last = now
        el = now - self.t0
        eta = el / max(done, 1) * (self.total - done)
        print(f"  {self.label}: {done}/{self.total}  {1e3 * el / max(done, 1):.0f} ms/task  "
              f"elapsed {el:.0f} s  ETA {eta:.0f} s", file=sys.stderr, flush=True)


def run_completions(model, tok, tasks: Sequence[FimTask], mode: str, *, block_size: int | None,
                    threshold: float | None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                    prompt_tokens: int = DEFAULT_PROMPT_TOKENS, label: str = "",
                    quiet: bool = False, on_record: Callable[[FimTask, dict], None] | None = None) -> list[dict]:
    """Greedy single-line completions of ``tasks`` in one mode: per task a dict with ``line`` (the
    generated line), ``tokens``, ``nfe``, ``accept_lengths``, ``denoise_steps``, ``ms``,
    ``prefill_ms``, ``stop_reason``, ``block_size``. ``on_record(task, record)`` is told each one as
    it completes (``--records``: a long run cut short still leaves its figures)."""
    from daemon.prompt import fim
    from daemon.model_load import stop_token_ids
    from engine.generate import DecodeParams, generate
    params = DecodeParams(**DECODERS[mode], max_new_tokens=max_new_tokens, block_size=block_size,
                          threshold=threshold, temperature=0.0, stop_token_ids=stop_token_ids(tok))
    prog = _Progress(label or mode, len(tasks), quiet)
    out = []
    for i, t in enumerate(tasks):
        pre = pretrained_prompt(tok, t.prefix, t.suffix, prompt_tokens)
        ids = pre.ids if pre is not None else fim_prompt(tok, t.prefix, t.suffix, prompt_tokens)
        heal = pre.heal if pre is not None else ""
        # the line ends at a newline after the healed whitespace (the model writes the indentation)
        stop = newline_stop(lambda ids, heal=heal: fim.heal(tok.decode(ids), heal) if heal else tok.decode(ids))
        res = generate(model, ids, params, stop=stop)
        text = tok.decode(res.tokens)
        line = cut_at_newline(fim.heal(text, heal) if heal else text)
        out.append({"line": line, "tokens": res.tokens, "nfe": res.nfe,
                    "accept_lengths": res.accept_lengths, "denoise_steps": res.denoise_steps,
                    "lookup_steps": res.lookup_steps,
                    "ms": res.elapsed_ms, "prefill_ms": res.prefill_ms, "stop_reason": res.stop_reason,
                    "block_size": res.block_size, "prompt_tokens": len(ids)})
        if on_record is not None:
            on_record(t, out[-1])
        prog.update(i + 1)
    return out


def summarize(gens: Sequence[dict], tasks: Sequence[FimTask], mode: str) -> dict:
    """Per-mode figures of :func:`run_completions` output."""
    n = len(gens)
    toks = sum(len(g["tokens"]) for g in gens)
    nfe = sum(g["nfe"] for g in gens)
    ms = [g["ms"] for g in gens]
    out = {
        "tasks": n,
        "exact_match": sum(exact_match(g["line"], t.middle) for g, t in zip(gens, tasks)) / n if n else 0.0,
        "edit_similarity": sum(edit_similarity(g["line"], t.middle) for g, t in zip(gens, tasks)) / n if n else 0.0,
        "tokens_per_forward": toks / nfe if nfe else 0.0,
        "tokens": toks, "forwards": nfe,
        "ms_median": statistics.median(ms) if ms else 0.0,
        "ms_p95": percentile(ms, 95),
        "prefill_ms_median": statistics.median(g["prefill_ms"] for g in gens) if gens else 0.0,
        "stop_reasons": {r: sum(g["stop_reason"] == r for g in gens)
                         for r in sorted({g["stop_reason"] for g in gens})},
    }
    if mode.startswith("spec"):
        acc = [a for g in gens for a in g["accept_lengths"]]
        out["mean_accept_length"] = sum(acc) / len(acc) if acc else 0.0
        out["lookup_share"] = sum(g.get("lookup_steps", 0) for g in gens) / len(acc) if acc else 0.0
    if mode == "diffusion":
        steps = [s for g in gens for s in g["denoise_steps"]]
        out["mean_denoise_steps"] = sum(steps) / len(steps) if steps else 0.0
    return out


def compare_modes(gens: dict[str, list[dict]], summaries: dict[str, dict], key: str) -> dict:
    """spec-vs-ar mismatches and the diffusion-vs-ar figures (``key``: the score to compare)."""
    out: dict = {"spec_vs_ar_mismatches": None}
    for spec in ("spec", "spec-quad"):
        if "ar" in gens and spec in gens:
            name = "spec_vs_ar_mismatches" if spec == "spec" else "spec_quad_vs_ar_mismatches"
            out[name] = sum(a["tokens"] != s["tokens"] for a, s in zip(gens["ar"], gens[spec]))
    if "ar" in gens and "diffusion" in gens:
        n = len(gens["ar"])
        out["diffusion_vs_ar_agreement"] = (sum(a["line"] == d["line"] for a, d in
                                                zip(gens["ar"], gens["diffusion"])) / n) if n else 0.0
        out[f"diffusion_{key}_cost"] = summaries["ar"][key] - summaries["diffusion"][key]
    return out


# ----------------------------------------------------------------------------- held-out data


def read_heldout_files(model_dir: Path, data_dir: Path | None, log=None) -> tuple[list[tuple[str, str]], dict]:
    """``[(key, text)]`` of the held-out files named by the model's (else the data folder's)
    ``heldout_files.txt`` that exist on this machine, and a small info dict."""
    from training.corpus import read_manifest, resolve_key
    manifest = next((p for p in ([model_dir / "heldout_files.txt"]
                                 + ([data_dir / "heldout_files.txt"] if data_dir else []))
                     if p.is_file()), None)
    if manifest is None:
        return [], {"manifest": None}
    keys = read_manifest(manifest)
    files, missing = [], 0
    for k in keys:
        p = resolve_key(k)
        try:
            text = p.read_text(encoding="utf-8") if p is not None else None
        except (OSError, UnicodeDecodeError):
            text = None
        if text is None or not text.strip():
            missing += 1
            continue
        files.append((k, text))
    if missing and log:
        log(f"{missing} of {len(keys)} held-out files are not on this machine; using {len(files)}")
    return files, {"manifest": str(manifest), "listed": len(keys), "found": len(files)}


def _training_info(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "training.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def heldout_rows(model_dir: Path, data_dir: Path | None, files, seq_len: int, seed: int = 0, log=None):
    """``(rows, source)``: the packed held-out rows for the model's tokenizer (see the module
    docstring), or ``(None, reason)``."""
    import numpy as np
    from training import fim
    from training import tokenizer as tkz
    if data_dir is not None:
        npy = fim.packed_path(data_dir, "heldout", seq_len)
        tj = data_dir / "tokenizer.json"
        if npy.is_file() and tj.is_file() and tj.read_bytes() == (model_dir / "tokenizer.json").read_bytes():
            try:
                shown = str(npy.resolve().relative_to(REPO))
            except ValueError:
                shown = str(npy)
            return np.load(npy, mmap_mode="r"), shown
    if not files:
        return None, "no held-out rows (no heldout_files.txt or none of its files found)"
    tok = tkz.from_file(model_dir / "tokenizer.json")
    if log:
        log(f"packing {len(files)} held-out files into {seq_len}-token rows...")
    rows = fim.pack_corpus(files, tok, seq_len, fim_rate=0.5, seed=seed)
    return rows, f"rebuilt from heldout_files.txt ({len(files)} files, {rows.shape[0]} rows)"


def heldout_losses(ckpt, model_dir: Path, data_dir: Path | None, files, rows_wanted: int, log=None) -> dict:
    """Next-token and masked-token loss with :func:`training.train.evaluate_loss`."""
    from training import tokenizer as tkz
    from training.train import TrainConfig, evaluate_loss
    try:
        tkz.check_special_ids(tkz.from_file(model_dir / "tokenizer.json"))
    except ValueError as e:
        return {"skipped": f"tokenizer without tricode's fixed special ids ({e})"}
    if ckpt.config.mask_token_id != tkz.MASK_ID:
        return {"skipped": "mask id differs from tricode's training objective"}
    tcfg = _training_info(model_dir).get("train_config", {})
    seq_len = int(tcfg.get("seq_len", 1024))
    block = int(tcfg.get("block", ckpt.config.block_size))
    t0 = time.perf_counter()
    rows, source = heldout_rows(model_dir, data_dir, files, seq_len, int(tcfg.get("seed", 0)), log)
    if rows is None:
        return {"skipped": source}
    batch = max(1, min(4, rows_wanted))
    batches = max(1, math.ceil(rows_wanted / batch))
    cfg = TrainConfig(seq_len=seq_len, block=block, batch=batch, vocab_size=ckpt.config.vocab_size)
    if log:
        log(f"held-out loss on {batch * batches} rows x {seq_len} tokens...")
    res = evaluate_loss(ckpt.model, rows, cfg, ckpt.device, batches=batches)
    ckpt.model.eval()
    return {"ar_loss": res["ar"], "masked_loss": res["dlm_ce"], "masked_loss_weighted": res["dlm"],
            "rows": batch * batches, "seq_len": seq_len, "block": block, "source": source,
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- the command


def _modes(text: str) -> list[str]:
    want = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in want if m not in MODE_ORDER]
    if bad or not want:
        raise argparse.ArgumentTypeError(f"--modes: choose from {', '.join(MODE_ORDER)} (got {text!r})")
    return [m for m in MODE_ORDER if m in want]


def _threads_in_use() -> int:
    import torch
    return torch.get_num_threads()


def load_for_eval(model_dir: Path, device="auto", runner: str = "auto"):
    """(Checkpoint, runner name): a GGUF file on a CPU through llama.cpp's kernels
    (engine/llama_runner.py, as the daemon runs it) unless `runner` is "torch"; else torch's
    load_checkpoint. With "auto" a llama.cpp that cannot load the file falls back to torch."""
    import torch
    from engine.checkpoint import Checkpoint, load_checkpoint, pick_device
    if runner != "torch" and model_dir.is_file() and pick_device(device).type == "cpu":
        try:
            from engine.llama_runner import LlamaModel
            lm = LlamaModel.load(model_dir, threads=torch.get_num_threads(), n_ctx=4096, n_seq=2)
            return Checkpoint(path=model_dir, config=lm.cfg, model=lm, device=torch.device("cpu"),
                              dtype=torch.float32, format="gguf"), "llama.cpp"
        except (ImportError, ValueError, RuntimeError) as e:
            if runner == "llama":
                raise ValueError(f"the llama.cpp runner: {e}") from None
            print(f"tricode eval: llama.cpp cannot run {model_dir.name} ({e}); using torch", file=sys.stderr)
    return load_checkpoint(model_dir, device=device), "torch"


def run_eval(model_dir: Path, *, modes: Sequence[str] = MODE_ORDER, fim_tasks: int = DEFAULT_FIM_TASKS,
             humaneval_limit: int | None = None, block_size: int | None = None,
             threshold: float | None = None, data_dir: Path | None = REPO / "data", device="auto",
             seed: int = 0, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, loss_rows: int = DEFAULT_LOSS_ROWS,
             workers: int = 2, timeout: float = 5.0, quiet: bool = False, runner: str = "auto",
             records: Path | None = None, threads: int | None = None) -> dict:
    """The whole evaluation; returns the report dict (what ``--json`` prints). ``records``: a JSON-lines
    file that gets one line per completion as it is made (FIM: exact / edit similarity; HumanEval: the
    line, then a ``passed`` line per task once the tests ran), so a run stopped early keeps its figures."""
    from textkit.tokenizer import Tokenizer
    from engine.generate import DEFAULT_THRESHOLD, default_block_size

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    if threads is None:         # the daemon's rule (1 thread on <= 2 cores), so the speed is a user's
        from daemon.config import Config
        from daemon.model_load import cpu_threads
        threads = cpu_threads(Config())
    from daemon.model_load import use_threads
    use_threads(threads)
    ckpt, runner_name = load_for_eval(model_dir, device, runner)
    tok = Tokenizer(model_dir)
    model = ckpt.model
    served = ckpt.capabilities["modes"]
    unserved = [m for m in modes if DECODERS[m]["mode"] not in served or (m == "spec-quad" and not ckpt.config.has_drafter)]
    if unserved:
        log(f"{model_dir.name}: no drafter, so no {', '.join(unserved)} (it serves {', '.join(served)})")
        modes = [m for m in modes if m not in unserved]
    # the tasks: the model's own held-out list, else the embedded model's (a pulled model is compared
    # with the embedded one on the same tasks, picked with the embedded tokenizer's line filter)
    task_dir, task_tok = model_dir, tok
    if not (model_dir.is_dir() and (model_dir / "heldout_files.txt").is_file()):
        from engine.embedded_model import default_model
        if default_model() is not None:
            task_dir, task_tok = default_model(), Tokenizer(default_model())
    block = block_size or default_block_size(model)
    thr = threshold if threshold is not None else DEFAULT_THRESHOLD
    report: dict = {
        "model": str(model_dir), "parameters": ckpt.config.num_parameters, "device": str(ckpt.device),
        "dtype": str(ckpt.dtype).removeprefix("torch."), "modes": list(modes), "block_size": block,
        "prefill_dtype": (str((model.prefill_twin or model).head.weight.dtype).removeprefix("torch.")
                          if runner_name == "torch" else "gguf"),
        "runner": runner_name,
        "threshold": thr, "seed": seed, "prompt_tokens": prompt_tokens, "max_new_tokens": max_new_tokens,
        "training": {k: v for k, v in _training_info(model_dir).items() if k in ("steps", "tokens_seen")}
        if model_dir.is_dir() else {},
        "format": ckpt.format, "family": ckpt.config.family, "tasks_from": str(task_dir),
    }
    timings: dict = {}
    files, finfo = read_heldout_files(task_dir, data_dir, log)

    # 1. held-out losses
    t0 = time.perf_counter()
    if ckpt.format != "nld":
        report["losses"] = {"skipped": f"a {ckpt.format} checkpoint: the losses are tricode's training objective"}
    else:
        report["losses"] = heldout_losses(ckpt, model_dir, data_dir, files, loss_rows, log) if loss_rows > 0 \
            else {"skipped": "--loss-rows 0"}
    timings["losses_s"] = time.perf_counter() - t0
    if "ar_loss" in report["losses"]:
        log(f"held-out loss: AR {report['losses']['ar_loss']:.3f}, masked {report['losses']['masked_loss']:.3f}")

    gen_kw = dict(block_size=block_size, threshold=threshold, max_new_tokens=max_new_tokens,
                  prompt_tokens=prompt_tokens, quiet=quiet)
    rec_file = open(records, "a", buffering=1) if records is not None else None

    def write_record(**rec) -> None:
        if rec_file is not None:
            rec_file.write(json.dumps(rec) + "\n")

    def recorder(section: str, mode: str):
        if rec_file is None:
            return None

        def on_record(t: FimTask, g: dict) -> None:
            write_record(section=section, mode=mode, task=t.task_id, reference=t.middle, line=g["line"],
                         exact=exact_match(g["line"], t.middle), edit_sim=edit_similarity(g["line"], t.middle),
                         ms=round(g["ms"], 1), prefill_ms=round(g["prefill_ms"], 1),
                         prompt_tokens=g["prompt_tokens"], stop_reason=g["stop_reason"])
        return on_record

    write_record(section="start", model=str(model_dir), runner=runner_name, threads=_threads_in_use(),
                 modes=list(modes), fim_tasks=fim_tasks, humaneval_limit=humaneval_limit, seed=seed,
                 prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens,
                 time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    # 2. single-line FIM on held-out files
    if fim_tasks <= 0:
        report["fim"] = {"skipped": "--fim-tasks 0"}
    elif not files:
        report["fim"] = {"skipped": "no held-out files (heldout_files.txt missing or its files absent)"}
    else:
        tasks = make_fim_tasks(files, fim_tasks, seed, count_tokens=lambda s: len(task_tok.encode(s)),
                               max_line_tokens=min(DEFAULT_MAX_LINE_TOKENS, max_new_tokens - 2))
        log(f"single-line FIM: {len(tasks)} tasks from {len({t.task_id.rsplit(':', 1)[0] for t in tasks})} "
            f"of {len(files)} held-out files")
        gens, summ = {}, {}
        for mode in modes:
            t0 = time.perf_counter()
            gens[mode] = run_completions(model, tok, tasks, mode, label=f"fim {mode}",
                                         on_record=recorder("fim", mode), **gen_kw)
            summ[mode] = summarize(gens[mode], tasks, mode)
            timings[f"fim_{mode}_s"] = time.perf_counter() - t0
            log(f"  fim {mode}: exact {summ[mode]['exact_match']:.3f}, edit sim "
                f"{summ[mode]['edit_similarity']:.3f}, TPF {summ[mode]['tokens_per_forward']:.2f}")
        report["fim"] = {"tasks": len(tasks), "files": finfo,
                         "baseline_copy_previous_line": copy_previous_line_baseline(tasks),
                         "modes": summ, **compare_modes(gens, summ, "exact_match"),
                         "examples": [{"task": t.task_id, "reference": t.middle,
                                       **{m: gens[m][i]["line"] for m in modes}}
                                      for i, t in enumerate(tasks[:5])]}

    # 3. HumanEval single-line infilling
    if humaneval_limit == 0:
        report["humaneval"] = {"skipped": "--humaneval-limit 0"}
    else:
        try:
            from training.humaneval import load_tasks
            from training.sandbox import network_isolation
            he_all = load_tasks()
        except (FileNotFoundError, ImportError) as e:
            he_all = None
            report["humaneval"] = {"skipped": str(e)}
        if he_all is not None:
            he = he_all
            if humaneval_limit is not None and humaneval_limit < len(he_all):
                pick = sorted(random.Random(f"tricode-eval-humaneval/{seed}").sample(range(len(he_all)),
                                                                                       humaneval_limit))
                he = [he_all[i] for i in pick]
            ftasks = [humaneval_fim_task(t) for t in he]
            log(f"HumanEval single-line infilling: {len(he)} of {len(he_all)} tasks "
                f"(tests sandboxed, network isolation: {network_isolation()})")
            gens, summ = {}, {}
            for mode in modes:
                t0 = time.perf_counter()
                gens[mode] = run_completions(model, tok, ftasks, mode, label=f"humaneval {mode}",
                                             on_record=recorder("humaneval", mode), **gen_kw)
                t1 = time.perf_counter()
                passed = check_humaneval(he, [g["line"] for g in gens[mode]], timeout=timeout, workers=workers)
                t2 = time.perf_counter()
                for ft, ok in zip(ftasks, passed):
                    write_record(section="humaneval-tests", mode=mode, task=ft.task_id, passed=bool(ok))
                summ[mode] = summarize(gens[mode], ftasks, mode)
                summ[mode]["pass_at_1"] = sum(passed) / len(passed) if passed else 0.0
                summ[mode]["passed"] = sum(passed)
                timings[f"humaneval_{mode}_generate_s"] = t1 - t0
                timings[f"humaneval_{mode}_tests_s"] = t2 - t1
                log(f"  humaneval {mode}: pass@1 {summ[mode]['pass_at_1']:.3f} ({sum(passed)}/{len(passed)}), "
                    f"TPF {summ[mode]['tokens_per_forward']:.2f}; tests {t2 - t1:.0f} s")
            report["humaneval"] = {"tasks": len(he), "of": len(he_all), "sandbox": network_isolation(),
                                   "modes": summ, **compare_modes(gens, summ, "pass_at_1")}
    mism = [report[s].get(k) for s in ("fim", "humaneval") for k in ("spec_vs_ar_mismatches", "spec_quad_vs_ar_mismatches")]
    mism = [m for m in mism if m is not None]
    report["spec_vs_ar_mismatches"] = sum(mism) if mism else None
    timings["total_s"] = time.perf_counter() - t_start
    report["timings"] = timings
    report["threads"] = _threads_in_use()
    if rec_file is not None:
        write_record(section="end", total_s=round(timings["total_s"], 1))
        rec_file.close()
    return report


# ----------------------------------------------------------------------------- output


def _f(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_table(report: dict) -> str:
    """The plain-text report (stdout without ``--json``)."""
    r = report
    out = [f"tricode eval: {r['model']}",
           f"  {r['parameters'] / 1e6:.1f}M parameters, {r['device']} {r['dtype']}; block {r['block_size']}, "
           f"diffusion threshold {r['threshold']}; prompts <= {r['prompt_tokens']} tokens; greedy", ""]
    L = r.get("losses", {})
    if "ar_loss" in L:
        out += [f"Held-out loss ({L['rows']} rows x {L['seq_len']} tokens; {L['source']})",
                f"  next-token (AR)          {L['ar_loss']:.3f}",
                f"  masked-token (diffusion) {L['masked_loss']:.3f}   (1/p-weighted objective {L['masked_loss_weighted']:.3f})", ""]
    else:
        out += [f"Held-out loss: skipped ({L.get('skipped')})", ""]

    def mode_rows(sec: dict, he: bool) -> list[str]:
        head = f"  {'mode':<10} {'pass@1' if he else 'exact':>7} {'exact' if he else 'edit-sim':>8} " \
               f"{'TPF':>6} {'accept':>7} {'steps':>6} {'ms p50':>8} {'ms p95':>8}"
        rows = [head]
        for m, s in sec["modes"].items():
            first = _pct(s["pass_at_1"]) if he else _pct(s["exact_match"])
            second = _pct(s["exact_match"]) if he else _f(s["edit_similarity"])
            rows.append(f"  {m:<10} {first:>7} {second:>8} {s['tokens_per_forward']:>6.2f} "
                        f"{_f(s.get('mean_accept_length'), 2):>7} {_f(s.get('mean_denoise_steps'), 2):>6} "
                        f"{s['ms_median']:>8.0f} {s['ms_p95']:>8.0f}")
        return rows

    def comparisons(sec: dict, key: str, unit: str) -> list[str]:
        lines = []
        for k, name in (("spec_vs_ar_mismatches", "spec"), ("spec_quad_vs_ar_mismatches", "spec-quad")):
            if sec.get(k) is not None:
                lines.append(f"  {name} vs ar mismatches: {sec[k]} (expected 0)")
        if f"diffusion_{key}_cost" in sec:
            lines.append(f"  diffusion: {unit} cost vs ar {100 * sec[f'diffusion_{key}_cost']:+.1f} points; "
                         f"same line as ar in {_pct(sec['diffusion_vs_ar_agreement'])} of tasks")
        return lines

    F = r.get("fim", {})
    if "modes" in F:
        b = F["baseline_copy_previous_line"]
        out += [f"Single-line FIM on held-out files ({F['tasks']} tasks)"] + mode_rows(F, False)
        out += [f"  {'copy-prev':<10} {_pct(b['exact_match']):>7} {_f(b['edit_similarity']):>8}"]
        out += comparisons(F, "exact_match", "exact-match") + [""]
    else:
        out += [f"Single-line FIM: skipped ({F.get('skipped')})", ""]
    H = r.get("humaneval", {})
    if "modes" in H:
        out += [f"HumanEval single-line infilling ({H['tasks']} of {H['of']} tasks; tests sandboxed, {H['sandbox']})"]
        out += mode_rows(H, True) + comparisons(H, "pass_at_1", "pass@1") + [""]
    else:
        out += [f"HumanEval: skipped ({H.get('skipped')})", ""]
    t = r.get("timings", {})
    parts = [f"losses {t['losses_s']:.0f} s"] if "losses_s" in t else []
    for sec, name in (("fim", "FIM"), ("humaneval", "HumanEval")):
        per = [f"{m} {t[f'{sec}_{m}_s' if sec == 'fim' else f'{sec}_{m}_generate_s']:.0f} s"
               for m in r["modes"] if (f"{sec}_{m}_s" in t or f"{sec}_{m}_generate_s" in t)]
        if per:
            tests = sum(v for k, v in t.items() if k.startswith(sec) and k.endswith("_tests_s"))
            parts.append(f"{name} " + ", ".join(per) + (f" (+ tests {tests:.0f} s)" if sec == "humaneval" else ""))
    if "total_s" in t:
        parts.append(f"total {t['total_s'] / 60:.1f} min")
    out.append("Time: " + "; ".join(parts))
    return "\n".join(out)


def format_model_card_section(report: dict) -> str:
    """A markdown section with the figures of ``report`` (for docs/model_card.md)."""
    r = report
    md = ["## Evaluation (`tricode eval`)", ""]
    tr = r.get("training", {})
    md.append(f"Checkpoint `{Path(r['model']).name}`: {r['parameters'] / 1e6:.1f}M parameters"
              + (f", {tr['steps']} steps" if "steps" in tr else "")
              + f". Measured on {r['device']} ({r['dtype']}"
              + (f"; prompts prefilled in {r['prefill_dtype']}" if r.get("prefill_dtype", r["dtype"]) != r["dtype"] else "")
              + f"), greedy, block size {r['block_size']}, "
              f"diffusion threshold {r['threshold']}, prompts of at most {r['prompt_tokens']} tokens "
              f"(suffix first: `[EOS] [FIM_SUFFIX] suffix [FIM_PREFIX] prefix [FIM_MIDDLE]`), seed {r['seed']}.")
    md.append("")
    L = r.get("losses", {})
    if "ar_loss" in L:
        md += ["| held-out loss | value |", "|---|---|",
               f"| next-token (AR) | {L['ar_loss']:.3f} |",
               f"| masked-token (diffusion, CE at masked positions) | {L['masked_loss']:.3f} |", "",
               f"On {L['rows']} packed held-out rows of {L['seq_len']} tokens ({L['source']}).", ""]

    def table(sec: dict, he: bool) -> list[str]:
        rows = ["| mode | " + ("pass@1 | exact match" if he else "exact match | edit similarity")
                + " | tokens/forward | acceptance length | steps drafted from context | denoise steps/block | ms p50 | ms p95 |",
                "|---|---|---|---|---|---|---|---|---|"]
        for m, s in sec["modes"].items():
            a = _pct(s["pass_at_1"]) if he else _pct(s["exact_match"])
            b = _pct(s["exact_match"]) if he else _f(s["edit_similarity"])
            rows.append(f"| `{m}` | {a} | {b} | {s['tokens_per_forward']:.2f} | "
                        f"{_f(s.get('mean_accept_length'), 2)} | {_pct(s.get('lookup_share'))} | "
                        f"{_f(s.get('mean_denoise_steps'), 2)} | {s['ms_median']:.0f} | {s['ms_p95']:.0f} |")
        return rows

    F = r.get("fim", {})
    if "modes" in F:
        b = F["baseline_copy_previous_line"]
        md += [f"**Single-line fill-in-the-middle on held-out files** ({F['tasks']} tasks: one non-blank "
               "line's content removed after its indentation; generation stops at the newline):", ""]
        md += table(F, False)
        md.append(f"| copy the previous line (baseline) | {_pct(b['exact_match'])} | {_f(b['edit_similarity'])} "
                  "| | | | | | |")
        md.append("")
        notes = []
        for k, name in (("spec_vs_ar_mismatches", "spec"), ("spec_quad_vs_ar_mismatches", "spec-quad")):
            if F.get(k) is not None:
                notes.append(f"greedy `{name}` differs from greedy `ar` on {F[k]} of {F['tasks']} tasks")
        if "diffusion_exact_match_cost" in F:
            notes.append(f"`diffusion` costs {100 * F['diffusion_exact_match_cost']:+.1f} exact-match points "
                         f"against `ar` and writes the same line in {_pct(F['diffusion_vs_ar_agreement'])} of tasks")
        if notes:
            md += ["; ".join(notes).capitalize() + ".", ""]
    H = r.get("humaneval", {})
    if "modes" in H:
        md += [f"**HumanEval single-line infilling** ({H['tasks']} of {H['of']} tasks; tests run in "
               f"sandboxed subprocesses, network isolation: {H['sandbox']}):", ""]
        md += table(H, True)
        md.append("")
        for k, name in (("spec_vs_ar_mismatches", "spec"), ("spec_quad_vs_ar_mismatches", "spec-quad")):
            if H.get(k) is not None:
                md += [f"Greedy `{name}` differs from greedy `ar` on {H[k]} of {H['tasks']} tasks.", ""]
    t = r.get("timings", {})
    if "total_s" in t:
        md += [f"The whole evaluation took {t['total_s'] / 60:.1f} min. Reproduce with "
               f"`tricode eval --fim-tasks {F.get('tasks', 0)}"
               + ("" if H.get("tasks") == H.get("of") else f" --humaneval-limit {H.get('tasks', 0)}")
               + "`.", ""]
    return "\n".join(md)


def cmd_refactor_checks(args) -> int:
    """`tricode eval --refactor-checks`: training/refactor_checks.py through a daemon serving the model."""
    from registry.models import ModelError
    from training.refactor_checks import run_checks
    try:
        s = run_checks(args.model or "embedded", out=args.records, threads=args.threads or 1,
                       log=(lambda m: None) if args.json else print)
    except (ModelError, RuntimeError) as e:
        print(f"tricode eval --refactor-checks: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in s.items() if k != "records"}
    print(json.dumps(summary) if args.json else
          f"refactor success {s['success']}/{s['total']} ({s['model']}, runner {s.get('runner')}): "
          + ", ".join(f"{k} {v}" for k, v in s["by_kind"].items()))
    return 0


def cmd_eval(args) -> int:
    if args.refactor_checks:
        return cmd_refactor_checks(args)
    from engine.embedded_model import default_model
    from textkit.tokenizer import TokenizerError
    from engine.checkpoint import CheckpointError
    from registry.models import ModelError, resolve
    try:
        model_dir = resolve(args.model) if args.model else default_model()
    except ModelError as e:
        print(f"tricode eval: {e}", file=sys.stderr)
        return 2
    if model_dir is None:
        print("tricode eval: no model: pass --model DIR (an NLD checkpoint directory)", file=sys.stderr)
        return 2
    try:
        report = run_eval(Path(model_dir), modes=args.modes, fim_tasks=args.fim_tasks,
                          humaneval_limit=args.humaneval_limit, block_size=args.block_size,
                          threshold=args.threshold, data_dir=args.data_dir, device=args.device,
                          seed=args.seed, prompt_tokens=args.prompt_tokens,
                          max_new_tokens=args.max_new_tokens, loss_rows=args.loss_rows,
                          workers=args.workers, timeout=args.timeout, runner=args.runner,
                          records=args.records, threads=args.threads)
    except (CheckpointError, TokenizerError, ValueError) as e:
        print(f"tricode eval: {e}", file=sys.stderr)
        return 2
    if args.markdown:
        print(format_model_card_section(report))
    elif args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


def add_eval_command(sub) -> None:
    from daemon.model_load import thread_count
    p = sub.add_parser("eval", help="evaluate a model: held-out losses, single-line FIM, HumanEval infilling")
    p.add_argument("--model", help="checkpoint directory, GGUF file or model name (tricode model list; "
                                   "default: the embedded model)")
    p.add_argument("--modes", type=_modes, default=list(MODE_ORDER), help="comma list of " + ",".join(MODE_ORDER))
    p.add_argument("--fim-tasks", type=int, default=DEFAULT_FIM_TASKS, dest="fim_tasks",
                   help="held-out single-line FIM tasks (0 = skip)")
    p.add_argument("--humaneval-limit", type=int, default=None, dest="humaneval_limit",
                   help="HumanEval tasks, a seeded subset (default: all 1033; 0 = skip)")
    p.add_argument("--block-size", type=int, dest="block_size", help="spec/diffusion block (default: the device's)")
    p.add_argument("--threshold", type=float, help="diffusion commit threshold (default: the engine's)")
    p.add_argument("--data-dir", type=Path, default=REPO / "data", dest="data_dir",
                   help="where heldout_<seq>.npy / tokenizer.json may be (rebuilt from the model's "
                        "heldout_files.txt otherwise)")
    p.add_argument("--loss-rows", type=int, default=DEFAULT_LOSS_ROWS, dest="loss_rows",
                   help="held-out rows for the losses (0 = skip)")
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS, dest="prompt_tokens")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, dest="max_new_tokens")
    p.add_argument("--seed", type=int, default=0, help="task sampling seed")
    p.add_argument("--workers", type=int, default=2, help="sandboxed test processes at a time")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per HumanEval test program")
    p.add_argument("--device", default="auto")
    p.add_argument("--runner", default="auto", choices=("auto", "llama", "torch"),
                   help="a GGUF model on a CPU: llama.cpp's kernels (auto, llama) or torch's fp32 reference")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads for torch and llama.cpp (default: the daemon's cpu_threads rule: "
                        "1 on a machine of 2 cores or fewer, else every core)")
    p.add_argument("--records", type=Path, default=None,
                   help="append one JSON line per completion to this file as it is made "
                        "(a run stopped early keeps its figures)")
    p.add_argument("--refactor-checks", action="store_true", dest="refactor_checks",
                   help="run only the refactor checks (training/refactor_checks.py) through a daemon serving "
                        "the model (greedy, --threads or 1 thread; --records gets one JSON line per task)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as one JSON object")
    out.add_argument("--markdown", action="store_true", help="print the model-card section (markdown)")
    p.set_defaults(func=cmd_eval)
