"""Training samples (token ids) from source files: plain left-to-right and fill-in-the-middle.

Sample layouts (ids from :mod:`training.tokenizer`; ``enc`` = the tokenizer's encoding of a piece
of text on its own, with special-token strings kept as text)::

    plain:  enc(text) EOS
    FIM:    [ctx...] FIM_SUFFIX enc(suffix) FIM_PREFIX enc(prefix) FIM_MIDDLE enc(middle) EOS
    ctx:    FILE_SEP enc(path + "\\n" + content)          (zero or more, before the FIM part)

Suffix-first (SPM) order: the suffix, then the prefix, then the middle, so that typing at the cursor
only appends to the prompt. ``prefix``, ``suffix`` and ``middle`` are tokenized SEPARATELY, exactly as
the daemon sees them at inference (it has the text before and after the cursor, not a joint
tokenization). ``path`` in a context entry is the file's path relative to its package root (e.g.
``json/decoder.py``) and ``content`` ends with ``"\\n"`` (one is appended if missing); long context
content is cut to fit and may then end mid-line.

THE INFERENCE PROMPT (:func:`daemon.prompt.fim_layout`, the one definition the daemon, the
evaluation and these samples share)::

    [EOS] + ctx_1 + ... + ctx_k + [FIM_SUFFIX] + enc(suffix) + [FIM_PREFIX] + enc(prefix) + [FIM_MIDDLE]

then generate the middle until EOS. The leading EOS is the BOS: in training every sample follows an
EOS (each packed row starts with one and every sample ends with one). For plain left-to-right
completion the prompt is ``[EOS] + enc(text)``. Encode with ``tok.encode_special_tokens = True``.

Where the middle comes from (:func:`choose_fim_split`, per sample)
----------------------------------------------------------------
* ``line`` (50 %): one non-blank line, from its start (25 %), from the end of its indentation
  (35 %) or from a random column (40 %), to the end of the line; the newline goes with the middle
  half of the time (HumanEval style: the whole line removed) and stays in the suffix otherwise
  (editor style: the cursor's line still has its newline). A random column at the line end gives
  an empty middle: the model learns to stop at once.
* ``lines`` (30 %): 2 to 10 consecutive lines, same start and end rules.
* ``span`` (20 %): two uniform random character positions.

Packing (:func:`pack_corpus`)
-----------------------------
Files are cut into chunks at line boundaries so that any sample of a chunk fits a row. About
``fim_rate`` of the chunks become FIM samples, the others plain; a ``context_rate`` share of the
files is cut into half-size chunks whose FIM samples get a context entry from another file of the
same folder (same split only). Samples are shuffled (seeded) and packed into rows of ``seq_len``
ids, each row ``[EOS] sample EOS sample EOS ...``. A FIM sample never straddles two rows; when
nothing in the look-ahead window fits the rest of a row, a plain sample is split there (its tail
goes on in a later row), and only when no plain sample is at hand is the rest padded with EOS.
Everything is deterministic given the seed (per-file random streams are seeded from
``(seed, key)``, so one file's samples do not depend on the others).
"""

from __future__ import annotations

import bisect
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from daemon.prompt import fim_layout
from training.tokenizer import (EOS_ID, FILE_SEP_ID, FIM_MIDDLE_ID, FIM_PREFIX_ID, FIM_SUFFIX_ID,
                                encode, encode_batch)

FIM_MODES = ("line", "lines", "span")
DEFAULT_MODE_WEIGHTS = (0.5, 0.3, 0.2)
MAX_LINES_IN_MIDDLE = 10
FIM_OVERHEAD = 4          # FIM_SUFFIX, FIM_PREFIX, FIM_MIDDLE, EOS
SPLIT_SLACK = 8           # extra tokens separate tokenization of 3 pieces may cost
MIN_CONTEXT_TOKENS = 48
MIN_PLAIN_SPLIT = 32      # smallest head / tail of a plain sample split across rows
WINDOW = 64               # look-ahead of the row packer

_NL = re.compile(r"\n")
_FIM = {"suffix": FIM_SUFFIX_ID, "prefix": FIM_PREFIX_ID, "middle": FIM_MIDDLE_ID}


# ----------------------------------------------------------------------------- layouts


def plain_ids(text_ids: Sequence[int]) -> list[int]:
    """``text EOS``."""
    return list(text_ids) + [EOS_ID]


def fim_ids(prefix_ids: Sequence[int], middle_ids: Sequence[int], suffix_ids: Sequence[int],
            context_ids: Sequence[int] = ()) -> list[int]:
    """``ctx FIM_SUFFIX suffix FIM_PREFIX prefix FIM_MIDDLE middle EOS`` (the training sample; the
    inference prompt is ``[EOS]`` + this up to and including FIM_MIDDLE)."""
    return fim_layout(_FIM, prefix_ids, suffix_ids, context_ids) + list(middle_ids) + [EOS_ID]


def context_text(path: str, content: str) -> str:
    """The text of one context entry after its FILE_SEP: ``path + "\\n" + content`` ending in a
    newline."""
    if not content.endswith("\n"):
        content += "\n"
    return f"{path}\n{content}"


def context_entry_ids(tok, path: str, content: str) -> list[int]:
    """``FILE_SEP enc(path + "\\n" + content)``."""
    return [FILE_SEP_ID] + encode(tok, context_text(path, content))


def fim_sample(tok, prefix: str, middle: str, suffix: str,
               context: Sequence[tuple[str, str]] = ()) -> list[int]:
    """A FIM sample from text pieces (each tokenized on its own)."""
    ctx: list[int] = []
    for path, content in context:
        ctx += context_entry_ids(tok, path, content)
    return fim_ids(encode(tok, prefix), encode(tok, middle), encode(tok, suffix), ctx)


def plain_sample(tok, text: str) -> list[int]:
    return plain_ids(encode(tok, text))


def parse_fim_sample(ids: Sequence[int]) -> dict:
    """Split a FIM sample back into its parts: ``{'context': [ids...], 'prefix', 'middle',
    'suffix'}`` (lists of ids, special tokens removed). Raises ValueError on a malformed sample."""
    ids = list(ids)
    try:
        s = ids.index(FIM_SUFFIX_ID)
        p = ids.index(FIM_PREFIX_ID, s)
        m = ids.index(FIM_MIDDLE_ID, p)
    except ValueError as e:
        raise ValueError("not a FIM sample") from e
    end = ids.index(EOS_ID, m) if EOS_ID in ids[m:] else len(ids)
    ctx_part = ids[:s]
    contexts: list[list[int]] = []
    for t in ctx_part:
        if t == FILE_SEP_ID:
            contexts.append([])
        elif contexts:
            contexts[-1].append(t)
        else:
            raise ValueError("ids before the first FILE_SEP")
    return {"context": contexts, "suffix": ids[s + 1:p], "prefix": ids[p + 1:m],
            "middle": ids[m + 1:end]}


# ----------------------------------------------------------------------------- split points


@dataclass(frozen=True)
class Line:
    start: int          # offset of the first character
    indent_end: int     # offset after the leading spaces / tabs
    content_end: int    # offset of the line break ("\r\n" or "\n"), or len(text)
    end: int            # offset after the line break

    @property
    def blank(self) -> bool:
        return self.indent_end >= self.content_end


def split_lines(text: str) -> list[Line]:
    """The ``\\n``-separated lines of ``text`` with their offsets (a final line without a newline
    counts; an empty final piece after a trailing newline does not)."""
    out = []
    pos = 0
    n = len(text)
    while pos < n:
        nl = text.find("\n", pos)
        end = n if nl < 0 else nl + 1
        content_end = n if nl < 0 else (nl - 1 if nl > pos and text[nl - 1] == "\r" else nl)
        i = pos
        while i < content_end and text[i] in " \t":
            i += 1
        out.append(Line(pos, i, content_end, end))
        pos = end
    return out


def _start_col(line: Line, rng: random.Random) -> int:
    r = rng.random()
    if r < 0.25:
        return line.start
    if r < 0.60:
        return line.indent_end
    return rng.randint(line.indent_end, line.content_end)


def _end_of(line: Line, rng: random.Random) -> int:
    return line.end if (line.end > line.content_end and rng.random() < 0.5) else line.content_end


def choose_fim_split(text: str, rng: random.Random, mode: str | None = None,
                     weights: Sequence[float] = DEFAULT_MODE_WEIGHTS) -> tuple[int, int, str]:
    """``(start, end, mode)``: the middle is ``text[start:end]`` (see the module docstring for
    the modes). ``mode`` forces one; otherwise it is drawn with ``weights``."""
    if mode is None:
        mode = rng.choices(FIM_MODES, weights=weights)[0]
    if mode not in FIM_MODES:
        raise ValueError(f"unknown FIM mode {mode!r}")
    if mode != "span":
        lines = split_lines(text)
        idx = [i for i, ln in enumerate(lines) if not ln.blank]
        if idx:
            i = rng.choice(idx)
            first = lines[i]
            start = _start_col(first, rng)
            if mode == "line":
                last = first
            else:
                k = rng.randint(2, MAX_LINES_IN_MIDDLE)
                last = lines[min(len(lines) - 1, i + k - 1)]
            end = max(start, _end_of(last, rng))
            return start, end, mode
        mode = "span"
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return a, b, mode


def split_text(text: str, rng: random.Random, mode: str | None = None) -> tuple[str, str, str]:
    """``(prefix, middle, suffix)`` of ``text`` at a split from :func:`choose_fim_split`."""
    a, b, _ = choose_fim_split(text, rng, mode)
    return text[:a], text[a:b], text[b:]


# ----------------------------------------------------------------------------- chunking


def chunk_bounds(text: str, token_starts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut ``text`` into ``[(start, end)]`` character ranges at line starts, each holding at most
    ``budget`` tokens by the whole-text tokenization (``token_starts``: the start offset of every
    token). A single line longer than the budget is cut at a token boundary."""
    n = len(text)
    if n == 0:
        return []
    ntok = len(token_starts)
    line_starts = [0] + [m.end() for m in _NL.finditer(text) if m.end() < n]
    # tokens before each line start
    tok_at = [bisect.bisect_left(token_starts, b) for b in line_starts]
    out = []
    cur_char, cur_tok = 0, 0
    while cur_char < n:
        if ntok - cur_tok <= budget:
            out.append((cur_char, n))
            break
        # the last line start whose token index is within budget of the chunk start
        j = bisect.bisect_right(tok_at, cur_tok + budget) - 1
        if j >= 0 and line_starts[j] > cur_char:
            nxt_char, nxt_tok = line_starts[j], tok_at[j]
        else:  # one line longer than the budget: cut at a token boundary
            nxt_tok = cur_tok + budget
            nxt_char = token_starts[nxt_tok]
            if nxt_char <= cur_char:  # degenerate offsets: move on by characters
                nxt_char = min(n, cur_char + 1)
        out.append((cur_char, nxt_char))
        cur_char, cur_tok = nxt_char, nxt_tok
    return out


# ----------------------------------------------------------------------------- packing


@dataclass
class PackStats:
    files: int = 0
    chunks: int = 0
    plain: int = 0
    fim: int = 0
    fim_with_context: int = 0
    fim_too_long: int = 0
    fim_modes: dict = field(default_factory=lambda: {m: 0 for m in FIM_MODES})
    next_edit: int = 0              # next-edit samples (training/next_edit.py), no-edit places included
    next_edit_none: int = 0
    next_edit_too_long: int = 0     # dropped: longer than a row
    next_edit_kinds: dict = field(default_factory=dict)
    sample_tokens: int = 0
    rows: int = 0
    pad_tokens: int = 0
    plain_splits: int = 0
    dropped_tails: int = 0
    seconds: float = 0.0


def _as_items(files) -> list[tuple[str, str]]:
    items = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            items.append((f"doc/{i}", f))
        elif isinstance(f, tuple):
            items.append((str(f[0]), f[1]))
        else:
            items.append((f.key, f.text))
    return items


def _relpath(key: str) -> str:
    return key.split("/", 1)[1] if "/" in key else key


def _folder(key: str) -> str:
    return key.rsplit("/", 1)[0] if "/" in key else ""


def build_samples(files, tokenizer, seq_len: int, fim_rate: float = 0.5, seed: int = 0, *,
                  context_rate: float = 0.1, batch_files: int = 256, next_edit_share: float = 0.0,
                  stats: PackStats | None = None) -> list[tuple[np.ndarray, bool]]:
    """The samples of ``files`` in file order: ``[(ids as uint16 array, is_plain)]``.

    ``files``: SourceFile-like objects (``.key``, ``.text``), ``(key, text)`` pairs or strings.
    Every FIM sample is at most ``seq_len - 1`` ids long (a row also holds the leading EOS).
    ``next_edit_share`` (0 <= share < 1): about that share of all samples are next-edit samples
    (training/next_edit.py), made from the same files after each file's chunks (their own random stream:
    the FIM and plain samples are the same with or without them).
    """
    if not 0.0 <= next_edit_share < 1.0:
        raise ValueError(f"next_edit_share must be in [0, 1), got {next_edit_share}")
    from training import next_edit as ne
    st = stats if stats is not None else PackStats()
    tokenizer.encode_special_tokens = True   # special-token strings in source files stay text
    items = _as_items(files)
    max_sample = seq_len - 1
    full_budget = max_sample - FIM_OVERHEAD - SPLIT_SLACK
    if full_budget < 16:
        raise ValueError("seq_len too small")
    by_folder: dict[str, list[int]] = {}
    for idx, (key, _) in enumerate(items):
        by_folder.setdefault(_folder(key), []).append(idx)

    out: list[tuple[np.ndarray, bool]] = []
    for b0 in range(0, len(items), batch_files):
        batch = items[b0:b0 + batch_files]
        # token offsets are only needed for files that may exceed the budget (a token covers at
        # least one character, so a text of at most `budget` characters is one chunk)
        long_idx = [k for k, (_, t) in enumerate(batch) if len(t) > full_budget // 2]
        encs: list = [None] * len(batch)
        if long_idx:
            for k, e in zip(long_idx, tokenizer.encode_batch([batch[k][1] for k in long_idx],
                                                              add_special_tokens=False)):
                encs[k] = e
        # plan: per chunk, the pieces of text to encode
        plans = []    # (kind, rng-derived data)
        pieces: list[str] = []
        for (key, text), enc in zip(batch, encs):
            st.files += 1
            rng = random.Random(f"{seed}/{key}")
            neighbours = [j for j in by_folder.get(_folder(key), []) if items[j][0] != key]
            with_ctx = bool(neighbours) and rng.random() < context_rate
            budget = full_budget // 2 if with_ctx else full_budget
            bounds = [(0, len(text))] if enc is None or len(text) <= budget else \
                chunk_bounds(text, [o[0] for o in enc.offsets], budget)
            for a, b in bounds:
                chunk = text[a:b]
                if not chunk:
                    continue
                st.chunks += 1
                if rng.random() < fim_rate:
                    s, e, mode = choose_fim_split(chunk, rng)
                    ctx = None
                    if with_ctx:
                        j = rng.choice(neighbours)
                        nkey, ntext = items[j]
                        nlines = split_lines(ntext)
                        first = rng.randrange(len(nlines)) if len(nlines) > 1 and rng.random() < 0.5 else 0
                        # about 3 characters per token: enough text to fill the budget, cut later
                        approx = ntext[nlines[first].start:nlines[first].start + 3 * budget] \
                            if nlines else ""
                        ctx = (len(pieces) + 3, _relpath(nkey))
                        pieces.extend([chunk[:s], chunk[s:e], chunk[e:], context_text(_relpath(nkey), approx)])
                    else:
                        pieces.extend([chunk[:s], chunk[s:e], chunk[e:]])
                    plans.append(("fim", len(pieces) - (4 if ctx else 3), mode, ctx, chunk))
                else:
                    plans.append(("plain", len(pieces), None, None, chunk))
                    pieces.append(chunk)
            if next_edit_share:
                # per chunk share/(1-share) next-edit samples on average: `share` of all samples
                ne_rng = random.Random(f"{seed}/next_edit/{key}")
                x = len(bounds) * next_edit_share / (1.0 - next_edit_share)
                n = int(x) + (ne_rng.random() < x - int(x))
                for smp in ne.file_samples(key, text, n, ne_rng):
                    plans.append(("next_edit", len(pieces), smp.kind, None, None))
                    pieces.extend(ne.sample_pieces(smp))
        ids = encode_batch(tokenizer, pieces) if pieces else []
        for kind, i, mode, ctx, chunk in plans:
            if kind == "next_edit":
                sample = ids[i] + ids[i + 1] + [EOS_ID]
                if len(sample) > max_sample:
                    st.next_edit_too_long += 1
                    continue
                st.next_edit += 1
                st.next_edit_none += mode.startswith("none:")
                st.next_edit_kinds[mode] = st.next_edit_kinds.get(mode, 0) + 1
                out.append((np.asarray(sample, dtype=np.uint16), False))
                continue
            if kind == "plain":
                sample = plain_ids(ids[i])
                st.plain += 1
                out.append((np.asarray(sample, dtype=np.uint16), True))
                continue
            pre, mid, suf = ids[i], ids[i + 1], ids[i + 2]
            core = fim_ids(pre, mid, suf)
            ctx_ids: list[int] = []
            if ctx is not None:
                room = max_sample - len(core) - 1
                if room >= MIN_CONTEXT_TOKENS:
                    ctx_ids = [FILE_SEP_ID] + ids[ctx[0]][:room]
            sample = ctx_ids + core
            if len(sample) > max_sample:  # rare: separate tokenization cost more than the slack
                st.fim_too_long += 1
                sample = plain_ids(encode(tokenizer, chunk))
                st.plain += 1
                out.append((np.asarray(sample, dtype=np.uint16), True))
                continue
            st.fim += 1
            st.fim_modes[mode] += 1
            if ctx_ids:
                st.fim_with_context += 1
            out.append((np.asarray(sample, dtype=np.uint16), False))
    st.sample_tokens += sum(len(s) for s, _ in out)
    return out


def pack_samples(samples: Sequence[tuple[np.ndarray, bool]], seq_len: int, seed: int = 0,
                 stats: PackStats | None = None, shuffle: bool = True) -> np.ndarray:
    """Rows ``[N, seq_len]`` (uint16) of ``[EOS] sample sample ...`` (see the module docstring)."""
    st = stats if stats is not None else PackStats()
    order = list(range(len(samples)))
    if shuffle:
        random.Random(f"pack/{seed}").shuffle(order)
    pending = [samples[i] for i in reversed(order)]   # pop() from the end = next in order
    window: list[tuple[np.ndarray, bool]] = []
    rows: list[np.ndarray] = []
    row = np.full(seq_len, EOS_ID, dtype=np.uint16)
    fill = 1
    while pending or window:
        while pending and len(window) < WINDOW:
            window.append(pending.pop())
        space = seq_len - fill
        pick = -1
        if len(window[0][0]) <= space:
            pick = 0
        else:
            best = 0
            for k, (s, _) in enumerate(window):
                if best < len(s) <= space:
                    pick, best = k, len(s)
        if pick >= 0:
            s, _ = window.pop(pick)
            row[fill:fill + len(s)] = s
            fill += len(s)
        else:
            plain_k = next((k for k, (s, p) in enumerate(window) if p), -1)
            if plain_k >= 0 and space >= MIN_PLAIN_SPLIT:
                s, _ = window.pop(plain_k)
                row[fill:] = s[:space]
                fill = seq_len
                st.plain_splits += 1
                tail = s[space:]
                if len(tail) >= MIN_PLAIN_SPLIT:
                    window.insert(0, (tail, True))
                else:
                    st.dropped_tails += 1
            else:
                st.pad_tokens += space
                fill = seq_len
        if fill >= seq_len:
            rows.append(row)
            row = np.full(seq_len, EOS_ID, dtype=np.uint16)
            fill = 1
    if fill > 1:
        st.pad_tokens += seq_len - fill
        rows.append(row)
    st.rows += len(rows)
    if not rows:
        return np.zeros((0, seq_len), dtype=np.uint16)
    return np.stack(rows)


def pack_corpus(files, tokenizer, seq_len: int, fim_rate: float = 0.5, seed: int = 0, *,
                context_rate: float = 0.1, next_edit_share: float = 0.0,
                stats: PackStats | None = None) -> np.ndarray:
    """Training rows ``[N, seq_len]`` (uint16) from ``files``: :func:`build_samples` then
    :func:`pack_samples`. Deterministic given ``seed`` (and the files and tokenizer)."""
    if tokenizer.get_vocab_size() > 65536:
        raise ValueError("vocabulary too large for uint16 rows")
    st = stats if stats is not None else PackStats()
    t0 = time.perf_counter()
    samples = build_samples(files, tokenizer, seq_len, fim_rate, seed, context_rate=context_rate,
                            next_edit_share=next_edit_share, stats=st)
    arr = pack_samples(samples, seq_len, seed, stats=st)
    st.seconds += time.perf_counter() - t0
    return arr


# ----------------------------------------------------------------------------- files


def packed_path(data_dir: str | os.PathLike, split: str, seq_len: int) -> Path:
    """``<data_dir>/<split>_<seq_len>.npy``, e.g. ``data/train_1024.npy``."""
    return Path(data_dir) / f"{split}_{seq_len}.npy"


def save_packed(arr: np.ndarray, data_dir: str | os.PathLike, split: str,
                meta: dict | None = None) -> Path:
    """Save rows as ``<split>_<seq_len>.npy`` (+ ``.json`` with ``meta``); returns the npy path."""
    if arr.dtype != np.uint16 or arr.ndim != 2:
        raise ValueError("expected a 2-D uint16 array")
    path = packed_path(data_dir, split, arr.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    info = {"rows": int(arr.shape[0]), "seq_len": int(arr.shape[1]), "dtype": "uint16"}
    info.update(meta or {})
    path.with_suffix(".json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def load_packed(data_dir: str | os.PathLike, split: str, seq_len: int,
                mmap: bool = True) -> np.ndarray:
    """The rows saved by :func:`save_packed` (memory-mapped by default)."""
    return np.load(packed_path(data_dir, split, seq_len), mmap_mode="r" if mmap else None)


# ----------------------------------------------------------------------------- pipeline


def prepare_data(data_dir: str | os.PathLike = "data", seq_len: int = 1024,
                 vocab_size: int = 8192, seed: int = 0, fim_rate: float = 0.5,
                 max_tokenizer_bytes: int = 40_000_000, roots=None,
                 log=print, tokenizer: str | os.PathLike | None = None, train_seeds: int = 1,
                 next_edit_share: float = 0.0, max_files: int = 0) -> dict:
    """The whole data pipeline: collect the corpus, split it, write the manifests, train the
    tokenizer on the train split (``tokenizer.json``), pack ``train_<seq_len>.npy`` and
    ``heldout_<seq_len>.npy``. Returns a report dict (also saved as ``data_report.json``).

    ``tokenizer``: reuse this ``tokenizer.json`` instead of training one (a new model that keeps the
    shipped vocabulary). ``train_seeds`` > 1: the train split is packed that many times with seeds
    ``seed, seed+1, ...`` (each a different FIM arrangement and order of the same files) and the rows
    concatenated: more distinct rows than repeating one packing for several epochs.
    ``next_edit_share``: that share of the samples are next-edit samples (training/next_edit.py; the
    held-out split gets the same share, so its loss measures them too). ``max_files`` > 0: only that
    many files of the corpus, spread evenly over it (a quick or tiny run)."""
    from training import corpus, tokenizer as tkz

    out = Path(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep: dict = {"seq_len": seq_len, "vocab_size": vocab_size, "seed": seed, "fim_rate": fim_rate,
                 "next_edit_share": next_edit_share}
    t0 = time.perf_counter()
    cst = corpus.CorpusStats()
    files = corpus.collect_sources(roots, stats=cst)
    if max_files and len(files) > max_files:
        files = files[::-(-len(files) // max_files)]
    train, held = corpus.split_files(files)
    corpus.write_manifest(files, out)
    rep["corpus"] = dict(vars(cst))
    rep.update(files=len(files), total_mb=round(sum(len(f.text.encode()) for f in files) / 1e6, 2),
               train_files=len(train), heldout_files=len(held),
               collect_seconds=round(time.perf_counter() - t0, 1))
    log(f"corpus: {len(files)} files, {rep['total_mb']} MB, train {len(train)}, "
        f"heldout {len(held)} ({rep['collect_seconds']} s)")

    sample = tkz.sample_texts([f.text for f in train], max_tokenizer_bytes,
                              keys=[f.key for f in train])
    t1 = time.perf_counter()
    if tokenizer is not None:
        tok = tkz.from_file(tokenizer)
        if tok.get_vocab_size() != vocab_size:
            raise ValueError(f"{tokenizer} has {tok.get_vocab_size()} tokens, not vocab_size={vocab_size}")
        if Path(tokenizer).resolve() != (out / "tokenizer.json").resolve():
            (out / "tokenizer.json").write_bytes(Path(tokenizer).read_bytes())
        rep["tokenizer_from"] = str(tokenizer)
    else:
        tok = tkz.train_tokenizer(sample, vocab_size, out / "tokenizer.json")
        rep["tokenizer_train_mb"] = round(sum(len(t.encode()) for t in sample) / 1e6, 2)
    rep["tokenizer_seconds"] = round(time.perf_counter() - t1, 1)
    rep["heldout_chars_per_token"] = round(tkz.chars_per_token(tok, [f.text for f in held]), 3)
    log(f"tokenizer: vocab {tok.get_vocab_size()}, {rep.get('tokenizer_from') or 'trained on %s MB' % rep['tokenizer_train_mb']} "
        f"in {rep['tokenizer_seconds']} s; held-out chars/token {rep['heldout_chars_per_token']}")

    if train_seeds < 1:
        raise ValueError(f"train_seeds must be >= 1, got {train_seeds}")
    for split, group in (("train", train), ("heldout", held)):
        pst = PackStats()
        seeds = [seed + i for i in range(train_seeds if split == "train" else 1)]
        arr = np.concatenate([pack_corpus(group, tok, seq_len, fim_rate, s, next_edit_share=next_edit_share,
                                          stats=pst) for s in seeds])
        meta = {"seed": seed, "seeds": seeds, "fim_rate": fim_rate, "next_edit_share": next_edit_share,
                "files": len(group),
                "stats": {k: v for k, v in vars(pst).items()}}
        save_packed(arr, out, split, meta)
        rep[split] = {"rows": int(arr.shape[0]), "tokens": int(arr.size),
                      "sample_tokens": pst.sample_tokens, "pad_tokens": pst.pad_tokens,
                      "fim": pst.fim, "plain": pst.plain, "fim_with_context": pst.fim_with_context,
                      "fim_modes": pst.fim_modes, "seconds": round(pst.seconds, 1),
                      "next_edit": pst.next_edit, "next_edit_none": pst.next_edit_none,
                      "next_edit_too_long": pst.next_edit_too_long, "next_edit_kinds": pst.next_edit_kinds}
        log(f"{split}: {arr.shape[0]} rows x {seq_len} = {arr.size} tokens "
            f"({pst.fim} FIM / {pst.plain} plain samples, {pst.pad_tokens} pad) in {pst.seconds:.1f} s")
    (out / "data_report.json").write_text(json.dumps(rep, indent=2, sort_keys=True) + "\n")
    return rep


if __name__ == "__main__":  # python -m training.fim [data_dir] [seq_len]
    import sys
    prepare_data(sys.argv[1] if len(sys.argv) > 1 else "data",
                 int(sys.argv[2]) if len(sys.argv) > 2 else 1024)
