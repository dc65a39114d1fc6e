"""The workspace: the roots the editors work in, the documents they have open, the files recently
saved there (watched with watchdog), and which of them go into a prompt as extra context.

Extra context, in this order (stable across keystrokes): the workspace files the current file
imports (Python `import x` / `from x import y`), the other documents the editor has open (sorted by
path), files recently saved in the workspace (watched with watchdog, sorted by path). Files that
.gitignore ignores, binary files and files over the size limit are never read.

With `repo_context` on, each project root is also indexed (daemon/repo_context.py: one RepoIndex
per root, watched recursively on this workspace's observer, whose events feed the recent files too;
the open, changed and saved files feed its recency list); `Workspace.repo` is what the prompt stage
asks for snippets.

This module knows files and paths, not tokens: daemon/prompt/ budgets and lays out what
`Workspace.extra_files` returns.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from daemon.repo_context import RepoContext
from textkit.gitignore import GitIgnore

log = logging.getLogger(__name__)

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
    reports documents, watchdog reports file events, the worker thread builds prompts."""

    def __init__(self, max_file_bytes: int = 512 * 1024, observer=None, repo_context: bool = False):
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
        self.repo: RepoContext | None = None
        self.set_repo_context(repo_context)

    # the repository indexes
    def set_repo_context(self, on: bool) -> None:
        """Index the project roots (on) or close every index (off)."""
        if on and self.repo is None:
            with self._lock:
                if self._handler is None and self._observer is not None:
                    self._handler = _make_handler(self)
                self.repo = RepoContext(self.max_file_bytes, self._observer, self._handler)
                roots = list(self.roots.items())
            for root, gi in roots:
                self.repo.add_root(root, gi)
        elif not on and self.repo is not None:
            repo, self.repo = self.repo, None
            repo.close()

    def hold_index(self, busy: bool) -> None:
        """A completion decodes (True) or nothing runs (False): the index builds wait meanwhile."""
        repo = self.repo
        if repo is not None:
            repo.hold(busy)

    # documents
    def set_document(self, uri: str, path: str, language: str, text: str | None, owner: int = 0) -> None:
        with self._lock:
            old = self.docs.get(uri)
            if text is None:
                self.docs.pop(uri, None)
            else:
                self.docs[uri] = OpenDoc(uri, path, language, text, owner)
        if path and text is not None:
            self.add_root_for(Path(path))
            repo = self.repo
            if repo is not None:     # opened: viewed; changed: edited
                repo.touch(path, "view" if old is None else "edit" if old.text != text else "view")

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
            gone = []
            if root in self.roots:
                self.roots.move_to_end(root)
            else:
                self.roots[root] = GitIgnore(root, ALWAYS_IGNORED)
                while len(self.roots) > MAX_ROOTS:
                    gone.append(self.roots.popitem(last=False)[0])
            gi = self.roots[root]
        repo = self.repo
        if repo is not None:
            for g in gone:
                repo.drop_root(g)
            repo.add_root(root, gi)
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
        repo = self.repo
        if repo is not None and repo.covers(d):
            return          # the root's recursive watch reports this directory's files already
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
        repo = self.repo
        if repo is not None:
            repo.touch(str(path), "edit")
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
        self.set_repo_context(False)
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
