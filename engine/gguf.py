"""Pretrained AR checkpoints (Qwen2 / Llama family) from a GGUF file, read with the `gguf` package.

Knows the GGUF metadata keys that configure the network (`<arch>.block_count`, `.embedding_length`,
`.feed_forward_length`, `.attention.head_count(_kv)`, `.rope.freq_base`,
`.attention.layer_norm_rms_epsilon`, `.context_length`, `tokenizer.ggml.*` ids), the GGUF tensor names
(`blk.N.attn_q.weight`, `token_embd.weight`, `output.weight` unless tied ...) and how they map onto the
Hugging Face names engine/pretrained.py builds the model from. Tensors are dequantized to float32 by
`gguf.quants.dequantize` (every type the package knows: Q4_K, Q5_0, Q6_K, Q8_0, F16, ...).

llama.cpp's HF->GGUF converter permutes the q/k rows of `llama`-architecture models (llama.cpp rotates
adjacent pairs there, HF rotates the two halves of a head); `qwen2` it leaves as is (NEOX-style, the
halves). The permutation is undone here, so the engine's one RoPE convention serves both.

Dequantizing a 0.5B model takes longer than reading float32 weights (GGUFReader parses the 150k-token
vocabulary, numpy dequantizes ~630M values): the result is kept as a safetensors file under the user's
cache folder (`$XDG_CACHE_HOME/tricode/gguf/`), keyed by the GGUF's path, size and mtime and checked
against them (and the expected tensor names) before use; anything that does not match is rebuilt.
Knows nothing of the tokenizer (the daemon reads the vocabulary) or of quantized kernels: the engine
computes in float.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint, CheckpointError, _read_tensors, pick_device, pick_dtype
from engine.config import ModelConfig, RopeScaling
from engine.pretrained import ar_name_map, build_model, finish

log = logging.getLogger(__name__)

ARCHITECTURES = ("qwen2", "llama")     # general.architecture values served (Mistral GGUFs say llama)
CACHE_FORMAT = "1"                     # bump when what the cache holds changes

# GGUF tensor name -> HF name; blk.N.* per layer
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
          "attn_k.bias": "self_attn.k_proj.bias", "attn_v.bias": "self_attn.v_proj.bias",
          "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
          "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
_BLK = re.compile(r"blk\.(\d+)\.(.+)")


def hf_name(gguf_name: str) -> str | None:
    """The HF name of a GGUF tensor, None for one the engine does not know."""
    if gguf_name in _GLOBAL:
        return _GLOBAL[gguf_name]
    m = _BLK.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER:
        return f"model.layers.{m.group(1)}.{_LAYER[m.group(2)]}"
    return None


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError(f"reading a GGUF file needs the `gguf` package ({e}); pip install gguf") from None
    return gguf


def open_gguf(path: Path):
    """A GGUFReader on `path` (memory-mapped); a damaged file is a CheckpointError."""
    gguf = _import_gguf()
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:                 # the reader raises ValueError, struct errors, IndexError...
        raise CheckpointError(f"{path}: cannot be read as GGUF ({type(e).__name__}: {e}); "
                              f"the file may be truncated or not a GGUF model") from None


def _field(reader, key: str, default=None, *, required: bool = False, where: str = ""):
    f = reader.fields.get(key)
    if f is None:
        if required:
            raise CheckpointError(f"{where}: metadata key {key!r} is missing")
        return default
    return f.contents()


def gguf_config(reader, where: str) -> ModelConfig:
    """ModelConfig from a GGUF's metadata and tensor list. Raises CheckpointError naming what it
    cannot serve: the architecture, RoPE scaling, partial rotary, experts."""
    arch = _field(reader, "general.architecture", required=True, where=where)
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{where}: architecture {arch!r} is not served; tricode serves GGUF "
                              f"architectures {', '.join(ARCHITECTURES)} (and NLD checkpoints)")

    def key(k, default=None, required=False):
        return _field(reader, f"{arch}.{k}", default, required=required, where=where)

    if key("expert_count", 0):
        raise CheckpointError(f"{where}: {arch}.expert_count is {key('expert_count')}: mixture-of-experts "
                              f"models are not served")
    scaling = key("rope.scaling.type")
    if scaling not in (None, "none"):
        raise CheckpointError(f"{where}: {arch}.rope.scaling.type is {scaling!r}; tricode serves plain RoPE "
                              f"for GGUF models")
    tensors = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{where}: tensor 'token_embd.weight' is missing")
    hidden = int(key("embedding_length", required=True))
    heads = int(key("attention.head_count", required=True))
    head_dim = int(key("attention.key_length", hidden // heads))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError(f"{where}: {arch}.attention.value_length differs from key_length; not served")
    rot = int(key("rope.dimension_count", head_dim))
    if rot != head_dim:
        raise CheckpointError(f"{where}: {arch}.rope.dimension_count is {rot}, the heads are {head_dim} wide: "
                              f"partial rotary embeddings are not served")
    vocab = int(reader.tensors[[t.name for t in reader.tensors].index("token_embd.weight")].shape[1])
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    if eos is None:
        raise CheckpointError(f"{where}: metadata key 'tokenizer.ggml.eos_token_id' is missing")
    bos = _field(reader, "tokenizer.ggml.bos_token_id", eos)
    ctx = int(key("context_length", 4096))
    try:
        return ModelConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=int(key("feed_forward_length", required=True)),
            num_hidden_layers=int(key("block_count", required=True)), num_attention_heads=heads,
            num_key_value_heads=int(key("attention.head_count_kv", heads)), head_dim=head_dim,
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", required=True)),
            rope_theta=float(key("rope.freq_base", 10000.0)), rope_scaling=None, max_position_embeddings=ctx,
            mask_token_id=None, eos_token_id=int(eos), bos_token_id=int(bos), block_size=8,
            dlm_paradigm="autoregressive", torch_dtype="float32", model_type=arch,
            attention_bias="blk.0.attn_q.bias" in tensors, tie_word_embeddings="output.weight" not in tensors)
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo convert_hf_to_gguf's LlamaModel.permute on q or k rows (weight [rows, in] or bias [rows]):
    GGUF row (head, j, half) <- HF row (head, half, j), for the D/2 pairs j of each head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(reader, cfg: ModelConfig, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, float32 tensor in HF layout) for every tensor of the file. An unknown tensor name or a
    type the `gguf` package cannot dequantize is a CheckpointError naming it."""
    gguf = _import_gguf()
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            raise CheckpointError(f"{where}: tensor {t.name!r} ({t.tensor_type.name}) is not part of a "
                                  f"{cfg.model_type} model tricode can serve")
        try:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(f"{where}: tensor {t.name!r} has type {t.tensor_type.name}, which the gguf "
                                  f"package cannot dequantize; use a file quantized to Q4_K/Q5_K/Q6_K/Q8_0/F16") from None
        shape = tuple(reversed([int(x) for x in t.shape]))
        a = a.reshape(shape).astype("float32", copy=False)
        if not a.flags.writeable:          # an F32 tensor is a view of the read-only memory map
            a = a.copy()
        w = torch.from_numpy(a)
        if cfg.model_type == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
            n = cfg.num_attention_heads if t.name.split(".")[-2] == "attn_q" else cfg.num_key_value_heads
            w = _unpermute(w, n)
        yield name, w


# -- the converted cache ---------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tricode" / "gguf"


def _stamp(path: Path) -> dict[str, str]:
    st = path.stat()
    return {"source": str(path.resolve()), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns),
            "format": CACHE_FORMAT}


def _cache_file(path: Path, where: Path) -> Path:
    return where / (hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24] + ".safetensors")


def _config_json(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg))


def _config_from_json(s: str) -> ModelConfig:
    d = json.loads(s)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return ModelConfig(**d)


def _read_cache(path: Path, file: Path) -> tuple[ModelConfig, list[str]] | None:
    """(config, tensor names) when `file` is a complete conversion of `path` as it is now, else None."""
    if not file.is_file():
        return None
    from safetensors import safe_open
    try:
        with safe_open(file, framework="pt") as f:
            meta, names = f.metadata() or {}, list(f.keys())
        if any(meta.get(k) != v for k, v in _stamp(path).items()):
            log.info("%s: stale (the GGUF file changed); converting again", file)
            return None
        cfg = _config_from_json(meta["config"])
    except Exception as e:              # damaged, truncated, an older layout: rebuild
        log.warning("%s: unusable converted cache (%s); converting again", file, e)
        return None
    if set(names) != set(ar_name_map(cfg)):
        log.warning("%s: tensors do not match the configuration; converting again", file)
        return None
    return cfg, names


def _write_cache(path: Path, file: Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Written to a temporary name and renamed, so a reader never sees half a file."""
    from safetensors.torch import save_file
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata=dict(_stamp(path), config=_config_json(cfg)))
        os.replace(tmp, file)
    except Exception as e:              # no space, read-only home, a safetensors error: serve without it
        log.warning("cannot write the converted GGUF cache %s (%s); the next load converts again", file, e)
        try:
            tmp.unlink(missing_ok=True)
        except (OSError, UnboundLocalError):
            pass


def read_gguf(path: str | Path, *, cache: bool | None = None
              ) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]]]:
    """(config, (HF name, float32 tensor) pairs) of a GGUF file, read through the converted cache when
    it is valid (written when it is not). cache=None: on unless TRICODE_GGUF_CACHE=0. The pairs are
    produced one at a time from the cache, so loading holds the model plus one tensor."""
    path = Path(path).expanduser()
    if cache is None:
        cache = os.environ.get("TRICODE_GGUF_CACHE", "1") != "0"
    file = _cache_file(path, cache_dir())
    if cache:
        hit = _read_cache(path, file)
        if hit is not None:
            return hit[0], _read_tensors({n: file for n in hit[1]}, hit[1],
                                       "the converted GGUF cache is damaged; delete it and load again")
    t0 = time.perf_counter()
    reader = open_gguf(path)
    cfg = gguf_config(reader, str(path))
    tensors = dict(gguf_tensors(reader, cfg, str(path)))
    missing = [n for n in ar_name_map(cfg) if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{path}: no tensor for {missing[0]!r}{more}")
    log.info("%s: read and dequantized in %.1f s", path, time.perf_counter() - t0)
    if cache:
        _write_cache(path, file, cfg, tensors)
    return cfg, _drain(tensors)


def load_gguf(path: str | Path, device=None, dtype=None, *, cache: bool | None = None,
              drafter: bool = True) -> Checkpoint:
    """A Qwen2/Llama-family GGUF file as a Checkpoint (format "gguf", modes ar and spec; all three with
    the drafter beside it when `drafter`, engine/drafter.py)."""
    auto = dtype is None or dtype == "auto"
    path = Path(path).expanduser()
    cfg, tensors = read_gguf(path, cache=cache)
    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    model = build_model(cfg, tensors, device=device, dtype=dtype, source=str(path), where=str(path))
    return finish(model, cfg, path, "gguf", device, dtype, auto, drafter)


def _drain(tensors: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield and drop each tensor, so the float32 copies are freed as the model fills."""
    while tensors:
        name = next(iter(tensors))
        yield name, tensors.pop(name)
