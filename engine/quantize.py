"""Writing a quantized copy of a float NLD checkpoint (`tricode quantize`).

Round-to-nearest, tensor by tensor, straight from the safetensors files (no model is built, so an
8B checkpoint needs about one shard in memory): each decoder-layer linear weight becomes its packed
tensors (engine/quant.py), every other tensor is copied unchanged, the shard layout and index are
kept, config.json gains a `quantization` section, and every other file of the directory
(tokenizer.json, linear_spec_lora/, notes) is copied. The result loads with load_checkpoint like any
checkpoint. No calibration data is read.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from engine.checkpoint import CheckpointError, _weight_files, read_config, read_quantization
from engine.quant import QUANTIZED_LINEARS, QuantError, QuantSpec, check_shape, quantize_weight

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _is_quantized_linear(name: str) -> bool:
    parts = name.split(".")
    return (len(parts) >= 6 and parts[0] == "encoder" and parts[1] == "layers" and parts[-1] == "weight"
            and ".".join(parts[3:-1]) in QUANTIZED_LINEARS)


def quantize_checkpoint(src: str | Path, dst: str | Path, spec: QuantSpec,
                        progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write the quantized copy of `src` to `dst`; returns a summary (tensors, bytes before/after).
    `progress(done, total, name)` is called after each tensor. Raises CheckpointError or QuantError."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory; --model must be an NLD checkpoint directory")
    cfg = read_config(src)
    if read_quantization(src) is not None:
        raise QuantError(f"{src}: already quantized (config.json has a 'quantization' section); "
                         f"quantize the original float checkpoint instead")
    files = _weight_files(src)
    if dst.resolve() == src.resolve():
        raise QuantError(f"--out {dst} is the source directory; write the quantized copy elsewhere")
    if dst.exists() and any(dst.iterdir()):
        raise QuantError(f"--out {dst} exists and is not empty; pass a new directory")

    # Check every linear's shape before writing anything.
    shapes = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    linears = [n for n in files if _is_quantized_linear(n)]
    if len(linears) != cfg.num_hidden_layers * len(QUANTIZED_LINEARS):
        raise CheckpointError(f"{src}: found {len(linears)} decoder linear weights, config.json implies "
                              f"{cfg.num_hidden_layers * len(QUANTIZED_LINEARS)}")
    for n in linears:
        check_shape(spec, n, *shapes[n])

    dst.mkdir(parents=True, exist_ok=True)
    total, done = len(files), 0
    bytes_in = bytes_out = 0
    weight_map: dict[str, str] = {}
    for file in sorted(set(files.values())):
        out: dict[str, torch.Tensor] = {}
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                bytes_in += t.numel() * t.element_size()
                if _is_quantized_linear(name):
                    for part, q in quantize_weight(t, spec).items():
                        out[name.removesuffix("weight") + part] = q.contiguous()
                else:
                    out[name] = t
                done += 1
                if progress is not None:
                    progress(done, total, name)
        bytes_out += sum(t.numel() * t.element_size() for t in out.values())
        save_file(out, dst / file.name, metadata={"format": "pt"})
        weight_map.update({n: file.name for n in out})
    if (src / "model.safetensors.index.json").is_file():
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": bytes_out}, "weight_map": weight_map}, indent=1))

    raw = json.loads((src / "config.json").read_text())
    raw["quantization"] = spec.to_config()
    (dst / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    written = {*WEIGHT_FILES, "config.json", *(p.name for p in files.values())}
    for item in src.iterdir():
        if item.name in written:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
    return {"tensors": total, "quantized": len(linears), "bytes_in": bytes_in, "bytes_out": bytes_out,
            "bits": spec.bits, "group_size": spec.group_size}
