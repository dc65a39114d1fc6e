"""registry/: pulling through the real pip from a local index of wheels built here, resuming, refusing
corrupt parts, the no-network error, import/list/remove/resolve, and (slow) the real 0.5B pull."""
import argparse
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from registry.catalogue import CATALOGUE, Entry, Part
from registry.models import ModelError, find, import_model, installed, models_dir, remove, resolve
from registry.pull import pull

STEM = "tricode-test-blob-part"
VERSION = "1.0.0"


def _wheel(dest: Path, i: int, data: bytes) -> Path:
    """A minimal valid wheel holding one data file, as the real model wheels do."""
    mod = f"{STEM.replace('-', '_')}{i}"
    dist = f"{mod}-{VERSION}.dist-info"
    files = {
        f"{mod}/__init__.py": b"",
        f"{mod}/data/part{i:02d}.bin": data,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {STEM}{i}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tricode-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    files[f"{dist}/RECORD"] = record.encode()
    path = dest / f"{mod}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in files.items():
            z.writestr(n, b)
    return path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """Three wheels of a few KB in a find-links folder, the catalogue pinning them, and pip args that
    use only that folder (isolated from this machine's pip configuration)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    store = tmp_path / "wheels"          # every wheel ever built
    served = tmp_path / "index"          # what the index offers now
    store.mkdir(), served.mkdir()
    datas = [os.urandom(3000 + 1000 * i) for i in range(1, 4)]
    parts, wheels = [], []
    for i, data in enumerate(datas, start=1):
        w = _wheel(store, i, data)
        wheels.append(w)
        parts.append(Part(f"{STEM}{i}", VERSION, _sha(w.read_bytes()),
                          f"{STEM.replace('-', '_')}{i}/data/part{i:02d}.bin"))
    joined = b"".join(datas)
    entry = Entry("blob", "blob.gguf", len(joined), _sha(joined), tuple(parts), "Apache-2.0", "tests", "test blob")

    class Index:
        pass
    ix = Index()
    ix.catalogue, ix.entry, ix.joined, ix.wheels, ix.served = {"blob": entry}, entry, joined, wheels, served
    ix.pip_args = ["--isolated", "--no-index", "--find-links", str(served)]
    ix.serve = lambda *ns: [os.link(wheels[n - 1], served / wheels[n - 1].name) for n in ns]
    return ix


def test_full_pull_verifies_joins_and_lists(index):
    index.serve(1, 2, 3)
    out = io.StringIO()
    path = pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=out)
    assert path == models_dir() / "blob" / "blob.gguf"
    assert path.read_bytes() == index.joined
    log = out.getvalue()
    assert [f"part {i}/3" in log for i in (1, 2, 3)] == [True] * 3 and "downloaded, sha256 ok" in log
    manifest = json.loads((path.parent / "manifest.json").read_text())
    assert manifest["sha256"] == index.entry.sha256 and manifest["size"] == len(index.joined)
    assert manifest["license"] == "Apache-2.0" and manifest["verified_at"]
    assert [p["requirement"] for p in manifest["source"]["parts"]] == [f"{STEM}{i}==1.0.0" for i in (1, 2, 3)]
    [m] = installed()
    assert (m.name, m.kind, m.verified, m.size) == ("blob", "pulled", True, len(index.joined))
    assert find("blob") == path and resolve("blob") == path
    # nothing left over: no partial folder, no temp folders
    assert sorted(p.name for p in models_dir().iterdir()) == ["blob"]
    # a second pull is a no-op
    out = io.StringIO()
    assert pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=out) == path
    assert "already pulled" in out.getvalue()
    # a file truncated afterwards is no longer found (and not resolved by name)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert find("blob") is None and not installed()[0].verified
    with pytest.raises(ModelError):
        resolve("blob")


def test_resume_keeps_verified_parts_and_drops_a_killed_one(index):
    index.serve(1)                         # part 2 is not on the index: the pull stops there
    with pytest.raises(ModelError) as e:
        pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=io.StringIO())
    msg = str(e.value)
    assert "part 2/3" in msg and f"{STEM}2==1.0.0" in msg and "1 verified part(s) are kept" in msg
    assert "run `tricode model pull blob` again" in msg
    assert installed() == [] and find("blob") is None
    partial = models_dir() / ".partial" / "blob"
    assert [p.name for p in partial.glob("*.whl")] == [index.wheels[0].name]
    # a download killed half-way left a truncated wheel for part 2 in the partial folder
    (partial / index.wheels[1].name).write_bytes(index.wheels[1].read_bytes()[:500])
    # the index now has parts 2 and 3 but no longer part 1: the resumed pull must use the kept one
    (index.served / index.wheels[0].name).unlink()
    index.serve(2, 3)
    out = io.StringIO()
    path = pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=out)
    log = out.getvalue()
    assert "part 1/3" in log and "kept from an earlier run" in log.splitlines()[0]
    assert "part 2/3" in log and "downloaded" in log.splitlines()[1]
    assert path.read_bytes() == index.joined and not partial.exists()


def test_corrupt_part_is_refused_and_nothing_is_listed(index):
    index.serve(1, 3)
    # the index serves a different, well-formed wheel under part 2's name (tampered or corrupt)
    other = index.served.parent / "other"
    other.mkdir()
    bad = _wheel(other, 2, b"not the pinned data")
    os.link(bad, index.served / bad.name)
    assert bad.name == index.wheels[1].name
    with pytest.raises(ModelError) as e:
        pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=io.StringIO())
    msg = str(e.value)
    assert "part 2/3" in msg and "sha256" in msg and index.entry.parts[1].wheel_sha256 in msg
    assert "Nothing was installed" in msg
    assert installed() == [] and find("blob") is None
    with pytest.raises(ModelError):
        resolve("blob")
    partial = models_dir() / ".partial" / "blob"
    assert sorted(p.name for p in partial.glob("*.whl")) == [index.wheels[0].name]   # the bad one is gone
    assert not any(p.name.startswith(".tmp-") for p in models_dir().iterdir())


def test_no_network_says_so(index):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                              # nothing listens there now
    args = ["--isolated", "--index-url", f"http://127.0.0.1:{port}/simple", "--retries", "1", "--timeout", "3"]
    with pytest.raises(ModelError) as e:
        pull("blob", catalogue=index.catalogue, pip_args=args, stream=io.StringIO())
    msg = str(e.value)
    assert "part 1/3" in msg and "could not be reached" in msg and "pip said" in msg
    assert installed() == []


def test_import_list_resolve_remove(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    rec = import_model(gguf)
    assert (rec.name, rec.kind, rec.format, rec.verified, rec.path) == ("mine", "imported", "gguf", False, gguf)
    assert resolve("mine") == gguf and find("mine") == gguf
    hf = tmp_path / "hfmodel"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 16)
    assert import_model(hf, name="my-hf").format == "hf" and resolve("my-hf") == hf
    assert sorted(m.name for m in installed()) == ["mine", "my-hf"]
    # the daemon's config and --model take the name
    from daemon.config import Config, resolve_model
    from registry.models import model_arg
    assert resolve_model(Config(model="mine")) == gguf and resolve_model(Config(), override="my-hf") == hf
    assert model_arg("mine") == gguf
    with pytest.raises(argparse.ArgumentTypeError, match="Known models"):
        model_arg("nonesuch")
    # an existing path wins over a model of the same name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    assert resolve("mine") == Path("mine")
    # what is not a model is refused, saying why
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(ModelError, match="not a GGUF file"):
        import_model(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        import_model(tmp_path / "empty")
    with pytest.raises(ModelError, match="pullable model"):
        import_model(gguf, name="qwen2.5-coder-0.5b")
    # remove forgets an imported model; its file stays
    remove("mine")
    assert gguf.exists() and find("mine") is None
    with pytest.raises(ModelError, match="no model 'mine'"):
        remove("mine")
    # unknown names: the error lists what is known and how to get it
    with pytest.raises(ModelError) as e:
        resolve("nonesuch")
    assert "qwen2.5-coder-0.5b" in str(e.value) and "tricode model pull" in str(e.value)
    with pytest.raises(ModelError, match="not on this machine yet"):
        resolve("qwen2.5-coder-1.5b")


def test_the_default_model_is_the_pulled_one_else_the_embedded_one(tmp_path, monkeypatch, real_gguf):
    """`model = ""` serves the pulled qwen2.5-coder-0.5b when it is on this machine (and whole), else
    the embedded model; a name that is neither a path nor a model is the registry's clear error."""
    from daemon.config import DEFAULT_MODEL, Config, default_model_path, resolve_model
    from engine.embedded_model import default_model
    monkeypatch.delenv("TRICODE_MODEL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "empty"))
    assert default_model_path() == default_model() and resolve_model(Config()) == default_model()
    if real_gguf.parent.parent.name == "models":          # the registry's copy: seen from a fresh data folder
        (tmp_path / "data" / "tricode").mkdir(parents=True)
        (tmp_path / "data" / "tricode" / "models").symlink_to(real_gguf.parent.parent)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert find(DEFAULT_MODEL) is not None
        assert resolve_model(Config()).resolve() == real_gguf.resolve()
    with pytest.raises(ModelError, match="not a path and not a known model name"):
        resolve_model(Config(model="nonesuch"), strict=True)
    if find("qwen2.5-coder-1.5b") is None:                # a catalogued name not pulled: how to get it
        with pytest.raises(ModelError, match="tricode model pull qwen2.5-coder-1.5b"):
            resolve_model(Config(), override="qwen2.5-coder-1.5b", strict=True)
    # `tricode eval --model NAME`: the same error, no traceback
    out = subprocess.run([sys.executable, "-m", "tricode", "eval", "--model", "nonesuch"], capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, XDG_DATA_HOME=str(tmp_path / "empty")),
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 2 and "not a path and not a known model name" in out.stderr, out.stderr


def test_cli_list_json_and_errors(tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    r = subprocess.run([sys.executable, "-m", "registry", "list", "--json"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["installed"] == [] and {p["name"] for p in d["pullable"]} == set(CATALOGUE)
    r = subprocess.run([sys.executable, "-m", "registry", "import", str(tmp_path / "nope.gguf")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no such file or directory" in r.stderr


@pytest.mark.slow
def test_pull_real_qwen_05b(tmp_path, monkeypatch):
    """The real catalogue entry through the machine's pip (its cache makes a second run quick)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    entry = CATALOGUE["qwen2.5-coder-0.5b"]
    path = pull(entry.name, stream=io.StringIO())
    assert path.stat().st_size == entry.size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    assert h.hexdigest() == entry.sha256
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert resolve(entry.name) == path


def test_a_trained_drafter_survives_a_re_pull_and_is_not_removed_by_accident(index, monkeypatch):
    """A drafter trained beside a pulled model (`tricode train --drafter-for`) is hours of work no
    registry holds: a forced re-pull keeps it (also when publishing fails), `model remove` refuses
    to delete it unless told --with-drafter."""
    from engine.drafter import drafter_dir
    from registry import models as M
    index.serve(1, 2, 3)
    path = pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=io.StringIO())
    d = drafter_dir(path)
    assert d.parent == path.parent and M.DRAFTER_SUFFIX == d.name[len(path.name):]
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "w.bin").write_bytes(b"trained")
    assert pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=io.StringIO(), force=True) == path
    assert (d / "adapter" / "w.bin").read_bytes() == b"trained"
    assert path.read_bytes() == index.joined

    real_rename = os.rename

    def failing(src, dst):
        if Path(dst) == path.parent and Path(src).name.startswith(".tmp-"):
            raise OSError("disk trouble")
        return real_rename(src, dst)
    monkeypatch.setattr(M.os, "rename", failing)
    with pytest.raises((OSError, ModelError)):
        pull("blob", catalogue=index.catalogue, pip_args=index.pip_args, stream=io.StringIO(), force=True)
    monkeypatch.setattr(M.os, "rename", real_rename)
    assert (d / "adapter" / "w.bin").read_bytes() == b"trained" and find("blob") == path

    with pytest.raises(ModelError, match="trained drafter.*--with-drafter"):
        remove("blob")
    assert find("blob") == path
    out = subprocess.run([sys.executable, "-m", "tricode", "model", "remove", "blob"], capture_output=True,
                         text=True, env=dict(os.environ))
    assert out.returncode != 0 and "--with-drafter" in out.stderr and d.is_dir()
    out = subprocess.run([sys.executable, "-m", "tricode", "model", "remove", "blob", "--with-drafter"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert find("blob") is None and not d.exists()
