"""The embedded (or any plain-RoPE) checkpoint written as a llama-architecture GGUF, so that llama.cpp
and its servers (llama-cpp-python's `llama_cpp.server`, llama.cpp's `llama-server`) can run it: the
bench times llama.cpp on it (peers.py) and the remote-backend tests serve it over HTTP.

The ``llama`` architecture applies RoPE to adjacent pairs, so q/k rows are permuted exactly as
llama.cpp's convert_hf_to_gguf.py does for HF Llama checkpoints. The BPE vocabulary and merges of
``tokenizer.json`` go in as a ``gpt2`` tokenizer; tricode's pre-tokenizer regex is its own, so
llama.cpp tokenizes text differently: feed it token ids (the remote backend's `tokens` layout).

    python -m bench.gguf_export --model engine/embedded --out build/tricode-embedded-f16.gguf --dtype f16
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class ExportUnavailable(Exception):
    pass


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: half-split RoPE rows -> adjacent pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tokenizer_json: Path, path: Path, dtype: str = "f32") -> Path:
    """The engine's tensors as a llama-architecture GGUF with a gpt2-style BPE tokenizer."""
    try:
        import gguf
    except ImportError as e:
        raise ExportUnavailable(f"gguf is not installed ({e}); `pip install -e .[bench]`") from None
    from engine.checkpoint import hf_state_dict
    c = model.cfg
    if c.rope_scaling is not None:
        raise ExportUnavailable("the checkpoint uses YaRN with tricode's query scaling; the export covers plain RoPE")
    tj = json.loads(Path(tokenizer_json).read_text())
    vocab = dict(tj["model"]["vocab"])
    for t in tj.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    special = {t["id"] for t in tj.get("added_tokens", []) if t.get("special")}
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(c.vocab_size):
        s = by_id.get(i, f"[PAD{i}]")
        tokens.append(s)
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]

    ftype = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tricode-bench-export")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(ftype)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_pad_token_id(c.eos_token_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)

    sd = {k: v.float().cpu().numpy() for k, v in hf_state_dict(model).items()}
    nq, nkv = c.num_attention_heads, c.num_key_value_heads

    def put(name: str, arr: np.ndarray, matrix: bool = True) -> None:
        arr = np.ascontiguousarray(arr, dtype=np.float16 if (dtype == "f16" and matrix) else np.float32)
        w.add_tensor(name, arr)

    put("token_embd.weight", sd["encoder.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        p = f"encoder.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], matrix=False)
        put(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], nq, nq))
        put(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], nq, nkv))
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], matrix=False)
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["encoder.norm.weight"], matrix=False)
    put("output.weight", sd["diffusion_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def export(model_dir: Path, out: Path, dtype: str = "f32") -> Path:
    """Load the checkpoint in `model_dir` (fp32, CPU) and write it to `out`."""
    from engine.checkpoint import load_checkpoint
    ck = load_checkpoint(model_dir, device="cpu", dtype="float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_gguf(ck.model, Path(model_dir) / "tokenizer.json", out, dtype)


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on 127.0.0.1 serving
    one GGUF, its output in `log`; started and ready (its /v1/models answers) when constructed."""

    def __init__(self, gguf: Path, log: Path, alias: str = "tricode-embedded", api_key: str = "",
                 threads: int = 1, n_ctx: int = 4096, timeout: float = 120.0):
        import socket
        import subprocess
        import time
        import urllib.error
        import urllib.request
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path, self.alias, self.api_key = Path(log), alias, api_key
        self.log = open(log, "wb")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
               "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        if api_key:
            cmd += ["--api_key", api_key]
        import os
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))   # its log read as it goes
        end = time.monotonic() + timeout
        req = urllib.request.Request(self.url + "/models", headers={"Authorization": f"Bearer {api_key}"})
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                raise ExportUnavailable(f"llama_cpp.server exited: {self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(req, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                if time.monotonic() > end:
                    self.stop()
                    raise ExportUnavailable(f"llama_cpp.server did not start: {self.output()[-2000:]}") from None
                time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def main(argv=None) -> int:
    from engine.embedded_model import default_model
    ap = argparse.ArgumentParser(prog="python -m bench.gguf_export", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=default_model(), help="checkpoint directory (default: embedded)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32")
    args = ap.parse_args(argv)
    if args.model is None:
        print("no checkpoint: pass --model DIR", file=sys.stderr)
        return 2
    try:
        path = export(args.model, args.out, args.dtype)
    except ExportUnavailable as e:
        print(f"cannot export: {e}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
