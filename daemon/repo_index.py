"""The workspace index: every source file of one workspace root cut into chunks, the identifiers of
each chunk (postings for ranking) and the symbols each file defines, kept current from file events.
Torch-free and model-free; nothing leaves the machine. Retrieval (daemon/retrieval.py) ranks with it.

What is indexed: files under the root with a suffix in INDEX_SUFFIXES that the root's .gitignore
rules (textkit/gitignore.py, plus the always-ignored names the workspace uses) do not ignore, up to
`max_file_bytes`, valid UTF-8 without NUL bytes. Binary, huge, unreadable, non-UTF-8 files, files
that vanish while being read, broken symlinks and symlink loops are skipped with a debug log line;
nothing is raised out of the index. Chunks and definitions come from daemon/repo_chunks.py: the bulk
build scans Python by lines (9x cheaper than `ast`, which was half of its CPU time), a single
`update()` (a saved file) parses it.

Memory: chunk text is not kept (retrieval reads the few lines it shows back from disk, checking the
file has not changed since it was indexed). What is kept: per chunk four small integers in
`array('I')` columns (file, first line, last line, identifier count), per definition four, per
identifier a postings `array('I')` of chunk ids. Bounds (`Limits`): at most `max_files` files,
`max_chunks` chunks and `max_postings` (identifier, chunk) pairs; past a bound further files are
skipped (`stats().truncated`) and the build stops walking (a 100k-file workspace costs no more than
the bound). With the defaults (20k files, 400k chunks, 16M pairs) a 10k-file Python tree took an
estimated 104 MB (peak RSS +145 MB); docs/repo_context.md has the measured figures.

Updates: `update(path)` re-indexes one file (a few ms), `remove(path)` drops a file or every file
under a directory, `move(src, dst)` both; `IndexEventHandler` calls them from watchdog events, so a
saved file is searchable as soon as the event arrives. A changed file gets a new file id; the old
id's chunks and definitions are dead (skipped by readers) until a compaction rewrites the columns
(when dead chunks outnumber live ones). A .gitignore change starts a new background build, which
also drops the files it no longer sees.

Background build: `start()` walks the root in a daemon thread. `os.nice` would lower the whole
process (the daemon's engine thread too), so the thread paces itself instead: it works for
`slice_s` (40 ms), then sleeps `pause_s` (10 ms): at most 80 % of one core, the GIL handed back
every slice (and within a slice at the interpreter's switch interval, except during one file's
parse, a few ms: large Python files are scanned, not parsed). While `hold` is set (the daemon sets
it while a completion runs) the build waits. Files it indexes are searchable at once. Thread-safe: one lock
guards the columns; readers (retrieval) hold it while they score.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from textkit.gitignore import GitIgnore
from daemon.repo_chunks import Def, chunk_file, identifiers, split_lines

log = logging.getLogger(__name__)

INDEX_SUFFIXES = frozenset(
    ".py .pyi .pyx .c .h .cc .cpp .cxx .hh .hpp .cu .cuh .rs .go .java .kt .kts .scala .js .jsx .ts .tsx "
    ".mjs .cjs .lua .rb .php .cs .swift .m .mm .sh .bash .zsh .sql .vue .svelte .ex .exs .erl .hs .ml "
    ".mli .clj .dart .jl .r .pl .pm .zig .nim .toml .cfg .ini .yaml .yml .md .rst".split())
DEF_KINDS = ("function", "class", "method", "variable", "definition")
ALWAYS_IGNORED = (".git/", ".hg/", ".svn/", "__pycache__/", "node_modules/", ".venv/", "venv/", ".tox/",
                  ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/", "build/", "dist/",
                  "target/", "*.min.js", "*~", ".#*")


@dataclass(frozen=True)
class Limits:
    max_files: int = 20_000
    max_chunks: int = 400_000
    max_postings: int = 16_000_000
    max_file_bytes: int = 512 * 1024


@dataclass(frozen=True)
class Chunk:
    id: int
    path: str           # absolute
    start: int          # first line, 1-based
    end: int            # last line, inclusive
    size: int           # distinct identifiers


@dataclass(frozen=True)
class Definition:
    name: str
    path: str
    line: int
    end: int
    kind: str


@dataclass
class IndexStats:
    root: str
    files: int = 0
    chunks: int = 0
    definitions: int = 0
    identifiers: int = 0
    postings: int = 0
    memory_bytes: int = 0
    build_seconds: float = 0.0
    building: bool = False
    truncated: bool = False
    skipped: dict[str, int] = field(default_factory=dict)


class RepoIndex:
    """The index of one workspace root (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, ignore: GitIgnore | None = None, limits: Limits = Limits()):
        self.root = Path(root).resolve()
        self.ignore = ignore if ignore is not None else GitIgnore(self.root, ALWAYS_IGNORED)
        self.limits = limits
        self.lock = threading.RLock()
        # files: path -> live file id; per id: path, (mtime_ns, size), first chunk, chunk count
        self._fid: dict[str, int] = {}
        self._paths: list[str] = []
        self._meta: list[tuple[int, int]] = []
        self._live = bytearray()
        self._range: list[tuple[int, int, int, int]] = []   # first chunk, chunks, first definition, definitions
        # chunk columns
        self._c_file = array("I")
        self._c_start = array("I")
        self._c_end = array("I")
        self._c_size = array("I")
        self.postings: dict[str, array] = {}
        # definition columns and name -> definition ids
        self._d_file = array("I")
        self._d_line = array("I")
        self._d_end = array("I")
        self._d_kind = bytearray()
        self._defs: dict[str, array] = {}
        self._live_chunks = 0
        self._live_defs = 0
        self._dead_chunks = 0
        self._n_postings = 0
        self._size_total = 0          # sum of live chunk sizes (for the mean)
        self.truncated = False
        self.skipped: dict[str, int] = {}
        self.build_seconds = 0.0
        self.generation = 0           # bumped on every change (a reader's cache key)
        self._memory = (-1, 0)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rebuild = threading.Event()
        self.hold = threading.Event()   # set: the background build waits (a completion is running)

    # -- reading ------------------------------------------------------------------------------------

    @property
    def num_chunks(self) -> int:
        return self._live_chunks

    def mean_chunk_size(self) -> float:
        return self._size_total / self._live_chunks if self._live_chunks else 0.0

    def chunk_live(self, cid: int) -> bool:
        return cid < len(self._c_file) and self._live[self._c_file[cid]] == 1

    def chunk(self, cid: int) -> Chunk:
        return Chunk(cid, self._paths[self._c_file[cid]], self._c_start[cid], self._c_end[cid], self._c_size[cid])

    def chunk_size(self, cid: int) -> int:
        return self._c_size[cid]

    def chunk_path(self, cid: int) -> str:
        return self._paths[self._c_file[cid]]

    def files(self) -> list[str]:
        with self.lock:
            return sorted(self._fid)

    def chunks_of(self, path: str) -> list[Chunk]:
        with self.lock:
            fid = self._fid.get(str(path))
            if fid is None:
                return []
            c0, nc = self._range[fid][:2]
            return [self.chunk(c) for c in range(c0, c0 + nc)]

    def definitions(self, name: str) -> list[Definition]:
        """Live definitions of `name` (sorted by path and line)."""
        with self.lock:
            ids = self._defs.get(name)
            if not ids:
                return []
            out = [Definition(name, self._paths[self._d_file[d]], self._d_line[d], self._d_end[d],
                              DEF_KINDS[self._d_kind[d]])
                   for d in ids if self._live[self._d_file[d]] == 1]
        return sorted(out, key=lambda d: (d.path, d.line))

    def is_current(self, path: str) -> bool:
        """The file is indexed and unchanged on disk since."""
        with self.lock:
            fid = self._fid.get(path)
            meta = self._meta[fid] if fid is not None else None
        if meta is None:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_mtime_ns, st.st_size) == meta

    # -- changing -----------------------------------------------------------------------------------

    def _skip(self, reason: str, path: str, detail: object = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        log.debug("repo index: skip %s (%s%s)", path, reason, f": {detail}" if detail else "")

    def _wanted(self, path: str) -> bool:
        p = Path(path)
        if p.suffix.lower() not in INDEX_SUFFIXES or not _inside(path, str(self.root)):
            return False
        try:
            return not self.ignore.ignored(p, False)
        except Exception as e:  # noqa: BLE001 - a broken .gitignore must not stop indexing
            log.debug("repo index: ignore rules failed on %s: %s", path, e)
            return True

    def update(self, path: str | os.PathLike, st: os.stat_result | None = None, parse: bool = True) -> bool:
        """(Re-)index one file; a file that is gone, ignored or unreadable is dropped. True when the
        file is in the index afterwards. `parse`: Python through `ast` (a saved file: exact), else by
        the line scan (the bulk build: see chunk_file)."""
        try:
            path = os.path.abspath(os.fspath(path))
            if not self._wanted(path):
                self._drop(path)
                return False
            if st is None:
                try:
                    st = os.stat(path)
                except OSError as e:
                    if self._fid.get(path) is not None or not isinstance(e, FileNotFoundError):
                        self._skip("vanished" if isinstance(e, FileNotFoundError) else "unreadable", path, e)
                    self._drop(path)
                    return False
            if not stat_mod.S_ISREG(st.st_mode):
                self._drop(path)
                return False
            meta = (st.st_mtime_ns, st.st_size)
            with self.lock:
                fid = self._fid.get(path)
                if fid is not None and self._meta[fid] == meta:
                    return True
            if st.st_size > self.limits.max_file_bytes:
                self._skip("too large", path, st.st_size)
                self._drop(path)
                return False
            text = _read_text(path, self.limits.max_file_bytes)
            if isinstance(text, tuple):
                self._skip(text[0], path, text[1])
                self._drop(path)
                return False
            spans, defs = chunk_file(path, text, parse)
            lines = split_lines(text)
            tokens = [identifiers("\n".join(lines[s.start - 1:s.end])) for s in spans]
            return self._insert(path, meta, spans, tokens, defs)
        except Exception as e:  # noqa: BLE001 - never an exception out of the index
            log.debug("repo index: failed on %s: %r", path, e)
            self.skipped["error"] = self.skipped.get("error", 0) + 1
            return False

    def _insert(self, path: str, meta, spans, tokens: list[set[str]], defs: list[Def]) -> bool:
        lim = self.limits
        with self.lock:
            old = self._fid.get(path)
            n_new = sum(len(t) for t in tokens)
            if old is None and (len(self._fid) >= lim.max_files or self._live_chunks + len(spans) > lim.max_chunks
                                or self._n_postings + n_new > lim.max_postings):
                if not self.truncated:
                    log.info("repo index of %s: limit reached (%s); further files are skipped", self.root, lim)
                self.truncated = True
                self._skip("limit", path)
                return False
            if old is not None:
                self._kill(old)
            fid = len(self._paths)
            self._paths.append(path)
            self._meta.append(meta)
            self._live.append(1)
            self._fid[path] = fid
            base = len(self._c_file)
            self._range.append((base, len(spans), len(self._d_file), len(defs)))
            self._c_file.extend([fid] * len(spans))
            self._c_start.extend([span.start for span in spans])
            self._c_end.extend([span.end for span in spans])
            self._c_size.extend([len(toks) for toks in tokens])
            self._size_total += n_new
            postings, get = self.postings, self.postings.get
            for cid, toks in enumerate(tokens, base):
                for t in toks:
                    p = get(t)
                    if p is None:
                        postings[t] = p = array("I")
                    p.append(cid)
            self._n_postings += n_new
            self._live_chunks += len(spans)
            for d in defs:
                did = len(self._d_file)
                self._d_file.append(fid)
                self._d_line.append(d.line)
                self._d_end.append(d.end)
                self._d_kind.append(DEF_KINDS.index(d.kind))
                ids = self._defs.get(d.name)
                if ids is None:
                    self._defs[d.name] = ids = array("I")
                ids.append(did)
            self._live_defs += len(defs)
            self.generation += 1
            if self._dead_chunks > max(self._live_chunks, 20_000):
                self._compact()
        return True

    def _kill(self, fid: int) -> None:
        """Mark a file id dead (its chunks and definitions are skipped from now on)."""
        self._live[fid] = 0
        del self._fid[self._paths[fid]]
        c0, n, _, nd = self._range[fid]
        for c in range(c0, c0 + n):
            self._n_postings -= self._c_size[c]
            self._size_total -= self._c_size[c]
        self._live_chunks -= n
        self._dead_chunks += n
        self._live_defs -= nd
        self.generation += 1

    def _drop(self, path: str) -> None:
        with self.lock:
            fid = self._fid.get(path)
            if fid is not None:
                self._kill(fid)

    def remove(self, path: str | os.PathLike) -> int:
        """Drop a file, or every file under a directory. Returns how many files went."""
        path = os.path.abspath(os.fspath(path))
        prefix = path.rstrip(os.sep) + os.sep
        with self.lock:
            gone = [p for p in self._fid if p == path or p.startswith(prefix)]
            for p in gone:
                self._kill(self._fid[p])
        return len(gone)

    def move(self, src: str | os.PathLike, dst: str | os.PathLike) -> None:
        """A file or directory moved (an editor's save through a temporary file is one too)."""
        self.remove(src)
        dst = os.path.abspath(os.fspath(dst))
        if os.path.isdir(dst):
            for p, st in self._walk(dst):
                self.update(p, st)
        else:
            self.update(dst)

    def _compact(self) -> None:
        """Rewrite the columns without dead files' chunks and definitions (ids change)."""
        t0 = time.perf_counter()
        remap = array("i", [-1]) * len(self._c_file)
        cf, cs, ce, cz = array("I"), array("I"), array("I"), array("I")
        for c in range(len(self._c_file)):
            if self._live[self._c_file[c]]:
                remap[c] = len(cf)
                cf.append(self._c_file[c])
                cs.append(self._c_start[c])
                ce.append(self._c_end[c])
                cz.append(self._c_size[c])
        postings = {}
        for t, ids in self.postings.items():
            kept = array("I", [remap[c] for c in ids if remap[c] >= 0])
            if kept:
                postings[t] = kept
        dmap = {}
        df, dl, de, dk = array("I"), array("I"), array("I"), bytearray()
        for d in range(len(self._d_file)):
            if self._live[self._d_file[d]]:
                dmap[d] = len(df)
                df.append(self._d_file[d])
                dl.append(self._d_line[d])
                de.append(self._d_end[d])
                dk.append(self._d_kind[d])
        defs = {}
        for name, ids in self._defs.items():
            kept = array("I", [dmap[d] for d in ids if d in dmap])
            if kept:
                defs[name] = kept
        ranges = list(self._range)
        for fid in self._fid.values():
            c0, nc, d0, nd = ranges[fid]
            ranges[fid] = (remap[c0] if nc else 0, nc, dmap[d0] if nd else 0, nd)
        self._range = ranges
        self._c_file, self._c_start, self._c_end, self._c_size, self.postings = cf, cs, ce, cz, postings
        self._d_file, self._d_line, self._d_end, self._d_kind, self._defs = df, dl, de, dk, defs
        self._dead_chunks = 0
        log.debug("repo index %s: compacted in %.3f s", self.root, time.perf_counter() - t0)

    # -- building -----------------------------------------------------------------------------------

    def _walk(self, top: str):
        """(path, stat) of the candidate files under `top`, in a fixed order; ignored directories are
        not entered, each directory is entered once (symlink loops end there)."""
        seen_dirs: set[tuple[int, int]] = set()
        seen_files: set[tuple[int, int]] = set()
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                st = os.stat(d)
            except OSError as e:
                self._skip("unreadable directory", d, e)
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                self._skip("symlink loop", d)
                continue
            seen_dirs.add(key)
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self._skip("unreadable directory", d, e)
                continue
            subdirs = []
            for e in entries:
                try:
                    is_dir = e.is_dir()          # follows symlinks; a broken link is neither
                    if is_dir:
                        if not self.ignore.ignored(e.path, True):
                            subdirs.append(e.path)
                        continue
                    if not e.is_file():
                        if e.is_symlink():
                            self._skip("broken symlink", e.path)
                        continue
                    if os.path.splitext(e.name)[1].lower() not in INDEX_SUFFIXES:
                        continue
                    fst = e.stat()
                    fkey = (fst.st_dev, fst.st_ino)
                    if fkey in seen_files:
                        self._skip("duplicate link", e.path)
                        continue
                    seen_files.add(fkey)
                    yield e.path, fst
                except OSError as err:
                    self._skip("vanished", e.path, err)
            stack.extend(reversed(subdirs))

    def build(self, slice_s: float = 0.0, pause_s: float = 0.0) -> float:
        """Index every file under the root now (in this thread), then drop the files no longer seen.
        With slice_s > 0, sleep pause_s after every slice_s of work. Returns the seconds it took."""
        t0 = time.perf_counter()
        slice_t0 = time.perf_counter()
        seen: set[str] = set()
        self.truncated = False
        for path, st in self._walk(str(self.root)):
            if self._stop.is_set():
                return time.perf_counter() - t0
            if self.update(path, st, parse=False):
                seen.add(path)
            elif self.truncated:          # full: walking the rest of a huge tree would only cost time
                break
            if slice_s and time.perf_counter() - slice_t0 > slice_s:
                time.sleep(pause_s)
                waited = 0.0
                while self.hold.is_set() and not self._stop.is_set() and waited < 10.0:
                    time.sleep(pause_s)
                    waited += pause_s
                slice_t0 = time.perf_counter()
        if not self.truncated:
            with self.lock:
                for p in [p for p in self._fid if p not in seen]:
                    self._kill(self._fid[p])
        self.build_seconds = time.perf_counter() - t0
        log.info("repo index %s: %d files, %d chunks in %.1f s", self.root, len(self._fid), self._live_chunks,
                 self.build_seconds)
        return self.build_seconds

    def start(self, slice_s: float = 0.04, pause_s: float = 0.01) -> None:
        """Build in a background thread (paced: see the module docstring); a call while one runs asks
        it to walk again once it is done."""
        with self.lock:
            if self._thread is not None and self._thread.is_alive():
                self._rebuild.set()
                return
            self._stop.clear()

            def run():
                try:
                    while True:
                        self._rebuild.clear()
                        self.build(slice_s, pause_s)
                        if self._stop.is_set() or not self._rebuild.is_set():
                            break
                except Exception:  # noqa: BLE001
                    log.exception("repo index build of %s", self.root)

            self._thread = threading.Thread(target=run, name=f"repo-index:{self.root.name}", daemon=True)
            self._thread.start()

    @property
    def building(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.building

    def close(self) -> None:
        self._stop.set()
        self.wait(5)

    # -- status -------------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """The index's own size, estimated: the columns, the postings and definition maps (their
        dict slots, keys and arrays) and the file table (computed once per index generation)."""
        with self.lock:
            if self._memory[0] == self.generation:
                return self._memory[1]
            n = sum(a.buffer_info()[1] * a.itemsize + 64 for a in
                    (self._c_file, self._c_start, self._c_end, self._c_size, self._d_file, self._d_line, self._d_end))
            n += len(self._d_kind) + len(self._live)
            for m in (self.postings, self._defs):
                n += sys.getsizeof(m)
                for k, a in m.items():
                    n += sys.getsizeof(k) + 64 + a.buffer_info()[1] * a.itemsize
            n += sys.getsizeof(self._fid) + sys.getsizeof(self._paths) + sys.getsizeof(self._meta)
            n += sum(sys.getsizeof(p) + 72 + 88 for p in self._paths)   # path, (mtime, size), range tuple
            self._memory = (self.generation, n)
        return n

    def stats(self) -> IndexStats:
        with self.lock:
            return IndexStats(str(self.root), len(self._fid), self._live_chunks, self._live_defs, len(self.postings),
                              self._n_postings, self.memory_bytes(), round(self.build_seconds, 3), self.building,
                              self.truncated, dict(self.skipped))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _read_text(path: str, max_bytes: int) -> str | tuple[str, object]:
    """The file's text, or (reason, detail) why not."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        return ("vanished", e)
    except OSError as e:
        return ("unreadable", e)
    if len(data) > max_bytes:
        return ("too large", len(data))
    if b"\0" in data[:8192]:
        return ("binary", "")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        return ("not utf-8", e.start)


def make_event_handler(index: RepoIndex):
    """A watchdog handler that keeps `index` current (schedule it recursively on the index's root):
    created / modified / closed files are re-indexed, deleted ones dropped, moves followed; a
    .gitignore change starts a new background build."""
    from watchdog.events import FileSystemEventHandler

    class IndexEventHandler(FileSystemEventHandler):
        def on_any_event(self, event):
            try:
                kind = event.event_type
                src = os.fsdecode(event.src_path)
                if kind in ("opened", "closed_no_write"):
                    return
                if os.path.basename(src) == ".gitignore" or (
                        kind == "moved" and os.path.basename(os.fsdecode(event.dest_path)) == ".gitignore"):
                    index.start()
                    return
                if kind == "deleted":
                    index.remove(src)
                elif kind == "moved":
                    index.move(src, os.fsdecode(event.dest_path))
                elif event.is_directory:
                    if kind == "created":
                        for p, st in index._walk(src):
                            index.update(p, st)
                else:
                    index.update(src)
            except Exception:  # noqa: BLE001 - never kill the observer thread
                log.debug("repo index event %r", event, exc_info=True)

    return IndexEventHandler()


def watch(index: RepoIndex, observer):
    """Schedule the index's handler on its root (recursive); returns the watch for unschedule()."""
    return observer.schedule(make_event_handler(index), str(index.root), recursive=True)
