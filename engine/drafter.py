"""The drafter of a pretrained AR checkpoint: an o_proj LoRA trained with the block-diffusion draft
objective on top of the frozen model (training/ar_drafter.py), which makes a Qwen2/Llama checkpoint
tri-mode: `diffusion`, and `spec` with diffusion drafts, besides `ar` (DESIGN.md §6).

Knows where a drafter lives, what it records and how it is attached to a loaded model:

    <checkpoint>.drafter/         beside the GGUF file or HF directory it was trained for
        drafter.json              the base it was trained on (sha256, size, mtime), the mask token
                                  (id and text), block size, LoRA rank and alpha, a training summary
        linear_spec_lora/         adapter_config.json + adapter_model.safetensors (PEFT names, as NLD's)

The mask token: an AR vocabulary has none, so the drafter borrows a token the model never meets in
the prompts tricode builds (training/ar_drafter.py chooses it; Qwen2.5-Coder's `<|fim_pad|>`). Its id
is recorded here and becomes the loaded config's `mask_token_id`, so the engine masks with exactly the
id the LoRA was trained on, and the decoders never emit it (runner.py sets its logit to -inf).

The base is identified by its sha256: of the GGUF file (the number the registry pins for a pulled
model), or for an HF directory of its config.json and *.safetensors files (sha256 over one
"name sha256" line per file, in name order). A drafter recorded for other weights is refused
(DrafterError): its LoRA would steer a model it never saw. Hashing a 0.5B file costs about a second,
so a base whose size and modification time equal the recorded ones is taken as the recorded one.

Knows nothing of text or training: the mask token's text is recorded for people, not used here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError, load_lora, save_lora
from engine.config import ModelConfig
from engine.model import NLDModel

log = logging.getLogger(__name__)

INFO = "drafter.json"
ADAPTER = "linear_spec_lora"
FORMAT = 1


class DrafterError(CheckpointError):
    """A drafter that cannot be used with this checkpoint; the message says why and what to do."""


def drafter_dir(checkpoint: str | os.PathLike) -> Path:
    """Where the drafter of the checkpoint at `checkpoint` lives: `<checkpoint>.drafter` beside it."""
    p = Path(checkpoint).expanduser()
    return p.with_name(p.name + ".drafter")


def _base_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix == ".safetensors"))
    if not files:
        raise DrafterError(f"{path}: no config.json or *.safetensors to identify the base model by")
    return files


def _stat(path: Path) -> tuple[int, int]:
    """(bytes, newest mtime in ns) of the base's files."""
    st = [f.stat() for f in _base_files(path)]
    return sum(s.st_size for s in st), max(s.st_mtime_ns for s in st)


def _sha256_file(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def base_identity(path: str | os.PathLike) -> dict:
    """{sha256, size, mtime_ns} of a GGUF file or HF directory (module docstring)."""
    path = Path(path).expanduser()
    files = _base_files(path)
    if path.is_file():
        sha = _sha256_file(path)
    else:
        sha = hashlib.sha256("".join(f"{f.name} {_sha256_file(f)}\n" for f in files).encode()).hexdigest()
    size, mtime = _stat(path)
    return {"sha256": sha, "size": size, "mtime_ns": mtime}


def base_sha256(path: str | os.PathLike, recorded: dict | None = None) -> str:
    """The base's sha256; `recorded` ({sha256, size, mtime_ns}) is trusted while size and mtime match."""
    path = Path(path).expanduser()
    if recorded and (recorded.get("size"), recorded.get("mtime_ns")) == _stat(path) and recorded.get("sha256"):
        return recorded["sha256"]
    return base_identity(path)["sha256"]


def read_info(d: Path) -> dict:
    """drafter.json, checked for the keys the engine needs."""
    f = d / INFO
    try:
        info = json.loads(f.read_text())
        int(info["mask_token_id"]), int(info["block_size"]), str(info["base"]["sha256"])
    except FileNotFoundError:
        raise DrafterError(f"{f}: missing; a drafter folder holds {INFO} and {ADAPTER}/ "
                           f"(train one with `tricode train --drafter-for MODEL`)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DrafterError(f"{f}: needs mask_token_id, block_size and base.sha256 ({type(e).__name__}: {e})") from None
    return info


def attach(model: NLDModel, cfg: ModelConfig, checkpoint: Path, dtype: torch.dtype) -> ModelConfig:
    """Attach the drafter found beside `checkpoint` (if any) to `model`: its LoRA, and its mask token
    and block size in the returned config (also set as `model.cfg`). No drafter: `cfg` unchanged."""
    d = drafter_dir(checkpoint)
    if not d.is_dir():
        return cfg
    info = read_info(d)
    want = info["base"]["sha256"]
    have = base_sha256(checkpoint, info["base"])
    if have != want:
        raise DrafterError(
            f"{d}: this drafter was trained for base weights with sha256 {want[:16]}..., but {checkpoint} has "
            f"sha256 {have[:16]}...; a LoRA trained on other weights cannot draft for these. Train a drafter "
            f"for this model (`tricode train --drafter-for {checkpoint} --fresh`) or move {d.name} away")
    mask, block = int(info["mask_token_id"]), int(info["block_size"])
    if not 0 <= mask < cfg.vocab_size or mask == cfg.eos_token_id:
        raise DrafterError(f"{d / INFO}: mask_token_id {mask} is not a usable token of this model "
                           f"(vocabulary 0..{cfg.vocab_size - 1}, eos {cfg.eos_token_id})")
    load_lora(model, d / ADAPTER, dtype)
    cfg = dataclasses.replace(cfg, mask_token_id=mask, block_size=block)
    model.cfg = cfg
    log.info("drafter %s: rank %d, mask token %d (%s), block %d", d, model.layers[0].o_lora.A.shape[0], mask,
             info.get("mask_token", "?"), block)
    return cfg


def save(model: NLDModel, checkpoint: str | os.PathLike, *, mask_token_id: int, mask_token: str, block_size: int,
         base: dict, summary: dict, out: str | os.PathLike | None = None) -> Path:
    """Write the drafter of `model` (its LoRA) for the base at `checkpoint`, atomically: a folder is
    complete or absent. `base`: base_identity(checkpoint), taken before training. Returns the folder."""
    final = Path(out) if out is not None else drafter_dir(checkpoint)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)       # mkdtemp makes it private; a drafter is an ordinary folder
    try:
        save_lora(model, tmp / ADAPTER, torch.float32, prefix="base_model.model.model.layers")
        layer0 = model.layers[0].o_lora
        info = {"format": FORMAT, "base": {"path": str(Path(checkpoint).expanduser().resolve()), **base},
                "mask_token_id": int(mask_token_id), "mask_token": mask_token, "block_size": int(block_size),
                "rank": int(layer0.A.shape[0]), "alpha": float(layer0.scale * layer0.A.shape[0]),
                "family": model.cfg.family, **summary}
        (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
