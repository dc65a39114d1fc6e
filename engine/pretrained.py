"""Pretrained autoregressive checkpoints of the Qwen2 / Llama / Mistral family in Hugging Face layout.

Knows the three `architectures` a config.json may name (Qwen2ForCausalLM, LlamaForCausalLM,
MistralForCausalLM), the keys that decide what the network is (q/k/v bias, tied embeddings, GQA, RoPE
base, RMSNorm eps) and the HF tensor names (`model.layers.N.self_attn.q_proj.weight`, `lm_head.weight`
unless tied), and builds the engine's model (fused qkv / gate_up) from HF-named tensors: the HF
directory here, a GGUF file through engine/gguf.py. What the network cannot compute (RoPE scaling,
sliding-window attention shorter than the context, biases outside q/k/v, an activation other than
SiLU) is a CheckpointError naming the key. A drafter beside the checkpoint is attached by `finish`
(engine/drafter.py). Knows nothing of tokenizers: the daemon reads those.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from engine.checkpoint import (Checkpoint, CheckpointError, _fused_rows, _read_tensors, _weight_files, config_from_dict,
                               cpu_has_native_bf16, layer_name_map, pick_device, pick_dtype)
from engine.config import ModelConfig, rope_inv_freq
from engine.model import NLDModel

log = logging.getLogger(__name__)

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral"}


def hf_architecture(path: Path) -> str | None:
    """The AR architecture a directory's config.json names, or None (an NLD checkpoint, or no config).
    Another causal LM (`...ForCausalLM`, not NLD) is a CheckpointError naming its architecture."""
    try:
        raw = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    archs = (raw.get("architectures") or []) if isinstance(raw, dict) else []
    found = next((a for a in archs if a in ARCHITECTURES), None)
    if found is None and raw.get("model_type") != "nemotron_labs_diffusion":
        other = [a for a in archs if isinstance(a, str) and a.endswith("ForCausalLM")]
        if other:
            raise CheckpointError(f"{path / 'config.json'}: architecture {other[0]} is not served; tricode "
                                  f"serves {', '.join(ARCHITECTURES)}, NLD checkpoints and GGUF files of "
                                  f"the qwen2/llama architectures")
    return found


def config_from_hf(raw: dict, where: str) -> ModelConfig:
    """ModelConfig for an HF AR config.json dict; `where` names the file in errors."""
    archs = raw.get("architectures") or []
    arch = next((a for a in archs if a in ARCHITECTURES), None)
    if arch is None:
        raise CheckpointError(f"{where}: architectures {archs} are not served; tricode serves "
                              f"{', '.join(ARCHITECTURES)} and NLD checkpoints")
    model_type = ARCHITECTURES[arch]
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{where}: hidden_act {act!r} is not served (the MLP is SiLU-gated)")
    if model_type == "qwen2":
        bias = True                                  # Qwen2 always has q/k/v biases (and no others)
        if raw.get("use_sliding_window"):
            raise CheckpointError(f"{where}: use_sliding_window is true; sliding-window attention is not served")
    else:
        bias = bool(raw.get("attention_bias", False))
        if bias:
            raise CheckpointError(f"{where}: attention_bias is true (a bias on o_proj too); not served")
        if raw.get("mlp_bias"):
            raise CheckpointError(f"{where}: mlp_bias is true; not served")
    d = dict(raw, model_type=model_type, attention_bias=bias, block_size=8, dlm_paradigm="autoregressive",
             tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)))
    window = raw.get("sliding_window") if model_type == "mistral" else None
    if window:
        # identical to full attention while the context fits the window: serve only that much
        d["max_position_embeddings"] = min(int(raw.get("max_position_embeddings", window)), int(window))
    eos = raw.get("eos_token_id")
    if eos is None or eos == []:
        raise CheckpointError(f"{where}: eos_token_id is missing; the decoders need it to stop")
    if raw.get("bos_token_id") is None:
        d["bos_token_id"] = eos[0] if isinstance(eos, list) else eos
    return config_from_dict(d, where)


def ar_name_map(cfg: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """HF tensor name -> (our parameter name, slot in a fused parameter or None)."""
    m = {"model.embed_tokens.weight": ("embed.weight", None), "model.norm.weight": ("norm", None)}
    if not cfg.tie_word_embeddings:
        m["lm_head.weight"] = ("head.weight", None)
    return {**m, **layer_name_map(cfg, "model.", bias=cfg.attention_bias)}


def build_model(cfg: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]], *, device: torch.device,
                dtype: torch.dtype, source: str, where: str) -> NLDModel:
    """The model filled from HF-named tensors (every name of `ar_name_map` exactly once). Built on the
    meta device and allocated in `dtype`, so a model costs its own size in memory, not twice."""
    names = ar_name_map(cfg)
    with torch.device("meta"):
        model = NLDModel(cfg).to(dtype)
    model.to_empty(device=device)
    model.tie_weights()
    model.inv_freq = rope_inv_freq(cfg)[0].to(device)  # to_empty left the buffer uninitialised
    model.source = source
    params = dict(model.named_parameters(remove_duplicate=False))
    seen = set()
    with torch.no_grad():
        for name, t in tensors:
            if name not in names:
                continue
            ours, slot = names[name]
            target = params[ours] if slot is None else params[ours][_fused_rows(cfg, ours, slot)]
            if tuple(t.shape) != tuple(target.shape):
                raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(t.shape)}, "
                                      f"the configuration implies {tuple(target.shape)}")
            target.copy_(t.to(target.dtype))
            seen.add(name)
    missing = [n for n in names if n not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: tensor {missing[0]!r} is missing{more}")
    model.eval()
    model.requires_grad_(False)
    return model


def finish(model: NLDModel, cfg: ModelConfig, path: Path, fmt: str, device: torch.device, dtype: torch.dtype,
           auto: bool, drafter: bool = True) -> Checkpoint:
    """The Checkpoint, with its drafter when one lies beside it and `drafter` (engine/drafter.py: a
    DrafterError if it was trained for other weights), and the bf16 prefill twin under the same rule
    as NLD checkpoints."""
    if drafter:
        from engine.drafter import attach
        cfg = attach(model, cfg, path, dtype)
        model.requires_grad_(False)
    if auto and device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16():
        model.add_prefill_twin(torch.bfloat16)
    log.info("loaded %s (%s, %s): %.1fM parameters, %s %s%s%s, modes %s", path, fmt, cfg.family,
             cfg.num_parameters / 1e6, device, dtype, ", drafter LoRA" if model.has_lora else "",
             ", bf16 prefill" if model.prefill_twin else "",
             "/".join(cfg.modes))
    return Checkpoint(path=path, config=cfg, model=model, device=device, dtype=dtype, format=fmt)


def load_hf_ar(path: Path, device=None, dtype=None, drafter: bool = True) -> Checkpoint:
    """An HF safetensors directory of a Qwen2/Llama/Mistral causal LM (with its drafter, see `finish`)."""
    auto = dtype is None or dtype == "auto"
    f = path / "config.json"
    try:
        raw = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: cannot be read as JSON ({e})") from None
    if raw.get("eos_token_id") is None and (path / "generation_config.json").is_file():
        try:
            raw["eos_token_id"] = json.loads((path / "generation_config.json").read_text()).get("eos_token_id")
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    if raw.get("quantization_config"):
        kind = raw["quantization_config"].get("quant_method", "?")
        raise CheckpointError(f"{f}: quantization_config ({kind}) is not served; use the float checkpoint "
                              f"or its GGUF file")
    cfg = config_from_hf(raw, str(f))
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    files = _weight_files(path)
    names = ar_name_map(cfg)
    missing = [n for n in names if n not in files]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: tensor {missing[0]!r} is missing{more}")
    stray = [n for n in files if n.endswith(".bias") and n not in names]
    if stray:
        raise CheckpointError(f"{path}: tensor {stray[0]!r}: a bias tricode does not serve")
    model = build_model(cfg, _read_tensors(files, list(names)), device=device, dtype=dtype,
                        source=str(path), where=str(path))
    return finish(model, cfg, path, "hf", device, dtype, auto, drafter)
