"""The models on this machine: pulled ones (verified against the catalogue) and imported ones.

Each model has a folder `$XDG_DATA_HOME/tricode/models/<name>/` (default ~/.local/share) holding
`manifest.json`; a pulled model's file lies next to it, an imported one is recorded by reference
(see `import_model`). A folder appears under its name only by an atomic rename once everything in it
is complete and checked, so a half-written model is never listed, found or resolved; work in progress
lives in dot-folders (`.partial/`, `.tmp-*`) that nothing here reads as a model.

`resolve(name_or_path)` is what `--model` and `model = "..."` go through: an existing path wins, then
a model name. This module knows nothing of how models are loaded (engine/) or downloaded (pull.py).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from registry.catalogue import CATALOGUE, Entry

MANIFEST = "manifest.json"


class ModelError(Exception):
    """A model cannot be pulled, imported, found or removed; the message says what to do."""


@dataclass
class Installed:
    name: str
    path: Path            # the file or directory a loader opens
    kind: str             # "pulled" | "imported"
    format: str           # "gguf" | "hf"
    size: int
    verified: bool        # the pinned sha256 was checked (pulled models) and the file is still whole
    manifest: dict

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        del d["manifest"]
        d.update({k: self.manifest[k] for k in ("sha256", "license", "source", "verified_at")
                  if k in self.manifest})
        return d


def models_dir() -> Path:
    """Where models live: $XDG_DATA_HOME/tricode/models (XDG_DATA_HOME defaults to ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "tricode" / "models"


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise ModelError(f"{name!r} is not a usable model name: use letters, digits, '.', '-' or '_' "
                         "(no '/', not starting with '.')")
    return name


def _read(folder: Path) -> Installed | None:
    try:
        m = json.loads((folder / MANIFEST).read_text())
        kind = m["kind"]
        path = folder / m["file"] if kind == "pulled" else Path(m["path"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # a cheap check that the file is still whole; the sha256 was checked when it was pulled
    try:
        size = path.stat().st_size if path.is_file() else _dir_size(path)
        present = path.exists()
    except OSError:
        size, present = 0, False
    verified = bool(kind == "pulled" and present and size == m.get("size") and m.get("verified_at"))
    return Installed(m.get("name", folder.name), path, kind, m.get("format", "gguf"), size, verified, m)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) if path.is_dir() else 0


def installed() -> list[Installed]:
    """Every complete model folder, by name. Work in progress (dot-folders) is not listed."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        rec = _read(folder)
        if rec is not None:
            out.append(rec)
    return out


def find(name: str) -> Path | None:
    """The file (or HF directory) of model `name` if it is on this machine and whole, else None.
    A pulled model counts only while its file has the size that was verified."""
    folder = models_dir() / name
    if name.startswith(".") or "/" in name or not folder.is_dir():
        return None
    rec = _read(folder)
    if rec is None or not rec.path.exists():
        return None
    if rec.kind == "pulled" and not rec.verified:
        return None
    return rec.path


def known_names() -> list[str]:
    return sorted(set(CATALOGUE) | {m.name for m in installed()})


def resolve(name_or_path: str | os.PathLike) -> Path:
    """What `--model X` and `model = "X"` mean: an existing path wins; else a pulled or imported
    model's name; else a clear error listing the known names and how to get one."""
    text = str(name_or_path).strip()
    if not text:
        raise ModelError("no model given: pass a path or a model name (tricode model list)")
    p = Path(text).expanduser()
    if p.exists():
        return p
    found = find(text) if "/" not in text else None
    if found is not None:
        return found
    if text in CATALOGUE:
        raise ModelError(f"model {text!r} is not on this machine yet: run `tricode model pull {text}` "
                         f"({CATALOGUE[text].size / 1e6:,.0f} MB, checked against its pinned sha256)")
    names = ", ".join(known_names()) or "(none)"
    looks_like_path = os.sep in text or text.startswith((".", "~")) or text.endswith(".gguf")
    what = "no such file or directory" if looks_like_path else "not a path and not a known model name"
    raise ModelError(f"{text!r}: {what}. Known models: {names}. Get one with `tricode model pull NAME`, "
                     "or `tricode model import PATH` for your own GGUF file or HF directory.")


DRAFTER_SUFFIX = ".drafter"      # engine.drafter.drafter_dir: a trained drafter beside its model's file


def drafters(folder: Path) -> list[Path]:
    """The drafter folders a model folder holds (`tricode train --drafter-for` writes them there)."""
    return sorted(p for p in folder.glob("*" + DRAFTER_SUFFIX) if p.is_dir()) if folder.is_dir() else []


def _publish(tmp: Path, name: str) -> Path:
    """Rename the finished folder `tmp` to its name; what was there before is replaced, except the
    drafters trained beside it (hours of work that no registry holds), which move into the new folder.
    A drafter trained for other weights is refused at load with a message that says so."""
    final = models_dir() / name
    old, moved = None, []
    if final.exists():
        for d in drafters(final):
            if not (tmp / d.name).exists():
                os.rename(d, tmp / d.name)
                moved.append(d.name)
        old = final.with_name(f".old-{name}-{os.getpid()}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:                  # the previous folder goes back as it was, drafters included
        if old is not None:
            os.rename(old, final)
        for d in moved:
            os.rename(tmp / d, final / d)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def new_folder(name: str) -> Path:
    """A private folder next to the models (same filesystem, so publishing is one rename)."""
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)     # mkdtemp makes it private; a model folder is an ordinary one
    return folder


def write_manifest(folder: Path, manifest: dict) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def looks_like(path: Path) -> str:
    """'gguf' or 'hf' if `path` looks loadable, else a ModelError saying what it lacks."""
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return "gguf"
        raise ModelError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file starts with b'GGUF'); "
                         "import a .gguf file or a Hugging Face model directory")
    if path.is_dir():
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return "hf"
        lacks = [w for w, ok in (("config.json", (path / "config.json").is_file()),
                                 ("*.safetensors weights", any(path.glob("*.safetensors")))) if not ok]
        raise ModelError(f"{path}: not a Hugging Face model directory (no {' and no '.join(lacks)}); "
                         "import a .gguf file or a directory with config.json and *.safetensors")
    raise ModelError(f"{path}: no such file or directory")


def import_model(path: str | os.PathLike, name: str | None = None) -> Installed:
    """Record the user's own GGUF file or HF directory under `name` (default: its file name).

    By reference, not by copy: such files are large (GBs) and usually managed by another tool
    (Ollama, LM Studio, the HF cache); a copy would double the disk they take. The manifest keeps
    the absolute path, size and modification time; if the file goes away, the model is listed as
    missing and `resolve` says so. Its sha256 is not checked (there is nothing pinned to check it
    against), so it is listed as not verified."""
    src = Path(path).expanduser().resolve()
    fmt = looks_like(src)
    name = _check_name(name or (src.stem if fmt == "gguf" else src.name))
    if name in CATALOGUE:
        raise ModelError(f"{name!r} is the name of a pullable model; pick another with --name")
    st = src.stat()
    folder = new_folder(name)
    try:
        write_manifest(folder, {
            "name": name, "kind": "imported", "format": fmt, "path": str(src), "file": src.name,
            "size": st.st_size if fmt == "gguf" else _dir_size(src), "mtime": st.st_mtime,
            "sha256": None, "source": {"kind": "import", "path": str(src)}, "license": "unknown",
            "imported_at": now(),
        })
        _publish(folder, name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    rec = _read(models_dir() / name)
    assert rec is not None
    return rec


def remove(name: str, with_drafter: bool = False) -> Path:
    """Delete a pulled model's folder (file included) or forget an imported one (its file stays).
    A folder holding a trained drafter is only deleted `with_drafter`."""
    folder = models_dir() / _check_name(name)
    if not (folder / MANIFEST).is_file():
        raise ModelError(f"no model {name!r} on this machine (tricode model list shows them)")
    kept = drafters(folder)
    if kept and not with_drafter:
        raise ModelError(f"{name} holds a trained drafter ({', '.join(d.name for d in kept)}), which would be "
                         "deleted with it: copy it elsewhere first, or run `tricode model remove "
                         f"{name} --with-drafter`")
    gone = folder.with_name(f".rm-{name}-{os.getpid()}")
    os.rename(folder, gone)      # unlisted at once, then deleted
    shutil.rmtree(gone, ignore_errors=True)
    return folder


def pull(name: str, **kwargs) -> Path:
    """Download, verify and install a catalogue model; see registry.pull.pull."""
    from registry.pull import pull as _pull
    return _pull(name, **kwargs)


def catalogue_entry(name: str, catalogue: dict[str, Entry] | None = None) -> Entry:
    cat = CATALOGUE if catalogue is None else catalogue
    try:
        return cat[name]
    except KeyError:
        raise ModelError(f"no model {name!r} to pull; pullable: {', '.join(sorted(cat))}") from None


def model_arg(text: str) -> Path:
    """argparse `type=` for --model: a path or a model name, resolved; a clear usage error if neither."""
    import argparse
    try:
        return resolve(text)
    except ModelError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def resolve_lenient(text: str | os.PathLike) -> Path:
    """resolve(), but an unknown name comes back as the path it spells (for callers that report a
    missing path themselves, like the daemon's config reload, which must not raise)."""
    try:
        return resolve(text)
    except ModelError:
        return Path(str(text)).expanduser()
