"""The travelling training state: what a cumulative run must hand to the next one, in few small files.

A GPU machine is lent minutes at a time and returns at most 8 files of at most 16 MiB each; the same
state must also travel back up with the code (the whole working tree under 64 MiB). So the state is
written as safetensors shards under a byte limit per file and a limit on the number of files, in the
richest of these formats that fits (tried in this order):

1. ``fp32+moments``: fp32 weights and AdamW's two moments in bf16 (8 bytes a parameter) - an exact
   continuation up to the moments' rounding;
2. ``fp32``: fp32 weights (4 bytes a parameter); the moments restart from zero, so the next run
   re-warms its learning rate (AdamW with beta2 0.95 rebuilds them in a few dozen steps);
3. ``bf16``: bf16 weights (2 bytes a parameter), moments restart; one rounding of the weights per run
   (relative 2^-9), training goes on in fp32 from there.

A tensor larger than one file's payload is cut along its first dimension into pieces ``name#k``.
Shard 1's safetensors metadata holds the state's description (``carry`` key, JSON): format, step,
tokens seen, the training config, the list of pieces, and which generation (step) every shard
belongs to, so that a set mixed from two saves is refused. The run record ``runs.jsonl`` lives
beside the shards (training/cumulative.py writes it). This module knows nothing of schedules.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

MiB = 2**20
HEADER_MARGIN = 64 * 1024           # room per file for the safetensors JSON header (checked after writing)
SHARD_GLOB = "state-*-of-*.safetensors"
RETURN_TOTAL = 62 * MiB             # the device tool returns 64 MiB in all: the state, runs.jsonl and the logs
FORMATS = ("fp32+moments", "fp32", "bf16")


class CarryError(Exception):
    """A travelling state that cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class CarryBudget:
    """Where the state must fit: at most `max_files` files of at most `file_bytes` each, and (the
    upload side) at most `total_bytes` in all."""
    max_files: int = 6
    file_bytes: int = 16 * MiB
    total_bytes: int | None = None


def _pieces(name: str, t: torch.Tensor, payload: int) -> list[tuple[str, torch.Tensor]]:
    nbytes = t.numel() * t.element_size()
    if nbytes <= payload:
        return [(name, t)]
    if t.dim() == 0:
        raise CarryError(f"{name}: a scalar over {payload} bytes cannot be split")
    row = nbytes // t.shape[0]
    per = max(1, payload // row)
    if per * row > payload:
        raise CarryError(f"{name}: one row of {row} bytes is larger than a file's payload ({payload} bytes)")
    return [(f"{name}#{k}", t[i:i + per].contiguous()) for k, i in enumerate(range(0, t.shape[0], per))]


def plan_shards(tensors: dict[str, torch.Tensor], budget: CarryBudget) -> list[dict[str, torch.Tensor]] | None:
    """Tensors (split where needed) packed in order into files under the budget, or None if they do
    not fit it."""
    payload = budget.file_bytes - HEADER_MARGIN
    files: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    total = 0
    for name, t in tensors.items():
        for pname, piece in _pieces(name, t, payload):
            n = piece.numel() * piece.element_size()
            if used + n > payload:
                files.append({})
                used = 0
            files[-1][pname] = piece
            used += n
            total += n
    if len(files) > budget.max_files or (budget.total_bytes is not None and total > budget.total_bytes):
        return None
    return files


def state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer | None, fmt: str) -> dict[str, torch.Tensor]:
    """The tensors a format carries: `w/<name>` for every trainable parameter (every parameter when
    none is frozen), plus `m/<name>` and `v/<name>` (AdamW moments, bf16) for fp32+moments."""
    wdtype = torch.bfloat16 if fmt == "bf16" else torch.float32
    out = {}
    params = [(n, p) for n, p in model.named_parameters()]
    for n, p in params:
        out[f"w/{n}"] = p.detach().to("cpu", wdtype).contiguous()
    if fmt == "fp32+moments":
        if opt is None:
            raise CarryError("fp32+moments needs the optimizer")
        for n, p in params:
            st = opt.state.get(p)
            if st and "exp_avg" in st:
                out[f"m/{n}"] = st["exp_avg"].detach().to("cpu", torch.bfloat16).contiguous()
                out[f"v/{n}"] = st["exp_avg_sq"].detach().to("cpu", torch.bfloat16).contiguous()
    return out


def _adam_step(opt: torch.optim.Optimizer | None) -> int:
    if opt is None:
        return 0
    for st in opt.state.values():
        if "step" in st:
            return int(float(st["step"]))
    return 0


def save_carry(path: str | os.PathLike, model: torch.nn.Module, opt: torch.optim.Optimizer | None,
               meta: dict, budget: CarryBudget = CarryBudget(), formats: tuple[str, ...] = FORMATS) -> dict:
    """Write the state into `path` in the richest format of `formats` that fits `budget`; returns
    {format, files, bytes}. Files of an earlier save that this one does not overwrite are removed.
    Each file is written under a temporary name and renamed, so a reader never sees half a file."""
    from safetensors.torch import save_file
    from safetensors import safe_open  # noqa: F401  (fail here, not at load, if it is missing)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        if fmt not in FORMATS:
            raise CarryError(f"unknown carry format {fmt!r}; one of {', '.join(FORMATS)}")
        tensors = state_tensors(model, opt, fmt)
        files = plan_shards(tensors, budget)
        if files is not None:
            break
    else:
        need = sum(t.numel() for n, t in state_tensors(model, opt, formats[-1]).items()) * 2
        raise CarryError(f"the state does not fit {budget.max_files} files of {budget.file_bytes} bytes "
                         f"(total limit {budget.total_bytes}) even as {formats[-1]} (~{need} bytes): "
                         f"allow more files or train a smaller model")
    n = len(files)
    names = [f"state-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    pieces = {}
    for fname, part in zip(names, files):
        for pname in part:
            pieces[pname] = fname
    desc = dict(meta, format=fmt, adam_step=_adam_step(opt) if fmt == "fp32+moments" else 0,
                generation=int(meta.get("step", 0)), files=names)
    written = 0
    for i, (fname, part) in enumerate(zip(names, files)):
        md = {"format": "pt", "generation": str(desc["generation"]), "of": str(n)}
        if i == 0:
            md["carry"] = json.dumps(desc)
        tmp = path / (fname + ".tmp")
        save_file(part, tmp, metadata=md)
        written += tmp.stat().st_size
        if tmp.stat().st_size > budget.file_bytes:
            tmp.unlink()
            raise CarryError(f"{fname} came out at {tmp.stat().st_size} bytes, over {budget.file_bytes}")
        os.replace(tmp, path / fname)
    for old in path.glob(SHARD_GLOB):
        if old.name not in names:
            old.unlink()
    return {"format": fmt, "files": n, "bytes": written}


def has_carry(path: str | os.PathLike | None) -> bool:
    return path is not None and any(Path(path).glob(SHARD_GLOB))


def read_carry(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(description, tensors with pieces joined) of the state in `path`; CarryError if the shards are
    missing, mixed from two saves, or incomplete."""
    from safetensors import safe_open

    path = Path(path)
    shards = sorted(path.glob(SHARD_GLOB))
    if not shards:
        raise CarryError(f"no {SHARD_GLOB} in {path}: nothing to continue from (drop --carry-in to start fresh)")
    first = shards[0]
    with safe_open(str(first), "pt") as f:
        md = f.metadata() or {}
    if "carry" not in md:
        raise CarryError(f"{first} has no 'carry' description in its metadata: not a training state")
    desc = json.loads(md["carry"])
    want = desc["files"]
    if [s.name for s in shards] != want:
        raise CarryError(f"{path} holds {[s.name for s in shards]} but the state lists {want}: "
                         f"an incomplete copy; copy every state-*.safetensors file of one save")
    raw: dict[str, torch.Tensor] = {}
    for s in shards:
        with safe_open(str(s), "pt") as f:
            m = f.metadata() or {}
            if m.get("generation") != str(desc["generation"]):
                raise CarryError(f"{s} is from step {m.get('generation')}, the state from step "
                                 f"{desc['generation']}: two saves mixed; copy one save's files")
            for k in f.keys():
                raw[k] = f.get_tensor(k)
    joined: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for k, t in raw.items():
        base, _, idx = k.partition("#")
        joined.setdefault(base, []).append((int(idx) if idx else 0, t))
    tensors = {k: torch.cat([t for _, t in sorted(v, key=lambda x: x[0])]) if len(v) > 1 else v[0][1]
               for k, v in joined.items()}
    return desc, tensors


def load_carry(path: str | os.PathLike, model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> dict:
    """Load the state into `model` (and `opt`'s moments when carried). Returns the description with
    `moments_loaded` set."""
    desc, tensors = read_carry(path)
    params = dict(model.named_parameters())
    missing = [n for n in params if f"w/{n}" not in tensors]
    if missing:
        raise CarryError(f"{path}: the state has no weights for {missing[:3]}...: a different model shape")
    with torch.no_grad():
        for n, p in params.items():
            w = tensors[f"w/{n}"]
            if w.shape != p.shape:
                raise CarryError(f"{path}: {n} is {tuple(w.shape)} in the state, {tuple(p.shape)} in the model")
            p.copy_(w.to(p.dtype))
    moments = opt is not None and desc["format"] == "fp32+moments" and all(
        f"m/{n}" in tensors for n, p in params.items() if p.requires_grad)
    if moments:
        sd = opt.state_dict()
        index = {id(p): i for i, p in enumerate(p for g in opt.param_groups for p in g["params"])}
        state = {}
        for n, p in params.items():
            if p.requires_grad and id(p) in index:
                state[index[id(p)]] = {"step": torch.tensor(float(desc["adam_step"])),
                                       "exp_avg": tensors[f"m/{n}"].float(),
                                       "exp_avg_sq": tensors[f"v/{n}"].float()}
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
    return dict(desc, moments_loaded=moments)
