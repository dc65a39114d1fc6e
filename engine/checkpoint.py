"""Loading and saving checkpoints in the NLD Hugging Face layout; `load_checkpoint` also dispatches
pretrained AR checkpoints (Qwen2/Llama/Mistral) to engine/pretrained.py (an HF directory) and
engine/gguf.py (a .gguf file).

A checkpoint directory holds `config.json`, the weights (`model.safetensors`, or shards listed in
`model.safetensors.index.json`), `tokenizer.json` (read by the daemon, only checked for here) and
optionally `linear_spec_lora/` (a PEFT LoRA on o_proj: `adapter_config.json` +
`adapter_model.safetensors`). Every problem is raised as CheckpointError naming the file and the key.
The model is built on the meta device and filled tensor by tensor, so an 8B checkpoint needs its own
size in memory once, not twice.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import ModelConfig, rope_inv_freq
from engine.model import NLDModel
from engine.quant import QUANTIZED_LINEARS, QuantError, QuantSpec, prepare_layers, quantize_layers

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


class CheckpointError(Exception):
    """A checkpoint that cannot be served; the message says which file/key and what to do."""


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    model: NLDModel
    device: torch.device
    dtype: torch.dtype
    format: str = "nld"         # nld | hf (an AR safetensors directory) | gguf

    @property
    def tokenizer_path(self) -> Path:
        """tokenizer.json in a directory; a GGUF file carries its vocabulary itself."""
        return self.path if self.format == "gguf" else self.path / "tokenizer.json"

    @property
    def capabilities(self) -> dict:
        """What this checkpoint is and can do, for `tricode daemon status` and error messages."""
        cfg = self.config
        return {"path": str(self.path), "format": self.format, "family": cfg.family,
                "model_type": cfg.model_type, "drafter": cfg.has_drafter, "modes": list(cfg.modes),
                "parameters": cfg.num_parameters, "layers": cfg.num_hidden_layers,
                "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
                "context_length": cfg.max_position_embeddings}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16: bf16 matmuls run at about twice the fp32 rate (without them, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """CUDA: bf16; CPU: fp32 (plus a bf16 prefill twin where the CPU has native bf16: load_checkpoint)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


# Hugging Face tensor name -> (our parameter name, slot in a fused parameter or None).
def _name_map(cfg: ModelConfig, quant: QuantSpec | None = None) -> dict[str, tuple[str, int | None]]:
    """With `quant`, each quantized linear `X.weight` is its stored tensors `X.qweight`, `X.scales`...
    (engine/quant.py), fused along the output rows like the weights."""
    m = _float_name_map(cfg)
    if quant is None:
        return m
    out = {}
    for hf, (ours, slot) in m.items():
        if hf.removesuffix(".weight").split(".", 3)[-1] in QUANTIZED_LINEARS:
            for t in quant.tensor_names():
                out[hf.removesuffix("weight") + t] = (ours.removesuffix("weight") + t, slot)
        else:
            out[hf] = (ours, slot)
    return out


def layer_name_map(cfg: ModelConfig, prefix: str, bias: bool = False) -> dict[str, tuple[str, int | None]]:
    """The decoder layers' HF tensor names under `prefix` ("encoder." for NLD, "model." for the AR
    families) -> (our parameter name, slot in a fused parameter or None); `bias`: q/k/v biases (Qwen2)."""
    m = {}
    for i in range(cfg.num_hidden_layers):
        hf, ours = f"{prefix}layers.{i}.", f"layers.{i}."
        m[hf + "input_layernorm.weight"] = (ours + "input_norm", None)
        m[hf + "post_attention_layernorm.weight"] = (ours + "post_norm", None)
        for slot, p in enumerate("qkv"):
            m[hf + f"self_attn.{p}_proj.weight"] = (ours + "qkv.weight", slot)
            if bias:
                m[hf + f"self_attn.{p}_proj.bias"] = (ours + "qkv.bias", slot)
        m[hf + "self_attn.o_proj.weight"] = (ours + "o.weight", None)
        m[hf + "mlp.gate_proj.weight"] = (ours + "gate_up.weight", 0)
        m[hf + "mlp.up_proj.weight"] = (ours + "gate_up.weight", 1)
        m[hf + "mlp.down_proj.weight"] = (ours + "down.weight", None)
    return m


def _float_name_map(cfg: ModelConfig) -> dict[str, tuple[str, int | None]]:
    return {"encoder.embed_tokens.weight": ("embed.weight", None),
            "encoder.norm.weight": ("norm", None),
            "diffusion_head.weight": ("head.weight", None),
            **layer_name_map(cfg, "encoder.")}


def _fused_rows(cfg: ModelConfig, ours: str, slot: int) -> slice:
    d = cfg.head_dim
    if ".qkv." in ours:
        sizes = [cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.num_key_value_heads * d]
    else:
        sizes = [cfg.intermediate_size] * 2
    start = sum(sizes[:slot])
    return slice(start, start + sizes[slot])


def read_config(path: Path) -> ModelConfig:
    f = path / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing. A checkpoint directory needs config.json "
                              f"(is {path} an NLD checkpoint directory?)")
    try:
        raw = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if raw.get("model_type", "nemotron_labs_diffusion") != "nemotron_labs_diffusion":
        log.warning("%s: model_type is %r, not 'nemotron_labs_diffusion'; loading it as NLD", f, raw["model_type"])
        raw["model_type"] = "nemotron_labs_diffusion"
    if raw.get("tie_word_embeddings"):
        raise CheckpointError(f"{f}: tie_word_embeddings is true; NLD models have an untied diffusion_head")
    return config_from_dict(raw, f)


def config_from_dict(d: dict, where) -> ModelConfig:
    """ModelConfig.from_dict with its errors as CheckpointErrors naming `where`."""
    try:
        return ModelConfig.from_dict(d)
    except KeyError as e:
        raise CheckpointError(f"{where}: required key {e.args[0]!r} is missing") from None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def read_quantization(path: Path) -> QuantSpec | None:
    """config.json's `quantization` section (None for a float checkpoint)."""
    f = path / "config.json"
    try:
        section = json.loads(f.read_text()).get("quantization")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{f}: cannot read ({e})") from None
    if section is None:
        return None
    try:
        return QuantSpec.from_config(section)
    except QuantError as e:
        raise CheckpointError(f"{f}: quantization: {e}") from None


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it."""
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index (needs a 'weight_map' object): {e}") from None
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in set(files.values()):
            if not shard.is_file():
                raise CheckpointError(f"{shard}: missing (listed in {index.name})")
        return files
    if single.is_file():
        from safetensors import safe_open
        try:
            with safe_open(single, framework="pt") as f:
                return {name: single for name in f.keys()}
        except Exception as e:  # safetensors raises several types for a damaged header
            raise CheckpointError(f"{single}: cannot be read as safetensors ({e})") from None
    raise CheckpointError(f"{path}: no weights (model.safetensors or model.safetensors.index.json)")


def _read_tensors(files: dict[str, Path], wanted: list[str],
                  hint: str = "the file may be truncated"):
    """Yield (name, tensor) for the wanted names, opening each shard once; a read that fails is a
    CheckpointError naming the file, with `hint` saying what to do."""
    from safetensors import safe_open
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(file, framework="pt") as f:
                for name in names:
                    yield name, f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{file}: cannot read tensors ({e}); {hint}") from None


def load_checkpoint(path: str | Path, device=None, dtype=None, lora: bool = True) -> Checkpoint:
    """Build the model from an NLD checkpoint directory. With dtype "auto" (the default) on a CPU
    with native bf16, the fp32 model gets a bf16 twin for prompt prefills (NLDModel.prefill_twin).

    A quantized checkpoint (config.json `quantization`, engine/quant.py) gets QuantLinear layers and no
    twin: a twin would need float copies of the weights the quantization was meant to save, and one
    set of quantized layers serving every pass keeps greedy spec == ar."""
    auto = dtype is None or dtype == "auto"
    path = Path(path).expanduser()
    if path.is_file() and is_gguf_file(path):
        from engine.gguf import load_gguf
        return load_gguf(path, device=device, dtype=dtype, drafter=lora)
    if path.is_dir():
        from engine.pretrained import hf_architecture, load_hf_ar
        arch = hf_architecture(path)
        if arch is not None:
            return load_hf_ar(path, device=device, dtype=dtype, drafter=lora)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory or a GGUF file. Point --model at a checkpoint "
                              f"directory (config.json, model.safetensors) or a .gguf file")
    cfg = read_config(path)
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path / 'tokenizer.json'}: missing; the checkpoint needs its tokenizer")
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    quant = read_quantization(path)
    files = _weight_files(path)
    names = _name_map(cfg, quant)
    missing = [n for n in names if n not in files]
    if missing:
        where = "model.safetensors.index.json" if (path / "model.safetensors.index.json").is_file() else "model.safetensors"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path / where}: tensor {missing[0]!r} is missing{more}")

    with torch.device("meta"):
        model = NLDModel(cfg)
        if quant is not None:
            try:
                quantize_layers(model, quant)
            except QuantError as e:
                raise CheckpointError(f"{path / 'config.json'}: {e}") from None
    model.to_empty(device=device)
    model.to(dtype)
    model.inv_freq = rope_inv_freq(cfg)[0].to(device)  # to_empty left the buffer uninitialised
    model.source = str(path)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for name, t in _read_tensors(files, list(names)):
            ours, slot = names[name]
            target = params[ours] if slot is None else params[ours][_fused_rows(cfg, ours, slot)]
            if tuple(t.shape) != tuple(target.shape):
                raise CheckpointError(f"{files[name]}: tensor {name!r} has shape {tuple(t.shape)}, "
                                      f"config.json implies {tuple(target.shape)}")
            target.copy_(t.to(target.dtype))
    backends = prepare_layers(model, dtype) if quant is not None else {}
    if lora and (path / "linear_spec_lora").is_dir():
        load_lora(model, path / "linear_spec_lora", dtype)
    model.eval()
    model.requires_grad_(False)
    if auto and quant is None and device.type == "cpu" and dtype == torch.float32 and cpu_has_native_bf16():
        model.add_prefill_twin(torch.bfloat16)
    log.info("loaded %s: %.1fM parameters, %s %s%s%s%s", path, cfg.num_parameters / 1e6, device, dtype,
             f", {quant.bits}-bit weights {backends}" if quant else "",
             ", drafter LoRA" if model.has_lora else "", ", bf16 prefill" if model.prefill_twin else "")
    return Checkpoint(path=path, config=cfg, model=model, device=device, dtype=dtype)


def is_gguf_file(path: Path) -> bool:
    """A file that starts with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_lora(model: NLDModel, d: Path, dtype) -> None:
    """Add the o_proj LoRA in folder `d` (adapter_config.json + adapter_model.safetensors) to `model`."""
    cfg_file, weights = d / "adapter_config.json", d / "adapter_model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (linear_spec_lora/ needs adapter_config.json and adapter_model.safetensors)")
    try:
        acfg = json.loads(cfg_file.read_text())
        r, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: needs integer 'r' and number 'lora_alpha' ({e})") from None
    targets = acfg.get("target_modules") or ["o_proj"]
    if set(targets) != {"o_proj"}:
        raise CheckpointError(f"{cfg_file}: target_modules {targets}; tricode serves a LoRA on o_proj only")
    from safetensors.torch import load_file
    try:
        tensors = load_file(weights)
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({e})") from None
    model.add_lora(r, alpha)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            for part, param in (("lora_A", layer.o_lora.A), ("lora_B", layer.o_lora.B)):
                key = next((k for k in tensors if k.endswith(f"layers.{i}.self_attn.o_proj.{part}.weight")), None)
                if key is None:
                    raise CheckpointError(f"{weights}: no tensor for layer {i} o_proj {part} "
                                          f"(expected a name ending in layers.{i}.self_attn.o_proj.{part}.weight)")
                if tuple(tensors[key].shape) != tuple(param.shape):
                    raise CheckpointError(f"{weights}: tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                                          f"expected {tuple(param.shape)}")
                param.copy_(tensors[key].to(dtype))


def hf_state_dict(model: NLDModel) -> dict[str, torch.Tensor]:
    """The model's weights under the Hugging Face names (fused tensors split back)."""
    from engine.quant import quantized_spec
    if quantized_spec(model) is not None:
        raise ValueError("a model loaded from a quantized checkpoint cannot be saved as float weights; "
                         "quantize the float checkpoint again instead")
    cfg, params, out = model.cfg, dict(model.named_parameters()), {}
    for name, (ours, slot) in _name_map(cfg).items():
        t = params[ours] if slot is None else params[ours][_fused_rows(cfg, ours, slot)]
        out[name] = t.detach().contiguous()
    return out


def save_checkpoint(model: NLDModel, path: str | Path, *, dtype=torch.float16, shards: int = 1) -> None:
    """Write config.json and weights (sharded with an index when shards > 1). Tokenizer is the caller's."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(model.cfg.to_dict(), torch_dtype=str(dtype).removeprefix("torch."))
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.to(dtype).cpu() for k, v in hf_state_dict(model).items()}
    if shards <= 1:
        save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    else:
        names = list(state)
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: state[n] for n in names[s::shards]}
            save_file(part, path / fname, metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    if model.has_lora:
        save_lora(model, path / "linear_spec_lora", dtype)


def save_lora(model: NLDModel, d: Path, dtype, prefix: str = "base_model.model.encoder.layers") -> None:
    """The model's o_proj LoRA as a PEFT adapter folder `d`; tensor names `{prefix}.{i}.self_attn.o_proj.
    lora_A.weight` (NLD: `...encoder.layers`; the AR families: `...model.layers`, as PEFT names them)."""
    from safetensors.torch import save_file
    d.mkdir(parents=True, exist_ok=True)
    layer0 = model.layers[0].o_lora
    r = layer0.A.shape[0]
    (d / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": layer0.scale * r, "target_modules": ["o_proj"]}))
    lora = {}
    for i, layer in enumerate(model.layers):
        pre = f"{prefix}.{i}.self_attn.o_proj."
        lora[pre + "lora_A.weight"] = layer.o_lora.A.detach().to(dtype).cpu().contiguous()
        lora[pre + "lora_B.weight"] = layer.o_lora.B.detach().to(dtype).cpu().contiguous()
    save_file(lora, d / "adapter_model.safetensors")
