""".gitignore matching (enough of git's rules for editor use), cached per directory. Stdlib only and
torch-free: the language server imports it as well as the daemon.

The rules: blank lines and `#` comments are skipped; `!` re-includes; a trailing `/` matches
directories only; a pattern with a `/` at the start or in the middle is anchored to the .gitignore's
directory, one without matches a name at any depth; `*`, `?`, `[...]` and `**` as in git; the last
matching rule wins, a deeper .gitignore over a shallower one; a file inside an ignored directory is
ignored. `.git/info/exclude` counts like a .gitignore at the repository root, below it. Each
.gitignore is read when a path below its directory is first asked about, and again when it changes.

`GitIgnore(root)` answers `ignored(path, is_dir)` for paths under a known root (the daemon: one per
workspace root); `IgnoreMatcher(roots)` answers `is_ignored(path)` for any file, finding its
repository root itself (the language server).
"""
from __future__ import annotations

import os
import re
from pathlib import Path


def _translate(glob: str) -> str:
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                at_start = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2: i + 3]
                if at_start and after == "/":
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if at_start and after == "":
                    out.append(".*")
                    i += 2
                    continue
                out.append("[^/]*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = glob.find("]", i + 2 if glob[i + 1: i + 2] in ("!", "^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1: j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class Rule:
    __slots__ = ("negate", "dir_only", "regex")

    def __init__(self, line: str):
        self.negate = line.startswith("!")
        if self.negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        self.dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        line = line.lstrip("/")
        pattern = _translate(line)
        self.regex = re.compile(("" if anchored else "(?:.*/)?") + pattern + r"\Z", re.DOTALL)

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.regex.match(rel) is not None


def parse(text: str) -> list[Rule]:
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        # trailing spaces are ignored unless escaped
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += " "
        if stripped in ("/", "!"):
            continue
        rules.append(Rule(stripped))
    return rules


class GitIgnore:
    """ignored(path, is_dir) for paths under one root directory: its .git/info/exclude and the
    .gitignore files of the root and of every directory on the way down to the path. `always` are
    extra patterns that hold at the root with the lowest precedence (a .gitignore can re-include)."""

    def __init__(self, root: str | os.PathLike, always=()):
        self.root = Path(root)
        self._always = parse("\n".join(always))
        self._rules: dict[str, tuple[float, list[Rule]]] = {}

    def _read(self, path: str) -> list[Rule]:
        """The rules of one ignore file, cached until its mtime changes."""
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            self._rules.pop(path, None)
            return []
        cached = self._rules.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        try:
            rules = parse(Path(path).read_text(encoding="utf-8", errors="replace"))
        except OSError:
            rules = []
        self._rules[path] = (mtime, rules)
        return rules

    def load_dir(self, d: str | os.PathLike) -> list[Rule]:
        """The rules of directory `d`'s .gitignore (read now, or from the cache if unchanged)."""
        return self._read(os.path.join(d, ".gitignore"))

    def ignored(self, path: str | os.PathLike, is_dir: bool | None = None) -> bool:
        """Whether git would ignore `path` (False outside the root and for the root itself); `is_dir`
        None asks the file system."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return False
        if not parts:
            return False
        if is_dir is None:
            is_dir = Path(path).is_dir()
        # (depth of the directory the rules live in, rules), shallowest and weakest first
        sources = [(0, self._always), (0, self._read(os.path.join(self.root, ".git", "info", "exclude")))]
        # walk down from the root: a directory that is ignored hides everything below it
        for depth in range(1, len(parts) + 1):
            sources.append((depth - 1, self.load_dir(os.path.join(self.root, *parts[:depth - 1]))))
            if self._match(sources, parts[:depth], is_dir if depth == len(parts) else True):
                return True
        return False

    @staticmethod
    def _match(sources: list[tuple[int, list[Rule]]], parts: tuple[str, ...], is_dir: bool) -> bool:
        ignored = False
        for base, rules in sources:
            if not rules:
                continue
            rel = "/".join(parts[base:])
            for rule in rules:
                if rule.matches(rel, is_dir):
                    ignored = not rule.negate
        return ignored


class IgnoreMatcher:
    """is_ignored(path) for files in git repositories (or under a given workspace root): the root is
    the nearest directory holding `.git`, else the first of `roots` the file is under. Files under
    `.git/` are always ignored."""

    def __init__(self, roots: list[str] | None = None):
        self.roots = [str(Path(r)) for r in roots or []]
        self._repo_of: dict[str, str | None] = {}
        self._matchers: dict[str, GitIgnore] = {}

    def _repo_root(self, directory: str) -> str | None:
        if directory in self._repo_of:
            return self._repo_of[directory]
        d = directory
        found = None
        while True:
            if os.path.exists(os.path.join(d, ".git")):
                found = d
                break
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        if found is None:
            for r in self.roots:
                if directory == r or directory.startswith(r.rstrip(os.sep) + os.sep):
                    found = r
                    break
        self._repo_of[directory] = found
        return found

    def is_ignored(self, path: str) -> bool:
        if not path:
            return False
        path = os.path.abspath(path)
        if ".git" in Path(path).parts[:-1]:
            return True
        root = self._repo_root(os.path.dirname(path))
        if root is None:
            return False
        if root not in self._matchers:
            self._matchers[root] = GitIgnore(root)
        return self._matchers[root].ignored(path, False)
