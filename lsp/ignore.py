""".gitignore matching (enough of git's rules for editor use), cached per directory.

The rules: blank lines and `#` comments are skipped; `!` re-includes; a trailing `/` matches
directories only; a pattern with a `/` at the start or in the middle is anchored to the .gitignore's
directory, one without matches a name at any depth; `*`, `?`, `[...]` and `**` as in git; the last
matching rule wins; a file inside an ignored directory is ignored. Files under `.git/` are always
ignored. `.git/info/exclude` counts like a .gitignore at the repository root.
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


class IgnoreMatcher:
    """is_ignored(path) for files in git repositories (or under a given workspace root)."""

    def __init__(self, roots: list[str] | None = None):
        self.roots = [str(Path(r)) for r in roots or []]
        self._rules: dict[str, tuple[float, list[Rule]]] = {}
        self._repo_of: dict[str, str | None] = {}

    def _rules_in(self, directory: str, name: str = ".gitignore") -> list[Rule]:
        path = os.path.join(directory, name)
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
        parts = Path(path).parts
        if ".git" in parts[:-1]:
            return True
        root = self._repo_root(os.path.dirname(path))
        if root is None:
            return False
        rel_parts = Path(path).relative_to(root).parts
        # walk down from the root: a directory that is ignored hides everything below it
        for depth in range(1, len(rel_parts) + 1):
            is_dir = depth < len(rel_parts)
            if self._match(root, rel_parts[:depth], is_dir):
                return True
        return False

    def _match(self, root: str, rel_parts: tuple[str, ...], is_dir: bool) -> bool:
        ignored = False
        sources = [(root, self._rules_in(os.path.join(root, ".git", "info"), "exclude"))]
        for k in range(len(rel_parts)):
            d = os.path.join(root, *rel_parts[:k])
            sources.append((d, self._rules_in(d)))
        for base, rules in sources:
            if not rules:
                continue
            rel = "/".join(rel_parts[len(Path(base).relative_to(root).parts):])
            for rule in rules:
                if rule.matches(rel, is_dir):
                    ignored = not rule.negate
        return ignored
