"""Section 3: the engines a user would pick instead, on the same weights, prompts and machine.

* Hugging Face ``transformers``: the checkpoint exported to ``LlamaForCausalLM`` with the same
  tensors (q/k/v/o, gate/up/down, norms, embed; ``lm_head`` = ``diffusion_head``; ``rope_theta``
  from the config). tricode's RoPE is the HF half-split convention, so no permutation. The export
  is verified by comparing the logits of one prompt with the engine's (max abs diff). Timed: greedy
  ``generate`` and its prompt-lookup decoding (``prompt_lookup_num_tokens``).
* llama.cpp through ``llama-cpp-python``: the checkpoint written as GGUF (``llama`` architecture)
  with the ``gguf`` package, f32 (tricode's CPU precision) and f16 (what llama.cpp users run). The
  ``llama`` architecture applies RoPE to adjacent pairs, so q/k rows are permuted exactly as
  llama.cpp's convert_hf_to_gguf.py does for HF Llama checkpoints. The BPE vocabulary and merges of
  ``tokenizer.json`` go in as a ``gpt2`` tokenizer; tricode's pre-tokenizer regex is its own, so the
  prompts are fed as token ids (the tokenization check is reported, not relied on). Decoding is the
  plain greedy loop over ``Llama.eval`` (what llama.cpp's server does per token), with the logits
  read from ``Llama.scores``.

Every engine gets the same prompt ids and generates as many tokens as tricode's ``ar`` did on that
task (greedy, the mask id suppressed as tricode's decoders do), so the outputs can be compared token
for token (reported as mismatches) and the timings are at equal output. The engines are timed in
turn on each task (round robin), so that a change of machine load hits them all alike.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np


from bench.gguf_export import ExportUnavailable as PeerUnavailable
from bench.gguf_export import write_gguf  # noqa: F401 - the export lives there (tests serve it too)


# ----------------------------------------------------------------------------- transformers


def hf_model(model):
    """A ``LlamaForCausalLM`` holding the engine's tensors (fp32, eval mode)."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        raise PeerUnavailable(f"transformers is not installed ({e}); `pip install -e .[bench]`") from None
    from engine.checkpoint import hf_state_dict
    c = model.cfg
    if c.rope_scaling is not None:
        raise PeerUnavailable("the checkpoint uses YaRN with tricode's query scaling; the export covers plain RoPE")
    hcfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                       num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, hidden_act="silu",
                       max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
                       bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.eos_token_id,
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                       rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    hf = LlamaForCausalLM(hcfg).to(torch.float32)
    sd = {}
    for k, v in hf_state_dict(model).items():
        k = "lm_head.weight" if k == "diffusion_head.weight" else "model." + k.removeprefix("encoder.")
        sd[k] = v.float()
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise PeerUnavailable(f"export to LlamaForCausalLM: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.eval()
    hf.generation_config.pad_token_id = c.eos_token_id
    return hf


def engine_logits(model, ids: list[int]):
    import torch
    with torch.inference_mode():
        cache = model.new_cache(len(ids) + 1)
        return model(torch.tensor([ids]), cache, pattern="causal", write=True)[0].float()


def hf_logits_diff(model, hf, ids: list[int]) -> float:
    import torch
    with torch.inference_mode():
        theirs = hf(torch.tensor([ids])).logits[0].float()
    return float((theirs - engine_logits(model, ids)).abs().max())


class HFRunner:
    def __init__(self, hf, mask_id: int, eos_id: int, lookup: int = 0):
        self.hf, self.mask_id, self.eos_id, self.lookup = hf, mask_id, eos_id, lookup
        self.name = "transformers generate" + (f" + prompt lookup ({lookup})" if lookup else "")

    def __call__(self, ids: list[int], n: int) -> list[int]:
        import torch
        x = torch.tensor([ids])
        kw = dict(max_new_tokens=n, do_sample=False, suppress_tokens=[self.mask_id], eos_token_id=self.eos_id,
                  pad_token_id=self.eos_id, attention_mask=torch.ones_like(x))
        if self.lookup:
            kw["prompt_lookup_num_tokens"] = self.lookup
        with torch.inference_mode():
            out = self.hf.generate(x, **kw)
        toks = out[0, len(ids):].tolist()
        return toks[:toks.index(self.eos_id)] if self.eos_id in toks else toks


# ----------------------------------------------------------------------------- llama.cpp


class LlamaCppRunner:
    def __init__(self, gguf_path: Path, mask_id: int, eos_id: int, n_ctx: int, threads: int, label: str):
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise PeerUnavailable(f"llama-cpp-python is not installed ({e}); `pip install -e .[bench]` "
                                  "(builds llama.cpp from source, about 9 minutes on 2 cores)") from None
        self.llm = Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=512, n_threads=threads,
                         n_threads_batch=threads, logits_all=False, verbose=False)
        self.mask_id, self.eos_id = mask_id, eos_id
        self.n_vocab = self.llm.n_vocab()
        self.name = f"llama.cpp {label}"

    def _logits(self) -> np.ndarray:
        """The last evaluated position's logits (a view of llama.cpp's buffer; logits_all is off,
        so Llama.scores is not filled)."""
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def last_logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self._logits(), dtype=np.float32)

    def __call__(self, ids: list[int], n: int) -> list[int]:
        llm = self.llm
        t0 = time.perf_counter()
        llm.reset()                                # a cold prompt, as tricode's fresh cache
        llm.eval(ids)
        self.last_prefill_ms = (time.perf_counter() - t0) * 1e3
        out: list[int] = []
        while len(out) < n:
            logits = self._logits()
            logits[self.mask_id] = -np.inf
            t = int(np.argmax(logits))
            if t == self.eos_id:
                break
            out.append(t)
            if len(out) < n:
                llm.eval([t])
        return out

    def tokenization_matches(self, tok, texts: Sequence[str]) -> tuple[int, int]:
        ok = sum(self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) == tok.encode(t)
                 for t in texts)
        return ok, len(texts)


# ----------------------------------------------------------------------------- the section


def run_peers(model, tok, model_dir: Path, tasks, prompts: Sequence[list[int]], ar_gens: Sequence[dict], *,
              spec_block: int | None, max_new_tokens: int | None = None, repeat: int = 1,
              threads: Sequence[int] = (), log=print, want: Sequence[str] = ("transformers", "llama.cpp")) -> dict:
    """Time tricode (ar, spec) and each available peer on the same single-line tasks, in turn, at each
    thread count of ``threads`` (0 = torch's default; every engine gets the same count)."""
    import torch

    from bench.decoding import DecodeConfig, complete
    default = torch.get_num_threads()
    counts = list(dict.fromkeys((t or default) for t in (threads or (0,))))
    cfg = model.cfg
    report: dict = {"tasks": len(tasks), "engines": {}, "by_threads": {}, "unavailable": {}, "checks": {}}
    hf = None
    probe = prompts[0]
    if "transformers" in want:
        try:
            hf = hf_model(model)
            diff = hf_logits_diff(model, hf, probe)
            report["checks"]["transformers_logits_max_abs_diff"] = diff
            log(f"  transformers export: logits max abs diff {diff:.2e} on a {len(probe)}-token prompt")
        except PeerUnavailable as e:
            report["unavailable"]["transformers"] = str(e)
        except Exception as e:  # noqa: BLE001 - a peer that breaks is reported, not fatal
            report["unavailable"]["transformers"] = f"{type(e).__name__}: {e}"
    tmp = tempfile.TemporaryDirectory(prefix="tricode-bench-gguf-")
    ggufs: dict[str, Path] = {}
    n_ctx = max(len(p) for p in prompts) + 80
    if "llama.cpp" in want:
        for dt in ("f32", "f16"):
            try:
                t0 = time.perf_counter()
                path = write_gguf(model, model_dir / "tokenizer.json", Path(tmp.name) / f"model-{dt}.gguf", dt)
                r = LlamaCppRunner(path, cfg.mask_token_id, cfg.eos_token_id, n_ctx=n_ctx, threads=counts[0], label=dt)
                theirs = r.last_logits(probe)
                ours = engine_logits(model, probe)[-1].numpy()
                diff = float(np.abs(theirs - ours).max())
                report["checks"][f"llama.cpp_{dt}_last_logits_max_abs_diff"] = diff
                report["checks"][f"llama.cpp_{dt}_gguf_mb"] = round(path.stat().st_size / 2**20, 1)
                if dt == "f32":
                    texts = [t.prefix[-400:] for t in tasks[:10]]
                    ok, n = r.tokenization_matches(tok, texts)
                    report["checks"]["llama.cpp_tokenization_matches"] = f"{ok}/{n}"
                log(f"  llama.cpp {dt}: GGUF written and loaded in {time.perf_counter() - t0:.1f} s; "
                    f"last-position logits max abs diff {diff:.2e}")
                ggufs[dt] = path
                del r
            except PeerUnavailable as e:
                report["unavailable"]["llama.cpp"] = str(e)
                break
            except Exception as e:  # noqa: BLE001
                report["unavailable"][f"llama.cpp {dt}"] = f"{type(e).__name__}: {e}"

    spec = DecodeConfig("spec", "linear", spec_block)
    ar = DecodeConfig("ar")
    for th in counts:
        torch.set_num_threads(th)
        runners = []
        if hf is not None:
            runners += [HFRunner(hf, cfg.mask_token_id, cfg.eos_token_id),
                        HFRunner(hf, cfg.mask_token_id, cfg.eos_token_id, lookup=10)]
        for dt, path in ggufs.items():
            runners.append(LlamaCppRunner(path, cfg.mask_token_id, cfg.eos_token_id, n_ctx=n_ctx, threads=th, label=dt))
        rows: dict[str, dict] = {}
        for nm in [f"tricode {spec.name}", "tricode ar"] + [r.name for r in runners]:
            rows[nm] = {"ms": [], "prefill": [], "tokens": 0, "mismatches": 0}
        for r in runners:   # warm-up, untimed
            r(probe, 2)
        for i, (t, ids, ref) in enumerate(zip(tasks, prompts, ar_gens)):
            want_n = max(len(ref["tokens"]) + (1 if ref["stop_reason"] == "eos" else 0), 1)
            for _ in range(repeat):
                for c in (spec, ar):
                    g = complete(model, tok, [t], [ids], c, max_new_tokens=max_new_tokens or ev_max(),
                                 warmup=(i == 0))[0]
                    row = rows[f"tricode {c.name}"]
                    row["ms"].append(g["ms"])
                    row["prefill"].append(g["prefill_ms"])
                    row["tokens"] += len(g["tokens"])
                    row["mismatches"] += g["tokens"] != ref["tokens"]
                for r in runners:
                    t0 = time.perf_counter()
                    out = r(ids, want_n)
                    ms = (time.perf_counter() - t0) * 1e3
                    row = rows[r.name]
                    row["ms"].append(ms)
                    if getattr(r, "last_prefill_ms", None) is not None:
                        row["prefill"].append(r.last_prefill_ms)
                    row["tokens"] += len(out)
                    row["mismatches"] += out[:len(ref["tokens"])] != ref["tokens"]
        for nm, row in rows.items():
            ms, pre = row.pop("ms"), row.pop("prefill")
            total_s = sum(ms) / 1e3
            dec_s = (sum(ms) - sum(pre)) / 1e3 if pre else 0.0
            row.update(ms_median=statistics.median(ms) if ms else 0.0, ms_mean=sum(ms) / len(ms) if ms else 0.0,
                       tokens_per_s=row["tokens"] / total_s if total_s else 0.0, completions=len(ms),
                       prefill_ms_median=statistics.median(pre) if pre else None,
                       decode_tokens_per_s=(max(row["tokens"] - len(ms), 0) / dec_s) if pre and dec_s > 0 else None)
        base = rows[f"tricode {spec.name}"]["ms_median"]
        base_ar = rows["tricode ar"]["ms_median"]
        for nm, row in rows.items():
            row["ratio_vs_tricode_spec"] = row["ms_median"] / base if base else 0.0     # > 1: tricode spec faster
            row["ratio_vs_tricode_ar"] = row["ms_median"] / base_ar if base_ar else 0.0
        report["by_threads"][str(th)] = rows
        log(f"  peers at {th} thread(s): " + ", ".join(f"{n} {r['ms_median']:.0f} ms" for n, r in rows.items()))
        del runners
    torch.set_num_threads(default)
    tmp.cleanup()
    report["engines"] = report["by_threads"][str(counts[0])]
    report["spec_config"] = spec.name
    report["threads"] = counts[0]
    report["thread_counts"] = counts
    return report


def ev_max() -> int:
    from training.evaluate import DEFAULT_MAX_NEW_TOKENS
    return DEFAULT_MAX_NEW_TOKENS
