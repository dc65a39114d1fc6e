"""The fill-in-the-middle prompt and the workspace context that goes into it.

Layout (mirrors training/fim.py, suffix first so that typing at the cursor only appends):

    [bos] + for each extra file: [file_sep] + enc(path + "\\n" + content)
          + [fim_suffix] + enc(suffix) + [fim_prefix] + enc(prefix) + [fim_middle]

prefix, suffix and each context entry are tokenized on their own (special-token strings in the text
are encoded as plain text). Without FIM tokens the prompt is `[bos] + enc(prefix)`.

Token budget B (config `context_tokens`): the suffix gets up to 15 % (clipped from the right at line
boundaries), the prefix most of the rest (clipped from the left at line boundaries), extra context
at least 25 % when there is any, and the share the prefix does not use. Everything that changes
rarely comes first, and the left clip of the prefix moves in steps of CLIP_STEP lines, so that a
keystroke at the cursor changes only the tail of the prompt and the KV cache keeps the rest.

The window layout (`layout="window"`, the daemon's default for inline completions; see
PromptBuilder.build_window) lays the same pieces out so that moving the cursor keeps the KV cache too:
extra files and the file's head (as a context entry of its own) first, sized from the whole file, and
only the cursor's window (near suffix, near prefix) as FIM; a prefetch without a cursor prepares the
part before the window (`Prompt.stable_tokens`).

Extra context, in this order (stable across keystrokes): the workspace files the current file
imports (Python `import x` / `from x import y`), the other documents the editor has open (sorted by
path), files recently saved in the workspace (watched with watchdog, sorted by path). Files that
.gitignore ignores, binary files and files over the size limit are never read.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from textkit.gitignore import GitIgnore
from textkit.loops import loop_cut

log = logging.getLogger(__name__)

CLIP_STEP = 16            # lines: the prefix's left clip point moves in steps of this many lines
LAYOUTS = ("window", "contiguous")
# window layout shares of the budget (measured with scripts/prompt_layout_eval.py on 80 held-out
# single-line tasks, embedded model, budget 1024: exact match 0.150 contiguous, 0.1625 window with
# 0.40/0.30 and with 0.25/0.45; edit similarity 0.411 / 0.401 / 0.411; the smaller window prefills less
# on a move)
NEAR_SHARE = 0.25         # the prefix part of the cursor's window, at least
NEAR_SLACK = 0.125        # ... and up to this much more: its start moves in WINDOW_STEP-line steps
HEAD_SHARE = 0.35         # the file's head (its first lines), a context entry
WINDOW_STEP = 8           # lines
CURSOR_LINE_ALLOWANCE = 24  # tokens the window keeps for the cursor's (partial) line
SUFFIX_SHARE = 0.15
EXTRA_MIN_SHARE = 0.25
PREFIX_QUANTUM = 256      # tokens: the prefix's reserved share grows in these steps
MIN_ENTRY_TOKENS = 32     # smaller leftovers are not worth a context entry
MAX_ENTRIES = 8
MAX_IMPORTS = 6
MAX_RECENT = 8
MAX_WATCHED_DIRS = 16
MAX_ROOTS = 8
# recently saved files count as context only when they look like source code (not logs, data, lock files)
SOURCE_SUFFIXES = frozenset(
    ".py .pyi .pyx .ipynb .c .h .cc .cpp .hpp .cu .rs .go .java .kt .scala .js .jsx .ts .tsx .mjs .cjs .lua .rb "
    ".php .cs .swift .m .sh .bash .zsh .sql .toml .cfg .ini .yaml .yml .json .md .rst .txt .html .css .vue".split())
ROOT_MARKERS = (".git", ".hg", "pyproject.toml", "setup.py", "setup.cfg")
ALWAYS_IGNORED = (".git/", ".hg/", "__pycache__/", "node_modules/", ".venv/", "venv/", ".tox/",
                  ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/", "*.pyc", "*.pyo",
                  "*.so", "*.o", "*.a", "*.dll", "*.dylib", "*.class", "*.swp", "*~")


# -- files -------------------------------------------------------------------------------------------

def find_root(path: Path) -> Path:
    """The nearest ancestor holding .git (or another project marker); else the file's directory."""
    start = path if path.is_dir() else path.parent
    fallback = None
    for d in [start, *start.parents]:
        if (d / ".git").exists() or (d / ".hg").exists():
            return d
        if fallback is None and any((d / m).exists() for m in ROOT_MARKERS[2:]):
            fallback = d
        if d == Path.home() or d.parent == d:
            break
    return fallback or start


def read_text_file(path: Path, max_bytes: int) -> str | None:
    """The file's text, or None for a missing, binary, non-UTF-8 or too large file."""
    try:
        st = path.stat()
        if not path.is_file() or st.st_size > max_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def python_imports(text: str) -> list[tuple[int, str, list[str]]]:
    """(level, module, names) per import statement, in order. `import a.b as c` -> (0, 'a.b', [])."""
    found = []
    for m in re.finditer(r"^[ \t]*(?:import[ \t]+([\w., \t]+)|from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+\(?([\w., \t*]+))",
                         text, re.M):
        if m.group(1) is not None:
            for part in m.group(1).split(","):
                name = part.strip().split()[0] if part.strip() else ""
                if name:
                    found.append((0, name, []))
        else:
            names = [p.strip().split()[0] for p in m.group(4).split(",") if p.strip() and p.strip() != "*"]
            found.append((len(m.group(2)), m.group(3), names))
    return found


def resolve_imports(text: str, path: Path, root: Path, limit: int = MAX_IMPORTS) -> list[Path]:
    """Workspace files the document imports, in import order."""
    out: list[Path] = []
    here = path.parent

    def module_file(base: Path, dotted: str) -> Path | None:
        if not dotted:
            f = base / "__init__.py"
            return f if f.is_file() else None
        p = base.joinpath(*dotted.split("."))
        for f in (p.with_suffix(".py"), p / "__init__.py"):
            if f.is_file():
                return f
        return None

    for level, module, names in python_imports(text):
        if level:
            base = here
            for _ in range(level - 1):
                base = base.parent
            bases = [base]
        else:
            bases = [here, root, root / "src"]
        for base in bases:
            hits = []
            f = module_file(base, module)
            if f is not None:
                hits.append(f)
            for n in names:  # `from pkg import module`
                g = module_file(base, f"{module}.{n}" if module else n)
                if g is not None:
                    hits.append(g)
            if hits:
                for h in hits:
                    h = h.resolve()
                    if h != path.resolve() and h not in out and _inside(h, root):
                        out.append(h)
                break
        if len(out) >= limit:
            break
    return out[:limit]


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


# -- workspace state -----------------------------------------------------------------------------------

@dataclass
class OpenDoc:
    uri: str
    path: str
    language: str
    text: str
    owner: int = 0          # the connection that reported it (its documents go when it closes)


class Workspace:
    """Open documents, recently saved files and the roots they live in. Thread-safe: the socket side
    reports documents, watchdog reports file events, the engine thread builds prompts."""

    def __init__(self, max_file_bytes: int = 512 * 1024, observer=None):
        self.max_file_bytes = max_file_bytes
        self._lock = threading.RLock()
        self.docs: dict[str, OpenDoc] = {}
        self.recent: OrderedDict[str, float] = OrderedDict()   # path -> time seen
        self.roots: OrderedDict[Path, GitIgnore] = OrderedDict()
        self._file_cache: OrderedDict[tuple[str, float, int], str | None] = OrderedDict()
        self._observer = observer
        self._handler = None
        self._watches: OrderedDict[Path, object] = OrderedDict()
        self.events = 0

    # documents
    def set_document(self, uri: str, path: str, language: str, text: str | None, owner: int = 0) -> None:
        with self._lock:
            if text is None:
                self.docs.pop(uri, None)
            else:
                self.docs[uri] = OpenDoc(uri, path, language, text, owner)
        if path and text is not None:
            self.add_root_for(Path(path))

    def drop_owner(self, owner: int) -> None:
        with self._lock:
            for uri in [u for u, d in self.docs.items() if d.owner == owner]:
                del self.docs[uri]

    # roots and watching
    def add_root_for(self, path: Path) -> Path | None:
        """Register the workspace root of `path` (for .gitignore and labels) and watch its directory."""
        try:
            path = path.expanduser().resolve()
        except OSError:
            return None
        if not path.parent.is_dir():
            return None
        root = find_root(path)
        with self._lock:
            if root in self.roots:
                self.roots.move_to_end(root)
            else:
                self.roots[root] = GitIgnore(root, ALWAYS_IGNORED)
                while len(self.roots) > MAX_ROOTS:
                    self.roots.popitem(last=False)
        self._watch(path.parent)
        return root

    def root_of(self, path: Path) -> tuple[Path, GitIgnore] | None:
        with self._lock:
            best = None
            for root, gi in self.roots.items():
                if _inside(path, root) and (best is None or len(root.parts) > len(best[0].parts)):
                    best = (root, gi)
            return best

    def _watch(self, d: Path) -> None:
        """Watch one directory (not recursive: one inotify watch and one watchdog thread per directory,
        so only the directories of the documents seen, at most MAX_WATCHED_DIRS, least recent dropped)."""
        if self._observer is None:
            return
        with self._lock:
            if d in self._watches:
                self._watches.move_to_end(d)
                return
            if self._handler is None:
                self._handler = _make_handler(self)
            try:
                self._watches[d] = self._observer.schedule(self._handler, str(d), recursive=False)
            except Exception as e:  # noqa: BLE001 - inotify limits, permissions
                log.warning("cannot watch %s: %s", d, e)
                return
            while len(self._watches) > MAX_WATCHED_DIRS:
                _, w = self._watches.popitem(last=False)
                try:
                    self._observer.unschedule(w)
                except Exception:  # noqa: BLE001
                    pass

    def touch(self, path: Path) -> None:
        """A file was written: remember it as recently edited (if it is a file we would read)."""
        r = self.root_of(path)
        if r is None:
            return
        root, gi = r
        if path.suffix.lower() not in SOURCE_SUFFIXES or path.name.startswith(".#") or gi.ignored(path, False):
            return
        with self._lock:
            self.events += 1
            self.recent[str(path)] = time.time()
            self.recent.move_to_end(str(path))
            while len(self.recent) > MAX_RECENT:
                self.recent.popitem(last=False)

    def read(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_mtime, st.st_size)
        with self._lock:
            if key in self._file_cache:
                self._file_cache.move_to_end(key)
                return self._file_cache[key]
        text = read_text_file(path, self.max_file_bytes)
        with self._lock:
            self._file_cache[key] = text
            while len(self._file_cache) > 64:
                self._file_cache.popitem(last=False)
        return text

    def close(self) -> None:
        with self._lock:
            watches, self._watches = list(self._watches.values()), OrderedDict()
        for w in watches:
            try:
                self._observer.unschedule(w)
            except Exception:  # noqa: BLE001
                pass

    # the extra context of one request
    def extra_files(self, path: str, uri: str, text: str) -> list[tuple[str, str]]:
        """(label, content) entries for a completion in `path`, most stable first."""
        entries: list[tuple[str, str]] = []
        seen: set[str] = set()
        cur = None
        root = None
        if path:
            try:
                cur = Path(path).expanduser().resolve()
            except OSError:
                cur = None
        if cur is not None:
            root = self.add_root_for(cur)
            seen.add(str(cur))

        def label(p: Path) -> str:
            if root is not None and _inside(p, root):
                return p.relative_to(root).as_posix()
            return p.name

        def usable(p: Path) -> bool:
            """Not yet in, in the current file's project, not ignored by its .gitignore."""
            if str(p) in seen or (root is not None and not _inside(p, root)):
                return False
            owner = self.root_of(p)
            return owner is None or not owner[1].ignored(p, False)

        # 1. imports of the current file
        if cur is not None and root is not None and cur.suffix in (".py", ".pyi", ""):
            for f in resolve_imports(text, cur, root):
                if usable(f):
                    content = self._open_text(f) or self.read(f)
                    if content and content.strip():
                        entries.append((label(f), content))
                        seen.add(str(f))
        # 2. other open documents
        with self._lock:
            docs = sorted(self.docs.values(), key=lambda d: d.path or d.uri)
        for d in docs:
            if d.uri == uri:
                continue
            p = Path(d.path).expanduser() if d.path else None
            if p is not None:
                try:
                    p = p.resolve()
                except OSError:
                    pass
                if not usable(p):
                    continue
                seen.add(str(p))
            if (not d.text.strip() or len(d.text.encode("utf-8", "replace")) > self.max_file_bytes
                    or "\0" in d.text[:8192]):
                continue
            entries.append((label(p) if p is not None else d.uri.rsplit("/", 1)[-1], d.text))
        # 3. recently saved files
        with self._lock:
            recent = sorted(self.recent)
        for s in recent:
            p = Path(s)
            if not usable(p):
                continue
            content = self.read(p)
            if content and content.strip():
                entries.append((label(p), content))
                seen.add(s)
        return entries[:MAX_ENTRIES]

    def label_of(self, path: str) -> str:
        """The file's label in a prompt: its path relative to its workspace root, else its name."""
        if not path:
            return ""
        try:
            p = Path(path).expanduser().resolve()
        except OSError:
            return Path(path).name
        r = self.root_of(p)
        return p.relative_to(r[0]).as_posix() if r is not None else p.name

    def _open_text(self, p: Path) -> str | None:
        with self._lock:
            for d in self.docs.values():
                if d.path and Path(d.path).expanduser().resolve() == p:
                    return d.text
        return None


def _make_handler(ws: "Workspace"):
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            if event.is_directory or event.event_type not in ("modified", "created", "moved", "closed"):
                return
            p = getattr(event, "dest_path", "") or event.src_path
            if isinstance(p, bytes):
                p = os.fsdecode(p)
            try:
                ws.touch(Path(p))
            except Exception:  # noqa: BLE001 - never kill the observer thread
                log.exception("workspace event %s", p)

    return Handler()


def protect_special_tokens(tok) -> None:
    """Make special-token strings inside source text encode as plain text (the `tokenizers` flag is
    not stored in tokenizer.json; see training/tokenizer.py). Otherwise a file that mentions
    `<|endoftext|>` would put a real EOS into the prompt."""
    inner = getattr(tok, "_tok", None)
    if inner is not None and hasattr(inner, "encode_special_tokens"):
        inner.encode_special_tokens = True


# -- the prompt -----------------------------------------------------------------------------------------

@dataclass
class Prompt:
    ids: list[int]
    prefix_tokens: int = 0
    suffix_tokens: int = 0
    context_tokens: int = 0
    context_files: list[str] = field(default_factory=list)
    prefix_clipped_lines: int = 0
    fim: bool = True
    # the clipped pieces, as token ids of this tokenizer, for a backend that lays them out itself
    prefix_ids: list[int] = field(default_factory=list)
    suffix_ids: list[int] = field(default_factory=list)
    entry_ids: list[list[int]] = field(default_factory=list)   # enc(label + "\n" + content) per file
    stable_tokens: int = 0      # the leading ids that do not depend on the cursor (what a prefetch
                                # without a cursor prepares)


def _split_lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


class PromptBuilder:
    """Builds prompts for one tokenizer, with a cache of per-line token counts."""

    def __init__(self, tok):
        self.tok = tok
        self._counts: dict[str, int] = {}

    def _line_counts(self, lines: list[str]) -> list[int]:
        missing = [ln for ln in set(lines) if ln not in self._counts]
        if missing:
            if len(self._counts) > 100_000:
                self._counts.clear()
            inner = getattr(self.tok, "_tok", None)
            if inner is not None and len(missing) > 8:
                encs = inner.encode_batch(missing, add_special_tokens=False)
                for ln, e in zip(missing, encs):
                    self._counts[ln] = len(e.ids)
            else:
                for ln in missing:
                    self._counts[ln] = len(self.tok.encode(ln))
        return [self._counts[ln] for ln in lines]

    def clip_prefix(self, prefix: str, budget: int) -> tuple[list[int], int]:
        """enc(prefix) within `budget` tokens, dropping whole lines from the left; the clip point moves
        in steps of CLIP_STEP lines (stable while typing). Returns (ids, lines dropped)."""
        if budget <= 0:
            return [], 0
        lines = _split_lines(prefix)
        n = len(lines)
        # walk back from the cursor until the budget is exceeded (only lines near the cursor are counted)
        total, c_min = 0, 0
        i = n - 1
        chunk = 64
        while i >= 0:
            lo = max(0, i - chunk + 1)
            counts = self._line_counts(lines[lo:i + 1])
            stop = False
            for j in range(i, lo - 1, -1):
                total += counts[j - lo]
                if total > budget:
                    c_min = j + 1
                    stop = True
                    break
            if stop:
                break
            i = lo - 1
        if c_min == 0:
            ids = self.tok.encode(prefix)
            if len(ids) <= budget:
                return ids, 0
            c_min = 1
        c = min(-(-c_min // CLIP_STEP) * CLIP_STEP, max(n - 1, 0))
        if sum(self._line_counts(lines[c:])) < budget // 2:
            c = c_min
        c = min(c, max(n - 1, 0))
        ids = self.tok.encode("".join(lines[c:]))
        while len(ids) > budget and c < n - 1:
            c += 1
            ids = self.tok.encode("".join(lines[c:]))
        if len(ids) > budget:      # one enormous line: keep its end
            ids = ids[-budget:]
        return ids, c

    def clip_head(self, text: str, budget: int) -> list[int]:
        """enc(text) within `budget` tokens, dropping whole lines from the right."""
        if budget <= 0 or not text:
            return []
        lines = _split_lines(text)
        total, k, chunk = 0, 0, 64
        over = False
        while k < len(lines) and not over:           # count only the lines that can fit
            counts = self._line_counts(lines[k:k + chunk])
            for cnt in counts:
                if total + cnt > budget:
                    over = True
                    break
                total += cnt
                k += 1
        if not over:
            ids = self.tok.encode(text)
            if len(ids) <= budget:
                return ids
        ids = self.tok.encode("".join(lines[:k]))
        while len(ids) > budget and k > 0:
            k -= 1
            ids = self.tok.encode("".join(lines[:k]))
        if k == 0 and not ids:     # the first line alone is too long: keep its start
            ids = self.tok.encode(lines[0])[:budget]
        return ids

    def build(self, prefix: str, suffix: str, budget: int, extra: list[tuple[str, str]] = (),
              fim: bool | None = None, layout: str = "contiguous", label: str = "") -> Prompt:
        """The prompt within `budget` tokens. `fim` (default: the tokenizer has FIM tokens) chooses the
        budgeting with suffix and extra context; `ids` holds this tokenizer's layout of the pieces
        (prefix only when it has no FIM tokens), the pieces themselves are kept for other layouts
        (the remote backend's). `layout="window"` is build_window (FIM tokenizers with a file separator)."""
        tok = self.tok
        use_fim = tok.has_fim if fim is None else fim
        if layout == "window" and use_fim and tok.has_fim and tok.fim.get("file_sep") is not None:
            return self.build_window(prefix, suffix, budget, extra, label)
        if not use_fim:
            ids, clipped = self.clip_prefix(prefix, budget - 1)
            return Prompt([tok.bos_id] + ids, prefix_tokens=len(ids), prefix_clipped_lines=clipped, fim=False,
                          prefix_ids=ids)
        overhead = 4
        suffix_ids = self.clip_head(suffix, int(budget * SUFFIX_SHARE))
        e_min = int(budget * EXTRA_MIN_SHARE) if extra else 0
        p_max = max(budget - overhead - len(suffix_ids) - e_min, 16)
        prefix_ids, clipped = self.clip_prefix(prefix, p_max)
        p_reserved = min(p_max, -(-(len(prefix_ids) + 1) // PREFIX_QUANTUM) * PREFIX_QUANTUM)
        extra_budget = budget - overhead - len(suffix_ids) - p_reserved
        sep = tok.fim.get("file_sep")
        # a FIM tokenizer without a file separator has no way to mark another file: no extra context
        ctx, files, entries = self._extra(extra if (sep is not None or not tok.has_fim) else (), extra_budget, sep)
        if tok.has_fim:
            ids = ([tok.bos_id] + ctx + [tok.fim["suffix"]] + suffix_ids + [tok.fim["prefix"]] + prefix_ids
                   + [tok.fim["middle"]])
        else:  # FIM budgeting asked for a tokenizer without FIM tokens: its own layout is the prefix
            ids = [tok.bos_id] + prefix_ids
        return Prompt(ids, prefix_tokens=len(prefix_ids), suffix_tokens=len(suffix_ids),
                      context_tokens=len(ctx), context_files=files, prefix_clipped_lines=clipped,
                      prefix_ids=prefix_ids, suffix_ids=suffix_ids, entry_ids=entries,
                      stable_tokens=1 + len(ctx))

    def build_window(self, prefix: str, suffix: str, budget: int, extra: list[tuple[str, str]] = (),
                     label: str = "") -> Prompt:
        """The window layout: what does not depend on the cursor first, the cursor's window last.

            [bos] + extra files + [file_sep] enc(label + "\n" + head)
                  + [fim_suffix] enc(near suffix) + [fim_prefix] enc(near prefix) + [fim_middle]

        The near prefix is the last lines before the cursor (NEAR_SHARE of the budget and up to
        NEAR_SLACK more: its first line is a multiple of WINDOW_STEP, so that it stays put while the
        user types and presses Enter), the near suffix the first lines after it (SUFFIX_SHARE). The head is the
        file's first lines within HEAD_SHARE, stopped where the near prefix begins; its size and the
        extra files' budget are computed from the whole file, not the cursor, so that everything up
        to the file's FIM part stays the same while the cursor moves through the file (a move then
        prefills only the window; a prefetch without a cursor prepares the rest). The head is laid
        out as a context entry of its own file, which is how the model saw context in training
        (training/fim.py)."""
        tok = self.tok
        sep = tok.fim["file_sep"]
        overhead = 5
        suffix_ids = self.clip_head(suffix, int(budget * SUFFIX_SHARE))
        near_ids, c = self.clip_window(prefix, int(budget * NEAR_SHARE), int(budget * NEAR_SLACK))
        lines = _split_lines(prefix)
        head_label = f"{label or 'file'}\n"
        label_tokens = len(tok.encode(head_label))
        head_max = int(budget * HEAD_SHARE) - label_tokens - 1
        full_head, k = self.head_lines(prefix + suffix, head_max) if c > 0 else ([], 0)
        e_budget = (budget - overhead - int(budget * SUFFIX_SHARE) - int(budget * NEAR_SHARE)
                    - int(budget * NEAR_SLACK) - int(budget * HEAD_SHARE) + max(head_max - len(full_head), 0))
        ctx, files, _ = self._extra(extra, e_budget, sep)
        head: list[int] = []
        if c > 0 and k > 0:
            head = full_head if c >= k else self.head_lines("".join(lines[:c]), head_max)[0]
            if head:
                head = [sep] + tok.encode(head_label) + head
        ids = ([tok.bos_id] + ctx + head + [tok.fim["suffix"]] + suffix_ids + [tok.fim["prefix"]] + near_ids
               + [tok.fim["middle"]])
        return Prompt(ids, prefix_tokens=len(near_ids), suffix_tokens=len(suffix_ids),
                      context_tokens=len(ctx) + len(head), context_files=files, prefix_clipped_lines=c,
                      stable_tokens=1 + len(ctx) + len(head))

    def clip_window(self, prefix: str, budget: int, slack: int) -> tuple[list[int], int]:
        """enc(the last lines of prefix) from a first line that is a multiple of WINDOW_STEP, within
        budget + slack tokens: the fewest lines that hold `budget` tokens, rounded to the step below
        (more lines, so the start stays where it was while the prefix grows at the cursor). Falls
        back to clip_prefix's clip when the step's lines do not fit the slack. Returns (ids, first line)."""
        ids, c_min = self.clip_prefix(prefix, budget)
        if c_min == 0:
            return ids, 0
        lines = _split_lines(prefix)
        # where `budget` tokens end, counted over whole lines only (the cursor's line gets a fixed
        # allowance), so that typing within a line never moves the start
        whole = len(lines) - (0 if prefix.endswith("\n") else 1)
        counts = self._line_counts(lines[:whole])
        total, i = CURSOR_LINE_ALLOWANCE, whole - 1
        while i >= 0 and total + counts[i] <= budget:
            total += counts[i]
            i -= 1
        c_exact = i + 1
        c = (c_exact // WINDOW_STEP) * WINDOW_STEP
        if sum(counts[c:]) <= budget + slack - CURSOR_LINE_ALLOWANCE:
            exact = self.tok.encode("".join(lines[c:]))
            if len(exact) <= budget + slack:
                return exact, c
        return ids, c_min

    def head_lines(self, text: str, budget: int) -> tuple[list[int], int]:
        """(enc(the first k lines of text), k) for the most whole lines that fit `budget` tokens."""
        lines = _split_lines(text)
        total, k, chunk = 0, 0, 64
        while k < len(lines):
            counts = self._line_counts(lines[k:k + chunk])
            for cnt in counts:
                if total + cnt > budget:
                    break
                total += cnt
                k += 1
            else:
                continue
            break
        ids = self.tok.encode("".join(lines[:k]))
        while len(ids) > budget and k > 0:
            k -= 1
            ids = self.tok.encode("".join(lines[:k]))
        return ids, k

    def _extra(self, extra, extra_budget: int, sep: int | None) -> tuple[list[int], list[str], list[list[int]]]:
        """The extra files within `extra_budget` tokens, in order: (ids, labels, each entry's ids). An
        entry is enc(label + "\n" + content), clipped at line boundaries, behind `sep` when there is one."""
        ctx: list[int] = []
        files: list[str] = []
        entries: list[list[int]] = []
        if extra:
            per_entry = max(extra_budget // 2, MIN_ENTRY_TOKENS)
            for label, content in extra:
                left = extra_budget - len(ctx)
                if left < MIN_ENTRY_TOKENS:
                    break
                if not content.endswith("\n"):
                    content += "\n"
                entry = self.clip_head(f"{label}\n{content}", min(left, per_entry) - 1)
                if len(entry) < MIN_ENTRY_TOKENS // 2:
                    continue
                ctx += ([sep] if sep is not None else []) + entry
                entries.append(entry)
                files.append(label)
        return ctx, files, entries


# -- stop rules ----------------------------------------------------------------------------------------

def text_cut(text: str, max_lines: int = 0, stops=(), before: str | None = None) -> int | None:
    """Where the completion text ends, or None to go on: before the newline that completes the
    `max_lines`-th line (lines count from the first non-whitespace character), before a stop string,
    or (with `before`, the text before the cursor) where it starts repeating itself (loops.py)."""
    cut = None
    if before is not None:
        cut = loop_cut(text, before)
    for s in stops:
        if s:
            i = text.find(s)
            if i >= 0 and (cut is None or i < cut):
                cut = i
    if max_lines > 0:
        m = re.search(r"\S", text)
        if m is not None:
            pos, count = m.start(), 0
            while True:
                j = text.find("\n", pos)
                if j < 0:
                    break
                count += 1
                if count >= max_lines:
                    if cut is None or j < cut:
                        cut = j
                    break
                pos = j + 1
    return cut


def finish_text(text: str, stop_reason: str, max_lines: int = 0, stops=(), before: str | None = None) -> str:
    """The final completion text: cut exactly at the stop rule (and the loop guard, with `before`);
    after a deadline, at the last complete line. Never ends with the newline that ended its last line."""
    cut = text_cut(text, max_lines, stops, before)
    if cut is None and stop_reason == "deadline":
        cut = max(text.rfind("\n"), 0)
    if cut is None:
        return text
    at_newline = cut < len(text) and text[cut] == "\n"
    out = text[:cut]
    if at_newline and out.endswith("\r"):
        out = out[:-1]
    return out
