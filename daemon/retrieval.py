"""Repository context for one completion: the workspace chunks most like the code at the cursor and
the definitions of the names used there, as snippets that fit a budget. Torch-free; reads the
workspace index (daemon/repo_index.py) and the few files it shows.

The query is the cursor's window: the QUERY_LINES lines that end at the START of the cursor's line
(the line being typed is left out, so typing within a line keeps the same snippets, and the prompt
part they fill keeps its KV cache; Enter moves the window by one line).

Three sources (`sources`), in this priority:

1. definitions: the names in the window that the current text does not define itself and the
   workspace defines elsewhere (at most MAX_DEF_CANDIDATES places, else the name is too common to
   pick one), nearest the cursor first. A name counts when it is called (`f(`), called as a method
   (`.m(`, not a builtin type's method), capitalised, or imported; plain lower-case names (locals,
   parameters) are not followed. A function or class over a variable; the definition closest to the
   current file in the tree. Shown from their first line, at most DEF_LINES lines (MAX_DEFS).
2. signatures: the header lines of the other workspace names the file imports (MAX_SIGNATURES),
   what the next line may call before the window has used it; the names the file uses most first.
3. similar chunks: BM25 over identifier sets (binary term frequency, length-normalised; identifiers
   in more than COMMON_DF of the chunks carry almost no weight and are not scored, which keeps a query
   over a large index to a few ms), or the identifier-set Jaccard (`method="jaccard"`), multiplied by
   (1 + RECENCY_WEIGHT / (1 + r)) for a file that is r-th in the recently edited or viewed list.
   Ties are broken by path and line, so the order is a function of the window, the index and the
   recency list only. Chunks of the current file that overlap its own window are dropped.

Every snippet is read back from disk (a file changed since it was indexed is re-indexed and skipped
this time) and dropped when DUP_SHARE of its lines are already in what the prompt holds (`held`) or
in a snippet taken before it. Snippets are taken in priority order while they fit `budget` (measured
with `count`, characters by default); one that does not fit is cut to its first lines when at least
MIN_SNIPPET_LINES fit; sizes are counted per line (cached), so a retrieval costs a few `count` calls.
The result is cached per (window, index generation, recency version): keystrokes within a line
cost a lookup. `as_entries` lays the snippets out for PromptBuilder as (path, text) context entries,
one per file, the most relevant file last (nearest the cursor's file).

What it does not know: the model, tokens (`count` is the caller's), the prompt layout.
"""
from __future__ import annotations

import math
import os
import re
import threading
from bisect import bisect_left
from collections import Counter, OrderedDict
from dataclasses import dataclass

import numpy as np

from daemon.repo_chunks import STOPWORDS, identifiers
from daemon.repo_index import RepoIndex

QUERY_LINES = 30
MAX_DEF_CANDIDATES = 3      # a name defined in more places than this is not followed
MAX_DEFS = 4
DEF_LINES = 24
MAX_CHUNK_CANDIDATES = 24
MAX_SIGNATURES = 6
SIGNATURE_LINES = 4
MAX_SNIPPETS = 12
SOURCES = ("definitions", "signatures", "chunks")
# "definition-headers" instead of "definitions": the same definitions shown by their header lines only
# (a class with its __init__'s), so that a small budget holds the API of more names
ALL_SOURCES = SOURCES + ("definition-headers",)
MIN_ROOM = 16               # stop when less than this is left of the budget
MIN_SNIPPET_LINES = 4
DUP_SHARE = 0.8
COMMON_DF = 0.2
BM25_K1 = 1.2
BM25_B = 0.75
RECENCY_WEIGHT = 0.5
RECENT_FILES = 16
DEF_KIND_ORDER = {"class": 0, "function": 0, "method": 1, "definition": 1, "variable": 2}
_IDENT_RE = re.compile(r"[A-Za-z_]\w*")
_USE_RE = re.compile(r"(\.)?\b([A-Za-z_]\w*)\b(\s*\()?")
# methods of the builtin types: `.get(` on a dict is not a call of the workspace's one `get` method
BUILTIN_ATTRS = frozenset(n for t in (dict, list, str, set, bytes, int, float, tuple, object, frozenset)
                          for n in dir(t) if not n.startswith("_"))
_ANY = frozenset({"function", "class", "method", "variable", "definition"})
_IMPORT_RE = re.compile(r"^[ \t]*from[ \t]+[\w.]+[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)|^[ \t]*import[ \t]+([^\n#]+)", re.M)
_LOCAL_DEF_RE = re.compile(
    r"^[ \t]*(?:async[ \t]+)?(?:def|class|function|fn|func|struct|interface|enum|trait|type)[ \t]+([A-Za-z_]\w*)"
    r"|^([A-Za-z_]\w*)[ \t]*(?::[^=\n]*)?=(?!=)", re.M)


@dataclass(frozen=True)
class Snippet:
    path: str           # absolute
    label: str          # relative to the workspace root
    start: int          # first line, 1-based
    end: int            # last line, inclusive
    text: str
    score: float
    why: str            # "definition of name (kind)" or "shares a, b, c"

    def to_json(self) -> dict:
        return {"path": self.label, "start": self.start, "end": self.end, "score": round(self.score, 3),
                "why": self.why}


class Recency:
    """The files edited or viewed most recently, in order (the workspace reports saves and views)."""

    def __init__(self, size: int = RECENT_FILES):
        self.size = size
        self._order: OrderedDict[str, str] = OrderedDict()
        self.version = 0
        self._lock = threading.Lock()

    def touch(self, path: str, kind: str = "edit") -> None:
        path = os.path.abspath(path)
        with self._lock:
            if next(reversed(self._order), None) == path and self._order[path] == kind:
                return
            self._order[path] = kind
            self._order.move_to_end(path)
            while len(self._order) > self.size:
                self._order.popitem(last=False)
            self.version += 1

    def ranks(self) -> dict[str, tuple[int, str]]:
        """path -> (rank, kind), rank 0 the most recent."""
        with self._lock:
            return {p: (i, k) for i, (p, k) in enumerate(reversed(self._order.items()))}


def query_window(text: str, line: int, lines: int = QUERY_LINES) -> tuple[str, int]:
    """The `lines` lines before the cursor's line (0-based `line`), and the first of them."""
    all_lines = text.split("\n")
    line = max(0, min(line, len(all_lines)))
    first = max(0, line - lines)
    return "\n".join(all_lines[first:line]), first


def names_near_cursor(window: str, imported=frozenset()) -> list[tuple[str, frozenset[str]]]:
    """The names of the window worth following to a definition, the one used last first, each with
    the definition kinds that fit its use: `f(` a function or class, `.m(` a method or function,
    `Name` a class or constant, a name the file imports anything. Plain lower-case names that are
    neither called nor imported (locals, parameters) are not followed."""
    found: dict[str, tuple[int, frozenset[str]]] = {}
    for i, m in enumerate(_USE_RE.finditer(window)):
        attr, t, call = m.group(1), m.group(2), m.group(3)
        if len(t) < 3 or t in STOPWORDS:
            continue
        if t in imported:
            kinds = _ANY
        elif attr and call and t not in BUILTIN_ATTRS:
            kinds = frozenset({"method", "function", "definition"})
        elif attr or (call and t in BUILTIN_ATTRS):
            continue
        elif call:
            kinds = frozenset({"function", "class", "definition"})
        elif t[0].isupper():
            kinds = frozenset({"class", "variable", "definition"})
        else:
            continue
        prev = found.get(t)
        found[t] = (i, kinds | prev[1] if prev else kinds)
    return [(t, k) for t, (i, k) in sorted(found.items(), key=lambda kv: -kv[1][0])]


def imported_names(text: str) -> list[str]:
    """Names a file imports, in order (`from m import a, b as c` -> a, c; `import a.b` -> a)."""
    out: dict[str, None] = {}
    for m in _IMPORT_RE.finditer(text):
        for part in (m.group(1) or m.group(2) or "").replace("(", " ").replace(")", " ").split(","):
            words = part.split()
            if words:
                out[words[-1] if len(words) == 3 and words[1] == "as" else words[0].split(".")[0]] = None
    return list(out)


def _norm_lines(text: str) -> list[str]:
    return [s for s in (ln.strip() for ln in text.split("\n")) if len(s) > 3]


class Retriever:
    """Snippets for completions from one index (see the module docstring)."""

    def __init__(self, index: RepoIndex, recency: Recency | None = None, method: str = "bm25"):
        if method not in ("bm25", "jaccard"):
            raise ValueError(f"unknown retrieval method {method!r}: use 'bm25' or 'jaccard'")
        self.index = index
        self.recency = recency or Recency()
        self.method = method
        self._files: OrderedDict[tuple[str, int], list[str]] = OrderedDict()
        self._cache: OrderedDict[tuple, list[Snippet]] = OrderedDict()
        self._counts: dict[str, int] = {}
        self._counter = None

    def _count(self, count, line: str) -> int:
        """count(line), cached per line (a snippet's size is the sum over its lines: BPE merges across
        a newline are rare, so this is at most a little over the exact count)."""
        if count is not self._counter:
            self._counts.clear()
            self._counter = count
        n = self._counts.get(line)
        if n is None:
            if len(self._counts) > 100_000:
                self._counts.clear()
            n = self._counts[line] = count(line)
        return n

    # -- ranking --------------------------------------------------------------------------------------

    def rank_chunks(self, query: set[str], exclude_path: str = "", exclude_lines: tuple[int, int] = (0, 0),
                    limit: int = MAX_CHUNK_CANDIDATES) -> list[tuple[int, float, list[str]]]:
        """(chunk id, score, the query identifiers it shares, rarest first) of the best chunks."""
        idx = self.index
        ranks = self.recency.ranks()
        with idx.lock:
            n = idx.num_chunks
            total = len(idx._c_file)
            if n == 0 or not query:
                return []
            avg = idx.mean_chunk_size() or 1.0
            terms = []
            for t in query:
                p = idx.postings.get(t)
                if p is not None and not (len(p) > COMMON_DF * n and n > 50):
                    terms.append((len(p), t, p))
            if not terms:
                return []
            terms.sort()
            # postings hold each chunk once per identifier, so a fancy-indexed add is exact
            acc = np.zeros(total, dtype=np.float32)
            for df, t, p in terms:
                w = math.log(1.0 + (n - df + 0.5) / (df + 0.5)) if self.method == "bm25" else 1.0
                acc[np.array(p, dtype=np.int64)] += w
            cand = np.flatnonzero(acc)
            sizes = np.array(idx._c_size, dtype=np.float32)[cand]
            s = acc[cand]
            if self.method == "bm25":
                # binary tf: each shared identifier weighs idf * (k1 + 1) / (1 + k1 * length norm)
                s = s * (BM25_K1 + 1) / (1 + BM25_K1 * (1 - BM25_B + BM25_B * sizes / avg))
            else:
                s = s / (len(query) + np.maximum(sizes, 1) - s)
            # the best few times the limit, then recency, liveness and the own window on those only
            # (recency lifts a score by at most 1 + RECENCY_WEIGHT)
            k = min(len(cand), limit * 8)
            top = np.argpartition(-s, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
            scored = []
            for j in top.tolist():
                cid = int(cand[j])
                if not idx.chunk_live(cid):
                    continue
                c = idx.chunk(cid)
                if c.path == exclude_path and c.start <= exclude_lines[1] and c.end >= exclude_lines[0]:
                    continue
                sc = float(s[j])
                r = ranks.get(c.path)
                if r is not None:
                    sc *= 1 + RECENCY_WEIGHT / (1 + r[0])
                scored.append((-round(sc, 6), c.path, c.start, cid))
            scored.sort()
            scored = scored[:limit]
            shared = {cid: [t for _, t, p in terms if _contains(p, cid)][:8] for _, _, _, cid in scored}
        return [(cid, -ns, shared[cid]) for ns, _, _, cid in scored]

    def follow_definitions(self, names: list[tuple[str, frozenset[str]]], cur_path: str, defined_here: set[str]):
        """(name, Definition) for the names defined elsewhere in the workspace, in priority order."""
        out = []
        for name, kinds in names:
            if name in defined_here:
                continue
            defs = [d for d in self.index.definitions(name) if d.path != cur_path and d.kind in kinds]
            if not defs or len(defs) > MAX_DEF_CANDIDATES:
                continue
            defs.sort(key=lambda d: (DEF_KIND_ORDER.get(d.kind, 3), -_common_prefix(d.path, cur_path), d.path, d.line))
            out.append((name, defs[0]))
            if len(out) >= MAX_DEFS * 2:
                break
        return out

    # -- reading ------------------------------------------------------------------------------------

    def _lines(self, path: str) -> list[str] | None:
        """The file's lines, when it is unchanged since indexed (else it is re-indexed: None now)."""
        if not self.index.is_current(path):
            self.index.update(path)
            return None
        try:
            key = (path, os.stat(path).st_mtime_ns)
        except OSError:
            return None
        got = self._files.get(key)
        if got is None:
            try:
                with open(path, encoding="utf-8") as f:
                    got = f.read().split("\n")
            except (OSError, UnicodeDecodeError):
                return None
            self._files[key] = got
            while len(self._files) > 32:
                self._files.popitem(last=False)
        else:
            self._files.move_to_end(key)
        return got

    def label(self, path: str) -> str:
        try:
            return os.path.relpath(path, self.index.root)
        except ValueError:
            return os.path.basename(path)

    # -- the snippets -------------------------------------------------------------------------------

    def retrieve(self, path: str, text: str, line: int, budget: int, held=(), count=len,
                 exclude_after: int = 40, sources=SOURCES) -> list[Snippet]:
        """Snippets for a completion in `path` (its current `text`, the cursor on 0-based `line`)
        within `budget` (as measured by `count`), in priority order. `held`: texts the prompt already
        holds (other files, the file's head); `exclude_after`: how many lines after the cursor the
        prompt's own window reaches (chunks of this file there are dropped); `sources`: which of
        "definitions", "signatures", "chunks" to use (all by default)."""
        path = os.path.abspath(path) if path else ""
        window, first = query_window(text, line)
        key = (path, window, first, tuple(held) if len(held) < 16 else len(held), budget,
               self.index.generation, self.recency.version, tuple(sources))
        got = self._cache.get(key)
        if got is not None:
            return got
        held_lines = set()
        for h in held:
            held_lines.update(_norm_lines(h))
        held_lines.update(_norm_lines(window))
        # the file without the cursor's line: what is typed there changes nothing until Enter
        rest = _without_line(text, line)
        defined_here = {m.group(1) or m.group(2) for m in _LOCAL_DEF_RE.finditer(rest)}
        out: list[Snippet] = []
        used = 0
        taken: dict[str, list[tuple[int, int]]] = {}

        def offer(p: str, s: int, e: int, score: float, why: str) -> None:
            nonlocal used
            if len(out) >= MAX_SNIPPETS:
                return
            if any(s <= b and e >= a for a, b in taken.get(p, ())):
                return
            lines = self._lines(p)
            if lines is None or s > len(lines):
                return
            e = min(e, len(lines))
            body = lines[s - 1:e]
            norm = _norm_lines("\n".join(body))
            if not norm or sum(1 for ln in norm if ln in held_lines) >= DUP_SHARE * len(norm):
                return
            label = self.label(p)
            overhead = self._count(count, label + "\n") + 1
            sizes = [self._count(count, ln + "\n") for ln in body]
            room = budget - used - overhead
            if sum(sizes) > room:       # keep the first lines that fit
                k, tot = 0, 0
                while k < len(sizes) and tot + sizes[k] <= room:
                    tot += sizes[k]
                    k += 1
                if k < min(MIN_SNIPPET_LINES, len(body)):
                    return
                body = body[:k]
            snippet = "\n".join(body) + "\n"
            size = sum(sizes[:len(body)]) + overhead
            e = s + len(body) - 1
            out.append(Snippet(p, label, s, e, snippet, score, why))
            used += size
            taken.setdefault(p, []).append((s, e))
            held_lines.update(norm)

        imported = imported_names(rest)
        names = names_near_cursor(window, set(imported))
        followed = set()
        headers = "definition-headers" in sources
        for name, d in self.follow_definitions(names if "definitions" in sources or headers else [], path,
                                               defined_here):
            if sum(1 for s in out if s.why.startswith("definition")) >= MAX_DEFS:
                break
            followed.add(name)
            if not headers:
                offer(d.path, d.line, min(d.end, d.line + DEF_LINES - 1), 0.0, f"definition of {name} ({d.kind})")
                continue
            lines = self._lines(d.path)
            if lines is None:
                continue
            offer(d.path, d.line, _signature_end(lines, d.line, d.end), 0.0, f"definition of {name} ({d.kind})")
            if d.kind == "class":       # how it is constructed
                for init in self.index.definitions("__init__"):
                    if init.path == d.path and d.line < init.line <= d.end:
                        offer(init.path, init.line, _signature_end(lines, init.line, init.end), 0.0,
                              f"definition of {name} ({d.kind})")
                        break
        # the signatures of the other workspace names the file imports (what the next line may call)
        n_sig = 0
        sig_kinds = frozenset({"function", "class", "definition"})
        # the names the file uses most first (a name used often is likely used again)
        uses = Counter(_IDENT_RE.findall(rest)) if "signatures" in sources else Counter()
        by_use = sorted((n for n in imported if n not in followed), key=lambda n: -uses[n])
        for name, d in self.follow_definitions([(n, sig_kinds) for n in by_use]
                                               if "signatures" in sources else [], path, defined_here):
            if n_sig >= MAX_SIGNATURES or budget - used < MIN_ROOM:
                break
            lines = self._lines(d.path)
            if lines is None:
                continue
            end = _signature_end(lines, d.line, d.end)
            before = len(out)
            offer(d.path, d.line, end, 0.0, f"signature of {name} ({d.kind})")
            n_sig += len(out) > before
        lo, hi = first - QUERY_LINES, line + 1 + exclude_after
        query = identifiers(window) if "chunks" in sources else set()
        for cid, score, shared in self.rank_chunks(query, path, (lo + 1, hi + 1)):
            c = self.index.chunk(cid)
            offer(c.path, c.start, c.end, score, "shares " + ", ".join(shared[:5]))
            if budget - used < MIN_ROOM or len(out) >= MAX_SNIPPETS:
                break
        self._cache[key] = out
        while len(self._cache) > 16:
            self._cache.popitem(last=False)
        return out


def as_entries(snippets: list[Snippet]) -> list[tuple[str, str]]:
    """(label, text) context entries for PromptBuilder: one per file (its snippets in line order,
    a `...` line between two that do not touch), the file of the most relevant snippet last (nearest
    the cursor's file)."""
    by_file: dict[str, list[Snippet]] = {}
    for s in snippets:
        by_file.setdefault(s.label, []).append(s)
    out = []
    for label in reversed(list(by_file)):          # first seen = highest priority -> last
        parts = sorted(by_file[label], key=lambda s: s.start)
        text, end = "", None
        for s in parts:
            if end is not None and s.start > end + 1:
                text += "...\n"
            text += s.text
            end = s.end
        out.append((label, text))
    return out


def _without_line(text: str, line: int) -> str:
    start = 0
    for _ in range(line):
        i = text.find("\n", start)
        if i < 0:
            return text
        start = i + 1
    end = text.find("\n", start)
    return text[:start] + ("" if end < 0 else text[end + 1:])


def _signature_end(lines: list[str], start: int, end: int) -> int:
    """The last line of a definition's header (1-based): the line that ends with `:` (Python) or holds
    `{` / `=>`, within SIGNATURE_LINES lines; decorators above the def line are part of it."""
    for i in range(start, min(end, start + SIGNATURE_LINES + 4) + 1):
        t = lines[i - 1].split("#", 1)[0].rstrip()
        if t.endswith(":") or "{" in t or "=>" in t or t.endswith(";"):
            return i
    return min(start + SIGNATURE_LINES - 1, end)


def _contains(postings, cid: int) -> bool:
    """Postings are appended in increasing chunk id order (compaction keeps the order)."""
    i = bisect_left(postings, cid)
    return i < len(postings) and postings[i] == cid


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split(os.sep), b.split(os.sep)):
        if x != y:
            break
        n += 1
    return n
