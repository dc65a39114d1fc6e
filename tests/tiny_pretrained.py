"""Tiny pretrained-AR checkpoints (Qwen2 / Llama / Mistral) with random weights, for tests: an HF
safetensors directory, and the same weights as a GGUF file written with gguf.GGUFWriter the way
llama.cpp's converter writes them (q/k rows permuted for the `llama` architecture, not for `qwen2`).

Also `reference_logits`: a naive float64 forward straight from the HF-named tensors (no fused layers,
no cache, no tables), written from the Llama/Qwen2 definitions independently of engine/model.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ARCH_NAMES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


def tiny_ar_tensors(model_type: str = "qwen2", *, seed: int = 0, vocab: int = 96, hidden: int = 32,
                    layers: int = 2, heads: int = 4, kv_heads: int = 2, ffn: int = 48,
                    tied: bool | None = None, rope_theta: float = 50.0, eps: float = 1e-3):
    """(config.json dict, HF-named float32 tensors). The RoPE base is small and eps large so that
    reading either from the wrong place changes the logits."""
    tied = model_type == "qwen2" if tied is None else tied
    bias = model_type == "qwen2"
    d = hidden // heads
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        return torch.randn(shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    t = {"model.embed_tokens.weight": rnd(vocab, hidden, scale=1.0),
         "model.norm.weight": 1.0 + 0.1 * rnd(hidden, scale=1.0)}
    if not tied:
        t["lm_head.weight"] = rnd(vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1.0 + 0.1 * rnd(hidden, scale=1.0)
        t[p + "post_attention_layernorm.weight"] = 1.0 + 0.1 * rnd(hidden, scale=1.0)
        t[p + "self_attn.q_proj.weight"] = rnd(heads * d, hidden)
        t[p + "self_attn.k_proj.weight"] = rnd(kv_heads * d, hidden)
        t[p + "self_attn.v_proj.weight"] = rnd(kv_heads * d, hidden)
        if bias:
            t[p + "self_attn.q_proj.bias"] = rnd(heads * d, scale=0.5)
            t[p + "self_attn.k_proj.bias"] = rnd(kv_heads * d, scale=0.5)
            t[p + "self_attn.v_proj.bias"] = rnd(kv_heads * d, scale=0.5)
        t[p + "self_attn.o_proj.weight"] = rnd(hidden, heads * d)
        t[p + "mlp.gate_proj.weight"] = rnd(ffn, hidden)
        t[p + "mlp.up_proj.weight"] = rnd(ffn, hidden)
        t[p + "mlp.down_proj.weight"] = rnd(hidden, ffn)
    cfg = {"architectures": [ARCH_NAMES[model_type]], "model_type": model_type, "vocab_size": vocab,
           "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": eps,
           "rope_theta": rope_theta, "max_position_embeddings": 512, "tie_word_embeddings": tied,
           "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"}
    return cfg, {k: v.float().contiguous() for k, v in t.items()}


def write_hf_dir(path, cfg: dict, tensors: dict) -> Path:
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k permutation (HF half-split rows -> adjacent pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.q_proj.bias": "attn_q.bias",
              "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
              "self_attn.o_proj.weight": "attn_output.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
              "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}


def write_gguf(path, cfg: dict, tensors: dict, *, arch: str | None = None, qtype: str = "F32",
               extra: dict | None = None) -> Path:
    """The tensors as a GGUF file (architecture `arch`, default from model_type: mistral -> llama).
    qtype: F32, F16 or Q8_0 for the 2-D weights (norms and biases stay F32, as llama.cpp keeps them).
    `extra`: name -> (raw array, GGMLQuantizationType) tensors appended as they are."""
    import gguf
    arch = arch or ("llama" if cfg["model_type"] in ("llama", "mistral") else cfg["model_type"])
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg["vocab_size"])])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    for name, t in tensors.items():
        a = t.numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            gname = f"blk.{i}.{GGUF_NAMES[rest]}"
        if arch == "llama" and ("attn_q." in gname or "attn_k." in gname):
            a = llama_permute(a, cfg["num_attention_heads"] if "attn_q." in gname else cfg["num_key_value_heads"])
        if a.ndim == 2 and qtype == "F16":
            w.add_tensor(gname, a.astype(np.float16))
        elif a.ndim == 2 and qtype == "Q8_0":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gname, np.ascontiguousarray(a))
    for gname, (raw, qt) in (extra or {}).items():
        w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def reference_logits(cfg: dict, tensors: dict, ids: list[int]) -> torch.Tensor:
    """Logits [T, V] of a causal forward over `ids` at positions 0..T-1, in float64, from the
    Llama/Qwen2 definitions: RMSNorm, q/k/v (+bias), RoPE rotating the two halves of each head,
    grouped-query softmax attention, SiLU-gated MLP, head (or the embedding when tied)."""
    t = {k: v.double() for k, v in tensors.items()}
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    h = cfg["hidden_size"]
    D = h // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    T = len(ids)

    def norm(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    # RoPE angles in float32, as the Hugging Face definitions compute them (inv_freq and position
    # products in float32): the checkpoints were trained that way
    inv_freq = (1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)).float()

    def rope(x):                                   # x [heads, T, D]
        out = torch.empty_like(x)
        half = D // 2
        for pos in range(T):
            for j in range(half):
                angle = torch.tensor(float(pos), dtype=torch.float32) * inv_freq[j]
                c, s = float(angle.cos()), float(angle.sin())
                a, b = x[:, pos, j], x[:, pos, j + half]
                out[:, pos, j] = a * c - b * s
                out[:, pos, j + half] = b * c + a * s
        return out

    x = t["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        hn = norm(x, t[p + "input_layernorm.weight"])
        proj = {}
        for n in "qkv":
            y = hn @ t[p + f"self_attn.{n}_proj.weight"].T
            if p + f"self_attn.{n}_proj.bias" in t:
                y = y + t[p + f"self_attn.{n}_proj.bias"]
            proj[n] = y.view(T, -1, D).transpose(0, 1)
        q, k, v = rope(proj["q"]), rope(proj["k"]), proj["v"]
        heads = []
        for head in range(H):
            kv = head // (H // Hkv)
            scores = q[head] @ k[kv].T / D ** 0.5
            scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
            heads.append(torch.softmax(scores, -1) @ v[kv])
        x = x + torch.cat(heads, -1) @ t[p + "self_attn.o_proj.weight"].T
        hn = norm(x, t[p + "post_attention_layernorm.weight"])
        gate, up = hn @ t[p + "mlp.gate_proj.weight"].T, hn @ t[p + "mlp.up_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ t[p + "mlp.down_proj.weight"].T
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return norm(x, t["model.norm.weight"]) @ head.T


AR_SPECIAL_TOKENS = ["<unk>", "<|im_start|>", "<|endoftext|>", "<|fim_pad|>", "<|fim_prefix|>", "<|fim_suffix|>",
                     "<|fim_middle|>"]


def write_tiny_ar_with_tokenizer(path, *, seed: int = 0, vocab: int = 320, **kw) -> Path:
    """A tiny Qwen2 HF directory with a tokenizer.json of its own (a byte-level BPE trained on the tiny
    checkpoints' sample code; bos 1 = <|im_start|>, eos 2 = <|endoftext|>, 3 = <|fim_pad|>), as a
    pulled model would have: what drafter training needs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tests.tiny_checkpoint import SAMPLE_CODE
    cfg, tensors = tiny_ar_tensors("qwen2", seed=seed, vocab=vocab, **kw)
    path = write_hf_dir(path, cfg, tensors)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab - 8, special_tokens=AR_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SAMPLE_CODE * 4, trainer)
    tok.save(str(path / "tokenizer.json"))
    return path
