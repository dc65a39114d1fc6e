"""The training set that travels to a GPU machine: packed rows, compressed, under a size limit.

`tricode pack` reads prepared data (training/fim.py's ``prepare_data``: ``train_<L>.npy``,
``heldout_<L>.npy``, ``tokenizer.json``, the split manifests) and writes a folder that fits the
room the code and the travelling state leave in the 64 MiB working tree:

    train_<L>.npy.xz     a run of training rows (lzma; .npy inside), as many as fit
    heldout_<L>.npy.xz   the first `heldout_rows` held-out rows (held-out loss on the GPU machine)
    tokenizer.json, heldout_files.txt
    pack.json            rows, tokens, the row range taken, sha256 of both arrays, the checks made

Rows are taken from `start_row` on (wrapping), so that successive leases can carry different slices
of a corpus larger than one pack. Before writing, the split manifests are checked: no file of the
training list is in the held-out list, hashes to the held-out split, or has a HumanEval path
(training/corpus.py's rules); a pack that breaks one is refused. The rows themselves are what
``prepare_data`` built from the training list only.

`ensure_unpacked` is the GPU side: it decompresses a pack in place (checking the sha256) and returns
the folder training reads. Only the standard library and numpy are needed there.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import time
from pathlib import Path

import numpy as np

MiB = 2**20
CHUNK_ROWS = 1024          # rows compressed at a time while filling the budget
XZ_PRESET = 6


class PackError(Exception):
    pass


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def check_split(data_dir: Path) -> dict:
    """The exclusion checks on the manifests; PackError naming the first offending key."""
    from training.corpus import is_excluded_path, read_manifest, split_of

    train_list = data_dir / "train_files.txt"
    held_list = data_dir / "heldout_files.txt"
    if not train_list.is_file() or not held_list.is_file():
        raise PackError(f"{data_dir} has no train_files.txt / heldout_files.txt: prepare the data with "
                        f"`tricode train` (training/fim.py prepare_data) first")
    train, held = read_manifest(train_list), set(read_manifest(held_list))
    for key in train:
        if key in held:
            raise PackError(f"{key} is in both train_files.txt and heldout_files.txt")
        if split_of(key) != "train":
            raise PackError(f"{key} hashes to the held-out split but is listed for training")
        if is_excluded_path(key):
            raise PackError(f"{key} names HumanEval (benchmark data) and must not be trained on")
    for key in held:
        if split_of(key) != "heldout":
            raise PackError(f"{key} is listed held-out but hashes to the training split")
    return {"train_files": len(train), "heldout_files": len(held),
            "train_files_sha256": hashlib.sha256(train_list.read_bytes()).hexdigest()}


def _xz(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    return lzma.compress(buf.getvalue(), preset=XZ_PRESET)


def build_pack(data_dir: str | os.PathLike, out: str | os.PathLike, *, max_mib: float = 24.0,
               seq_len: int = 1024, heldout_rows: int = 256, start_row: int = 0, log=print) -> dict:
    """Write the pack (see the module docstring); returns pack.json's content."""
    data_dir, out = Path(data_dir), Path(out)
    t0 = time.time()
    checks = check_split(data_dir)
    train = np.load(data_dir / f"train_{seq_len}.npy", mmap_mode="r")
    held = np.load(data_dir / f"heldout_{seq_len}.npy", mmap_mode="r")[:heldout_rows]
    out.mkdir(parents=True, exist_ok=True)
    fixed = 0
    for name in ("tokenizer.json", "heldout_files.txt"):
        shutil.copy(data_dir / name, out / name)
        fixed += (out / name).stat().st_size
    held_xz = _xz(np.asarray(held))
    src = data_dir / "data_report.json"
    source_report = json.loads(src.read_text()) if src.is_file() else None
    fixed += len(held_xz) + 8192 + len(json.dumps(source_report, indent=1, sort_keys=True))   # + pack.json
    room = int(max_mib * MiB) - fixed
    if room <= 0:
        raise PackError(f"{max_mib} MiB leaves no room for training rows (tokenizer and held-out rows "
                        f"take {fixed / MiB:.1f} MiB)")
    # estimate the compressed bytes per row from a sample, then compress the whole run once and trim
    n_total = train.shape[0]
    order = (start_row + np.arange(n_total)) % n_total
    sample = np.asarray(train[order[:CHUNK_ROWS]])
    per_row = len(_xz(sample)) / len(sample)
    n = min(n_total, int(room / per_row))
    while True:
        rows = np.asarray(train[np.sort(order[:n])]) if n < n_total else np.asarray(train)
        blob = _xz(rows)
        if len(blob) <= room:
            break
        if n <= 1:
            raise PackError(f"even {n} row takes {len(blob)} bytes, over the {room} bytes left")
        n = max(1, min(n - 1, int(n * room / len(blob) * 0.995)))
        log(f"pack: {len(blob) / MiB:.2f} MiB is over the room of {room / MiB:.2f} MiB; retrying with {n} rows")
    (out / f"train_{seq_len}.npy.xz").write_bytes(blob)
    (out / f"heldout_{seq_len}.npy.xz").write_bytes(held_xz)
    for stale in (out / f"train_{seq_len}.npy", out / f"heldout_{seq_len}.npy"):
        stale.unlink(missing_ok=True)
    rep = {"seq_len": seq_len, "train_rows": int(rows.shape[0]), "train_tokens": int(rows.size),
           "source_rows": int(n_total), "start_row": int(start_row) % max(1, n_total),
           "heldout_rows": int(held.shape[0]), "train_sha256": _sha(rows), "heldout_sha256": _sha(held),
           "compression": f"lzma preset {XZ_PRESET} of .npy", "bytes_per_token": round(len(blob) / rows.size, 3),
           "checks": checks, "seconds": round(time.time() - t0, 1)}
    if source_report is not None:
        rep["source_report"] = source_report
    (out / "pack.json").write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
    rep["bytes"] = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log(f"pack: {rep['train_rows']:,} of {n_total:,} rows ({rep['train_tokens']:,} tokens, "
        f"{rep['bytes_per_token']} bytes/token), {rep['bytes'] / MiB:.1f} MiB in {rep['seconds']} s")
    return rep


def ensure_unpacked(data_dir: str | os.PathLike, seq_len: int = 1024) -> Path:
    """`data_dir` ready for training: the .npy files there, decompressed from a pack (and checked
    against pack.json) when only the .xz files are present."""
    data_dir = Path(data_dir)
    info = json.loads((data_dir / "pack.json").read_text()) if (data_dir / "pack.json").is_file() else {}
    for split in ("train", "heldout"):
        npy = data_dir / f"{split}_{seq_len}.npy"
        xz = data_dir / f"{split}_{seq_len}.npy.xz"
        if npy.is_file() or not xz.is_file():
            continue
        raw = lzma.decompress(xz.read_bytes())
        tmp = npy.with_suffix(".tmp")
        tmp.write_bytes(raw)
        arr = np.load(tmp, mmap_mode="r")
        want = info.get(f"{split}_sha256")
        if want and _sha(arr) != want:
            tmp.unlink()
            raise PackError(f"{xz} does not match pack.json's sha256: a damaged copy; rebuild it with `tricode pack`")
        os.replace(tmp, npy)
    if not (data_dir / f"train_{seq_len}.npy").is_file():
        raise PackError(f"{data_dir} has neither train_{seq_len}.npy nor train_{seq_len}.npy.xz: "
                        f"build a pack with `tricode pack` (or prepare data with `tricode train`)")
    return data_dir
