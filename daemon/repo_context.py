"""The workspace's repository indexes as the daemon runs them: one RepoIndex per indexed workspace
root (daemon/repo_index.py), kept current by the workspace's watchdog observer, the Recency list of
files edited or viewed, and the snippets a completion asks for (daemon/retrieval.py).

A root is indexed when it is a project (it holds .git, .hg, pyproject.toml, setup.py or setup.cfg),
is not the home directory or `/`, and at most MAX_INDEXED_ROOTS are (the least recently used one is
closed first), so the memory is bounded by MAX_INDEXED_ROOTS times the index's own Limits. Attaching
a root (the recursive watch, which adds one inotify watch per directory, and the build) runs in a
thread of its own, so a new root never blocks the socket's event loop; the build is paced and waits
while `hold(True)` says a completion decodes.

What it does not know: tokens and prompts (the caller passes a `count` and fits the snippets with
daemon/prompt.py), documents (daemon/workspace.py reports files and roots).
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

from daemon.repo_index import Limits, RepoIndex, make_event_handler
from daemon.retrieval import Recency, Retriever, Snippet

log = logging.getLogger(__name__)

MAX_INDEXED_ROOTS = 3
PROJECT_MARKERS = (".git", ".hg", "pyproject.toml", "setup.py", "setup.cfg")


def indexable_root(root: Path) -> bool:
    """A project root (a marker file or directory), not the home directory or the filesystem root."""
    if root == Path(root.anchor) or root == Path.home():
        return False
    return any((root / m).exists() for m in PROJECT_MARKERS)


class _Root:
    def __init__(self, index: RepoIndex, retriever: Retriever):
        self.index, self.retriever = index, retriever
        self.watch = None
        self.unwatched = False    # the recursive watch could not be scheduled (or there is no observer)
        self.started = False      # the build was started (until then the status says "building")
        self.closed = False


class _Both:
    """A watchdog handler that hands each event to two handlers (the index's and the workspace's), so
    that one recursive watch per root serves both."""

    def __init__(self, *handlers):
        self.handlers = handlers

    def dispatch(self, event):
        for h in self.handlers:
            try:
                h.dispatch(event)
            except Exception:  # noqa: BLE001 - never kill the observer thread
                log.debug("workspace event %r", event, exc_info=True)


class RepoContext:
    """The indexes of the workspace roots (see the module docstring). Thread-safe."""

    def __init__(self, max_file_bytes: int, observer=None, file_handler=None):
        self.max_file_bytes = max_file_bytes
        self.observer = observer
        self.file_handler = file_handler      # the workspace's handler (recent files), on the same watch
        self.recency = Recency()
        self._roots: OrderedDict[Path, _Root] = OrderedDict()
        self._lock = threading.RLock()
        self._held = False
        self._counters: dict[int, tuple[object, object]] = {}

    # -- roots ----------------------------------------------------------------------------------------

    def add_root(self, root: Path, ignore) -> bool:
        """Index `root` (with its gitignore matcher) when it is a project; True when it is indexed."""
        with self._lock:
            if root in self._roots:
                self._roots.move_to_end(root)
                return True
            if not indexable_root(root):
                return False
            index = RepoIndex(root, ignore=ignore, limits=Limits(max_file_bytes=self.max_file_bytes))
            if self._held:
                index.hold.set()
            entry = self._roots[root] = _Root(index, Retriever(index, self.recency))
            old = []
            while len(self._roots) > MAX_INDEXED_ROOTS:
                old.append(self._roots.popitem(last=False)[1])
        for e in old:
            self._close(e)
        threading.Thread(target=self._attach, args=(entry,), name=f"repo-attach:{root.name}", daemon=True).start()
        return True

    def _attach(self, entry: _Root) -> None:
        """Watch the root recursively on the workspace's observer, then build in the background (the
        watch first, so that nothing written during the build is missed)."""
        index = entry.index
        if self.observer is not None:
            handler = make_event_handler(index)
            if self.file_handler is not None:
                handler = _Both(handler, self.file_handler)
            try:
                w = self.observer.schedule(handler, str(index.root), recursive=True)
            except Exception as e:  # noqa: BLE001 - inotify limits, permissions, a root gone
                log.warning("cannot watch %s for the repository index: %s", index.root, e)
                w = None
            with self._lock:
                if entry.closed:
                    self._unschedule(w)
                    return
                entry.watch, entry.unwatched = w, w is None
        else:
            entry.unwatched = True
        index.start()
        entry.started = True

    def drop_root(self, root: Path) -> None:
        with self._lock:
            entry = self._roots.pop(root, None)
        if entry is not None:
            self._close(entry)

    def _close(self, entry: _Root) -> None:
        with self._lock:
            entry.closed = True
            w, entry.watch = entry.watch, None
        self._unschedule(w)
        entry.index.close()

    def _unschedule(self, w) -> None:
        if w is not None and self.observer is not None:
            try:
                self.observer.unschedule(w)
            except Exception:  # noqa: BLE001
                pass

    def covers(self, d: Path) -> bool:
        """Is directory `d` inside an indexed root (watched recursively, or about to be)?"""
        with self._lock:
            return any(d == r or r in d.parents for r, e in self._roots.items() if not e.unwatched)

    def roots(self) -> list[Path]:
        with self._lock:
            return list(self._roots)

    def close(self) -> None:
        with self._lock:
            entries = list(self._roots.values())
            self._roots.clear()
        for e in entries:
            self._close(e)

    # -- events ---------------------------------------------------------------------------------------

    def touch(self, path: str, kind: str) -> None:
        """A file was edited (a save, a change) or viewed (opened): the recency list."""
        self.recency.touch(path, kind)

    def hold(self, busy: bool) -> None:
        """While a completion decodes the builds wait (indexing never slows typing)."""
        with self._lock:
            if busy == self._held:
                return
            self._held = busy
            for e in self._roots.values():
                (e.index.hold.set if busy else e.index.hold.clear)()

    # -- retrieval ------------------------------------------------------------------------------------

    def _entry_for(self, path: Path) -> _Root | None:
        with self._lock:
            best = None
            for root, e in self._roots.items():
                if (root in path.parents) and (best is None or len(root.parts) > len(best[0].parts)):
                    best = (root, e)
            return best[1] if best else None

    def counter(self, tok):
        """A token counter for `tok` that stays the same object (the retriever caches counts per
        counter)."""
        got = self._counters.get(id(tok))
        if got is None or got[0] is not tok:
            got = (tok, lambda text: len(tok.encode(text)))
            self._counters = {id(tok): got}
        return got[1]

    def snippets(self, path: str, text: str, line: int, budget: int, held=(), count=len,
                 sources=None) -> list[Snippet]:
        """The snippets for a completion at 0-based `line` of `path` (its current `text`) within
        `budget` (measured by `count`; `sources`: retrieval's, all by default); [] for a file outside
        the indexed roots. Never raises: a broken file or a failing index costs the completion its
        repository context only."""
        if budget <= 0 or not path:
            return []
        try:
            p = Path(path).expanduser().resolve()
            entry = self._entry_for(p)
            if entry is None:
                return []
            kw = {"sources": tuple(sources)} if sources else {}
            return entry.retriever.retrieve(str(p), text, line, budget, held=held, count=count, **kw)
        except Exception:  # noqa: BLE001 - context is a bonus, never a failure
            log.debug("repository context for %s", path, exc_info=True)
            return []

    # -- status ---------------------------------------------------------------------------------------

    def status(self) -> list[dict]:
        """Per indexed root: files, chunks, definitions, memory, indexing time, state."""
        with self._lock:
            entries = list(self._roots.values())
        out = []
        for e in entries:
            s = asdict(e.index.stats())
            s["watched"] = e.watch is not None
            s["building"] = s["building"] or not e.started
            out.append(s)
        return out


def prompt_repo(workspace, tok, cfg, msg, budget: int, extra, layout: str, fmt: str | None = None):
    """The repository context of one request's prompt: (entries for PromptBuilder's `repo`, their
    budget `repo_budget`, the snippets). `cfg.repo_context_tokens` of `budget`; held: what the
    prompt holds besides (daemon/prompt.py repo_held). For a pretrained model's inline format `fmt`
    (PromptBuilder.fim_format) the measured policy of daemon/prompt/fim.py: definitions and
    signatures only, within REPO_SNIPPET_TOKENS at most, only for REPO_SNIPPET_FORMATS and with
    `cfg.repo_context_pretrained`. Nothing
    when repository context is off, the file is outside the indexed roots, or the tokenizer has no
    file separator to mark a snippet."""
    repo = workspace.repo
    if repo is None or not cfg.repo_context or not msg.path or tok is None:
        return [], 0, []
    if tok.has_fim and tok.fim.get("file_sep") is None:
        return [], 0, []
    from daemon.prompt import fim, repo_held
    from daemon.retrieval import as_entries
    repo_budget = int(budget * cfg.repo_context_tokens)
    sources = None
    if fmt is not None:
        if fmt not in fim.REPO_SNIPPET_FORMATS or not cfg.repo_context_pretrained:
            return [], 0, []
        repo_budget, sources = min(repo_budget, fim.REPO_SNIPPET_TOKENS), fim.REPO_SNIPPET_SOURCES
    if repo_budget <= 0:
        return [], 0, []
    try:
        held = repo_held(msg.prefix, extra, budget - repo_budget, layout)
        snippets = repo.snippets(msg.path, msg.prefix + msg.suffix, msg.prefix.count("\n"), repo_budget, held,
                                 repo.counter(tok), sources)
        return (as_entries(snippets), repo_budget, snippets) if snippets else ([], 0, [])
    except Exception:  # noqa: BLE001 - context is a bonus, never a failure
        log.exception("repository context for %s", msg.path)
        return [], 0, []


def root_name(snippets) -> str:
    """The name of the workspace root the snippets come from (the repository format's repo name)."""
    for s in snippets:
        if s.path.endswith(s.label):
            return os.path.basename(s.path[:len(s.path) - len(s.label)].rstrip(os.sep)) or "workspace"
    return "workspace"


def reported(prompt, snippets) -> list[dict]:
    """The snippets that went into `prompt` (path relative to the root, lines, score, why), for the
    result's `repo_context`."""
    files = set(prompt.repo_files)
    return [s.to_json() for s in snippets if s.label in files]
