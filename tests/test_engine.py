"""Engine: checkpoint loading, the three decoders against each other and against the naive reference."""
import contextlib
import json
import random
import subprocess
import sys
import threading
import time

import pytest
import torch

from engine.checkpoint import CheckpointError, hf_state_dict, load_checkpoint
from engine.config import ModelConfig, RopeScaling, query_scale, rope_inv_freq
from engine.generate import Decode, DecodeParams, generate, generate_batch, step
from engine.reference import naive_generate
from tests.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture(scope="module")
def model64(tiny_ckpt):
    # float64 makes near-ties in argmax (which differ between a 1-token and a block forward) vanish
    return load_checkpoint(tiny_ckpt, device="cpu", dtype="float64").model


@pytest.fixture(scope="module")
def lora_model64(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("lora") / "ckpt", seed=3, lora=True)
    return load_checkpoint(path, device="cpu", dtype="float64").model


@contextlib.contextmanager
def forward_widths(model, dim: int = 0):
    """The list of input_ids.shape[dim] of every forward of `model` while the block runs
    (dim 0: how many requests a forward batched; dim 1: how many tokens it ran)."""
    seen = []
    handle = model.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[dim]))
    try:
        yield seen
    finally:
        handle.remove()


def random_prompt(rng, vocab, n):
    return [0] + [rng.randrange(6, vocab) for _ in range(n - 1)]


# -- checkpoints -------------------------------------------------------------------------------------

def test_checkpoint_round_trip_and_shards(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "single", seed=5)
    b = write_tiny_checkpoint(tmp_path / "sharded", seed=5, shards=3)
    assert (b / "model.safetensors.index.json").is_file() and not (b / "model.safetensors").exists()
    from safetensors.torch import load_file
    saved = load_file(a / "model.safetensors")
    ma, mb = load_checkpoint(a, device="cpu").model, load_checkpoint(b, device="cpu").model
    sa, sb = hf_state_dict(ma), hf_state_dict(mb)
    assert set(sa) == set(saved)
    for name, t in saved.items():
        assert torch.equal(sa[name], t), name
        assert torch.equal(sb[name], t), name
    prompt = [0, 10, 20, 30]
    assert generate(ma, prompt, DecodeParams(mode="ar", max_new_tokens=8)).tokens == \
        generate(mb, prompt, DecodeParams(mode="ar", max_new_tokens=8)).tokens


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_load(tmp_path, dtype):
    path = write_tiny_checkpoint(tmp_path / dtype, dtype=getattr(torch, dtype))
    ck = load_checkpoint(path, device="cpu")
    assert ck.dtype == torch.float32 and json.loads((path / "config.json").read_text())["torch_dtype"] == dtype
    assert len(generate(ck.model, [0, 7, 8], DecodeParams(mode="ar", max_new_tokens=4)).tokens) <= 4


def _break(path, how):
    cfg = json.loads((path / "config.json").read_text())
    if how == "no_config":
        (path / "config.json").unlink()
    elif how == "bad_json":
        (path / "config.json").write_text("{not json")
    elif how == "missing_key":
        del cfg["hidden_size"]
        (path / "config.json").write_text(json.dumps(cfg))
    elif how == "wrong_shape":
        cfg["intermediate_size"] = cfg["intermediate_size"] + 8
        (path / "config.json").write_text(json.dumps(cfg))
    elif how == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "missing_tensor":
        from safetensors.torch import load_file, save_file
        t = load_file(path / "model.safetensors")
        del t["encoder.layers.1.mlp.down_proj.weight"]
        save_file(t, path / "model.safetensors")
    elif how == "no_weights":
        (path / "model.safetensors").unlink()
    elif how == "no_tokenizer":
        (path / "tokenizer.json").unlink()
    elif how == "bad_lora":
        (path / "linear_spec_lora" / "adapter_config.json").write_text(json.dumps({"r": 4}))


@pytest.mark.parametrize("how, words", [
    ("no_config", ["config.json", "missing"]),
    ("bad_json", ["config.json", "JSON"]),
    ("missing_key", ["config.json", "hidden_size"]),
    ("wrong_shape", ["shape", "encoder.layers.0.mlp.gate_proj.weight"]),
    ("truncated", ["model.safetensors"]),
    ("missing_tensor", ["encoder.layers.1.mlp.down_proj.weight", "missing"]),
    ("no_weights", ["no weights"]),
    ("no_tokenizer", ["tokenizer.json"]),
    ("bad_lora", ["adapter_config.json", "lora_alpha"]),
])
def test_broken_checkpoint_clear_error(tmp_path, how, words):
    path = write_tiny_checkpoint(tmp_path / "c", lora=True)
    _break(path, how)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, device="cpu")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope")


def test_yarn_config_and_query_scale():
    raw = {"vocab_size": 200, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1e6,
           "rope_scaling": {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16384,
                            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                            "llama_4_scaling_beta": 0.1}}
    cfg = ModelConfig.from_dict(raw)
    assert cfg.rope_scaling == RopeScaling(mscale=1.0, mscale_all_dim=1.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    inv, mag = rope_inv_freq(cfg)
    plain = 1.0 / (1e6 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    assert mag == 1.0  # mscale == mscale_all_dim
    assert torch.allclose(inv[0].double(), plain[0]) and torch.allclose(inv[-1].double(), plain[-1] / 16)
    assert query_scale(cfg, torch.arange(10)) is None
    s = query_scale(cfg, torch.tensor([0, 16383, 16384, 3 * 16384]))
    assert torch.allclose(s, 1 + 0.1 * torch.log1p(torch.tensor([0.0, 0.0, 1.0, 3.0])))


def test_yarn_model_runs_long_positions(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "y", rope_scaling=RopeScaling(original_max_position_embeddings=16))
    m = load_checkpoint(path, device="cpu", dtype="float64").model
    prompt = random_prompt(random.Random(0), m.cfg.vocab_size, 40)  # crosses 16 and 32 (query scale > 1)
    p = DecodeParams(mode="spec", max_new_tokens=12, block_size=4)
    assert generate(m, prompt, p).tokens == generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=12)).tokens


# -- decoders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 2, 4, 7, 32])
def test_greedy_spec_equals_ar(model64, block):
    rng = random.Random(block)
    for trial in range(6):
        prompt = random_prompt(rng, model64.cfg.vocab_size, rng.choice([1, 2, 5, 17, 40]))
        n = rng.choice([1, 3, 20, 45])
        ar = generate(model64, prompt, DecodeParams(mode="ar", max_new_tokens=n))
        sp = generate(model64, prompt, DecodeParams(mode="spec", max_new_tokens=n, block_size=block))
        assert sp.tokens == ar.tokens, (trial, prompt)
        assert sp.stop_reason == ar.stop_reason
        assert sum(sp.accept_lengths) + 1 >= len(sp.tokens)
        if block > 1 and len(sp.tokens) > 1:
            assert all(1 <= a <= block for a in sp.accept_lengths)


@pytest.mark.parametrize("block", [1, 4, 32])
def test_greedy_spec_equals_ar_with_lora_drafter(lora_model64, block):
    m = lora_model64
    assert m.has_lora
    rng = random.Random(100 + block)
    for _ in range(4):
        prompt = random_prompt(rng, m.cfg.vocab_size, rng.choice([3, 12, 30]))
        ar = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=30))
        sp = generate(m, prompt, DecodeParams(mode="spec", max_new_tokens=30, block_size=block))
        assert sp.tokens == ar.tokens
        assert sp.tokens == naive_generate(m, prompt, DecodeParams(mode="spec", max_new_tokens=30, block_size=block))


@pytest.mark.parametrize("mode, block, threshold", [
    ("ar", None, None), ("spec", 4, None), ("spec", 8, None),
    ("diffusion", 4, 0.9), ("diffusion", 8, 0.2), ("diffusion", 5, 1.0),
])
def test_cached_decoders_match_naive_reference(model64, mode, block, threshold):
    rng = random.Random(hash((mode, block)) & 0xFFFF)
    for _ in range(3):
        prompt = random_prompt(rng, model64.cfg.vocab_size, rng.choice([1, 6, 19]))
        p = DecodeParams(mode=mode, max_new_tokens=rng.choice([5, 17]), block_size=block, threshold=threshold)
        assert generate(model64, prompt, p).tokens == naive_generate(model64, prompt, p)


def test_diffusion_rules(model64):
    M = model64.cfg.mask_token_id
    with torch.no_grad():  # make the mask id the model's favourite prediction everywhere
        model64.head.weight[M] += 50 * model64.head.weight[5]
        bias_rows = model64.head.weight[M].clone()
    try:
        rng = random.Random(7)
        for block, thr in [(4, 0.9), (8, 1.0), (8, 0.0), (3, 0.5)]:
            prompt = random_prompt(rng, model64.cfg.vocab_size, 9)
            r = generate(model64, prompt, DecodeParams(mode="diffusion", max_new_tokens=24, block_size=block, threshold=thr))
            assert M not in r.tokens
            # at least one commit per step: never more steps than masks in a block
            assert all(1 <= s <= block - 1 for s in r.denoise_steps)
            if thr == 1.0:
                assert all(s == block - 1 for s in r.denoise_steps[:-1])  # exactly one commit per step
            if thr == 0.0:
                assert all(s == 1 for s in r.denoise_steps)
            assert r.nfe <= 1 + sum(r.denoise_steps) + len(r.denoise_steps)
    finally:
        with torch.no_grad():
            model64.head.weight[M] -= 50 * model64.head.weight[5]
    assert not torch.equal(bias_rows, model64.head.weight[M])


def test_diffusion_block1_threshold1_equals_ar(model64):
    rng = random.Random(11)
    for _ in range(4):
        prompt = random_prompt(rng, model64.cfg.vocab_size, rng.choice([2, 15]))
        ar = generate(model64, prompt, DecodeParams(mode="ar", max_new_tokens=25))
        df = generate(model64, prompt, DecodeParams(mode="diffusion", max_new_tokens=25, block_size=1, threshold=1.0))
        assert df.tokens == ar.tokens and df.nfe == ar.nfe


def test_eos_stop_callback_and_max_tokens(model64):
    prompt = [0, 40, 41, 42]
    ar = generate(model64, prompt, DecodeParams(mode="ar", max_new_tokens=30))
    assert ar.stop_reason in ("length", "eos") and len(ar.tokens) <= 30
    target = ar.tokens[5]
    for mode in ("ar", "spec", "diffusion"):
        r = generate(model64, prompt, DecodeParams(mode=mode, max_new_tokens=30, stop_token_ids=(target,), block_size=4))
        assert target not in r.tokens and r.stop_reason in ("eos", "length")
        if mode != "diffusion":
            assert r.tokens == ar.tokens[:ar.tokens.index(target)]
        cut = generate(model64, prompt, DecodeParams(mode=mode, max_new_tokens=30, block_size=4),
                       stop=lambda toks: 3 if len(toks) >= 3 else None)
        assert len(cut.tokens) == 3 and cut.stop_reason == "stop"
        assert len(generate(model64, prompt, DecodeParams(mode=mode, max_new_tokens=7, block_size=4)).tokens) == 7
        assert generate(model64, prompt, DecodeParams(mode=mode, max_new_tokens=0)).tokens == []


class CountingModel:
    """Wraps a model; sets an event right after the k-th forward."""

    def __init__(self, model, k, event):
        self.model, self.k, self.event, self.calls = model, k, event, 0

    def install(self):
        orig = self.model.forward

        def fwd(*a, **kw):
            self.calls += 1
            out = orig(*a, **kw)
            if self.calls == self.k:
                self.event.set()
            return out
        self.model.forward = fwd
        return self

    def uninstall(self):
        del self.model.forward


@pytest.mark.parametrize("mode", ["ar", "spec", "diffusion"])
def test_cancel_stops_within_one_forward(model64, mode):
    for k in (1, 2, 5):
        ev = threading.Event()
        c = CountingModel(model64, k, ev).install()
        try:
            r = generate(model64, [0, 9, 10], DecodeParams(mode=mode, max_new_tokens=200, block_size=4, threshold=1.0),
                         cancel=ev)
        finally:
            c.uninstall()
        assert r.stop_reason == "cancelled" and c.calls == k and r.nfe == k


@pytest.mark.parametrize("mode", ["ar", "spec", "diffusion"])
def test_deadline_stops_within_one_forward(model64, mode):
    orig = model64.forward
    calls = []

    def slow(*a, **kw):
        calls.append(time.monotonic())
        time.sleep(0.02)
        return orig(*a, **kw)
    model64.forward = slow
    try:
        t0 = time.monotonic()
        r = generate(model64, [0, 9, 10], DecodeParams(mode=mode, max_new_tokens=500, block_size=4, threshold=1.0,
                                                       deadline=t0 + 0.15))
    finally:
        del model64.forward
    assert r.stop_reason == "deadline"
    assert all(t < t0 + 0.15 for t in calls)  # no forward started after the deadline
    assert time.monotonic() - t0 < 0.15 + 0.2


@pytest.mark.parametrize("mode", ["ar", "spec"])
def test_a_slow_prefill_leaves_the_decode_its_time(model64, mode):
    """An inline deadline that passes during the prompt's prefill (a cold place on a slow CPU) leaves
    only the prefill's token; with decode_s the decode gets that long after the prefill."""
    from engine.generate import run_forwards
    got = {}
    for decode_s in (None, 30.0):
        d = Decode(model64, [0, 9, 10, 11], DecodeParams(mode=mode, max_new_tokens=6, deadline=time.monotonic() + 0.2,
                                                         decode_s=decode_s))
        logits = run_forwards(model64, [d.pending])[0]      # the prefill ...
        time.sleep(0.25)                                     # ... ends after the deadline
        d.feed(logits)
        while not d.done:
            d.feed(run_forwards(model64, [d.pending])[0])
        got[decode_s] = d.result
    assert got[None].stop_reason == "deadline" and len(got[None].tokens) == 1
    assert got[30.0].stop_reason == "length" and len(got[30.0].tokens) == 6
    with pytest.raises(ValueError, match="decode_s"):
        DecodeParams(decode_s=-1)


def test_prefix_reuse(model64):
    rng = random.Random(3)
    prompt = random_prompt(rng, model64.cfg.vocab_size, 60)
    cache = model64.new_cache(256)
    first = generate(model64, prompt, DecodeParams(mode="spec", max_new_tokens=10, block_size=4), cache=cache)
    assert first.prefill_tokens == 60 and first.reused_tokens == 0
    edited = prompt + [50]
    second = generate(model64, edited, DecodeParams(mode="spec", max_new_tokens=10, block_size=4), cache=cache)
    assert second.reused_tokens == 60 and second.prefill_tokens == 1
    fresh = generate(model64, edited, DecodeParams(mode="spec", max_new_tokens=10, block_size=4))
    assert second.tokens == fresh.tokens
    # an edit in the middle keeps the prefix before it
    changed = prompt[:30] + [77] + prompt[31:]
    third = generate(model64, changed, DecodeParams(mode="ar", max_new_tokens=5), cache=cache)
    assert third.reused_tokens == 30
    assert third.tokens == generate(model64, changed, DecodeParams(mode="ar", max_new_tokens=5)).tokens


def test_prefill_only_in_chunks_then_a_decode_reuses_it(model64):
    """engine.generate.Prefill (the daemon's prefetch): the prompt goes into the cache in chunks,
    nothing is generated, and a decode on that cache prefills one token and decodes exactly what a
    fresh decode does; a cancel between chunks leaves the chunks already run, which are reused."""
    from engine.generate import Prefill
    rng = random.Random(5)
    prompt = random_prompt(rng, model64.cfg.vocab_size, 70)
    cache = model64.new_cache(256)
    p = Prefill(model64, prompt, cache=cache, chunk=32)
    shapes = []
    while not p.done:
        shapes.append(len(p.pending.ids))
        step(model64, [p])
    assert shapes == [32, 32, 6] and p.result.tokens == [] and p.result.prefill_tokens == 70
    assert cache.token_ids == prompt and p.result.nfe == 3
    again = Prefill(model64, prompt, cache=cache, chunk=32)
    assert again.done and again.result.prefill_tokens == 0 and again.result.reused_tokens == 70
    after = generate(model64, prompt + [9, 10], DecodeParams(mode="spec", max_new_tokens=8, block_size=4), cache=cache)
    assert after.reused_tokens == 70 and after.prefill_tokens == 2
    fresh = generate(model64, prompt + [9, 10], DecodeParams(mode="spec", max_new_tokens=8, block_size=4))
    assert after.tokens == fresh.tokens

    cancel = threading.Event()
    other = random_prompt(rng, model64.cfg.vocab_size, 100)
    cache2 = model64.new_cache(256)
    p = Prefill(model64, other, cache=cache2, chunk=40, cancel=cancel)
    step(model64, [p])
    cancel.set()           # checked before the next chunk is asked for: the pending one still runs
    step(model64, [p])
    assert p.done and p.result.stop_reason == "cancelled" and cache2.token_ids == other[:80]
    later = generate(model64, other, DecodeParams(mode="ar", max_new_tokens=4), cache=cache2)
    assert later.reused_tokens == 80 and later.tokens == generate(model64, other, DecodeParams(mode="ar", max_new_tokens=4)).tokens


def test_sampling_is_seeded_and_near_zero_temperature_is_greedy(model64):
    prompt = [0, 20, 21]
    a = generate(model64, prompt, DecodeParams(mode="spec", max_new_tokens=20, temperature=1.0, seed=1, block_size=4))
    b = generate(model64, prompt, DecodeParams(mode="spec", max_new_tokens=20, temperature=1.0, seed=1, block_size=4))
    assert a.tokens == b.tokens
    ar = generate(model64, prompt, DecodeParams(mode="ar", max_new_tokens=20))
    cold = generate(model64, prompt, DecodeParams(mode="spec", max_new_tokens=20, temperature=1e-6, seed=2, block_size=4))
    assert cold.tokens == ar.tokens


def test_cli_generate_json(tiny_ckpt):
    out = subprocess.run([sys.executable, "-m", "tricode", "generate", "--model", str(tiny_ckpt), "--mode", "spec",
                          "--block-size", "4", "--max-new-tokens", "12", "--json", "--prompt", "def add(a, b):"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    for key in ("text", "token_ids", "nfe", "tokens_per_forward", "elapsed_ms", "mode"):
        assert key in obj
    assert obj["mode"] == "spec" and len(obj["token_ids"]) <= 12 and obj["nfe"] >= 1
    assert obj["spec_variant"] == "auto" and obj["lookup_steps"] >= 0
    off = subprocess.run([sys.executable, "-m", "tricode", "generate", "--model", str(tiny_ckpt), "--mode", "spec",
                          "--block-size", "4", "--max-new-tokens", "12", "--json", "--no-lookup",
                          "--prompt", "x = x + x + x + x + x + x + x"], capture_output=True, text=True, timeout=120)
    assert off.returncode == 0 and json.loads(off.stdout)["lookup_steps"] == 0


def test_cli_bad_model_is_a_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tricode", "generate", "--model", str(tmp_path), "--prompt", "x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "config.json" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("block", [1, 2, 4, 6])
def test_greedy_quadratic_spec_equals_ar(model64, lora_model64, block):
    rng = random.Random(50 + block)
    for m in (model64, lora_model64):
        for _ in range(3):
            prompt = random_prompt(rng, m.cfg.vocab_size, rng.choice([1, 4, 23]))
            n = rng.choice([1, 9, 30])
            ar = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=n))
            q = generate(m, prompt, DecodeParams(mode="spec", spec_variant="quadratic", max_new_tokens=n, block_size=block))
            assert q.tokens == ar.tokens
            assert q.nfe == 1 + len(q.accept_lengths)  # one forward per step


def test_quadratic_prefix_reuse_keeps_cache_consistent(model64):
    prompt = random_prompt(random.Random(9), model64.cfg.vocab_size, 20)
    cache = model64.new_cache(200)
    p = DecodeParams(mode="spec", spec_variant="quadratic", max_new_tokens=12, block_size=4)
    first = generate(model64, prompt, p, cache=cache)
    cont = prompt + first.tokens[:5]
    second = generate(model64, cont, p, cache=cache)
    assert second.reused_tokens == len(cont) - 1
    assert second.tokens == generate(model64, cont, DecodeParams(mode="ar", max_new_tokens=12)).tokens


def test_prefill_twin_runs_the_prompt_and_keeps_spec_equal_to_ar(tiny_ckpt, monkeypatch):
    from engine import checkpoint
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: False)
    assert load_checkpoint(tiny_ckpt, device="cpu").model.prefill_twin is None
    monkeypatch.setattr(checkpoint, "cpu_has_native_bf16", lambda: True)
    assert load_checkpoint(tiny_ckpt, device="cpu", dtype="float32").model.prefill_twin is None  # asked for fp32
    ck = load_checkpoint(tiny_ckpt, device="cpu")
    m, twin = ck.model, ck.model.prefill_twin
    assert ck.dtype == torch.float32 and twin is not None and twin.head.weight.dtype == torch.bfloat16
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in load_checkpoint(
        tiny_ckpt, device="cpu", dtype="float32").model.parameters())     # the twin is not a parameter
    with forward_widths(twin, dim=1) as widths:
        rng = random.Random(12)
        for _ in range(4):
            prompt = random_prompt(rng, m.cfg.vocab_size, rng.choice([5, 30, 60]))
            ar = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=20))
            for p in (DecodeParams(mode="spec", max_new_tokens=20, block_size=4),
                      DecodeParams(mode="spec", spec_variant="quadratic", max_new_tokens=20, block_size=3)):
                assert generate(m, prompt, p).tokens == ar.tokens
            assert widths[-1] == len(prompt)        # the prompt went through the twin, the steps did not
    assert len(widths) == 12


def test_lookup_drafts_from_the_latest_occurrence():
    from engine.lookup import Lookup
    look = Lookup([1, 2, 3, 4, 5, 9])
    assert look.draft([2, 3, 7, 8, 1, 2, 3], 4) == [4, 5, 9, 2]   # the 3-gram "1 2 3" first (in the prompt)
    assert Lookup([]).draft([9, 2, 3, 7, 2, 3, 8, 1, 2, 3], 2) == [8, 1]   # else the latest earlier 2-gram "2 3"
    h2 = [5, 6, 7, 8, 5, 6, 7]
    assert Lookup([]).draft(h2, 3) == [8, 5, 6]
    assert Lookup([1, 2]).draft([3, 4], 3) == []        # tail never seen before
    look = Lookup([10, 11])
    grown = [12, 13]
    assert look.draft(grown, 2) == []
    grown += [10, 11]                                   # the output grows at its end between calls
    assert look.draft(grown, 2) == [12, 13]


def test_context_drafts_keep_spec_equal_to_ar_and_save_forwards():
    """On the embedded model, code that repeats itself: context drafts replace draft forwards, and the
    greedy output is still AR's token for token, in both spec variants."""
    from engine.embedded_model import default_model
    from textkit.tokenizer import Tokenizer
    path = default_model()
    ck, tok = load_checkpoint(path, device="cpu", dtype="float32"), Tokenizer(path)
    text = "".join(f"    parser.add_argument('--opt{i}', type=int, default={i})\n" for i in range(12))
    prompt = [tok.bos_id] + tok.encode("import argparse\n\ndef options(parser):\n" + text + "    parser.add_argument('--")
    ar = generate(ck.model, prompt, DecodeParams(mode="ar", max_new_tokens=40))
    for variant in ("linear", "quadratic"):
        plain = generate(ck.model, prompt, DecodeParams(mode="spec", spec_variant=variant, max_new_tokens=40,
                                                        block_size=4, lookup=False))
        look = generate(ck.model, prompt, DecodeParams(mode="spec", spec_variant=variant, max_new_tokens=40,
                                                       block_size=4))
        assert look.tokens == plain.tokens == ar.tokens
        assert look.lookup_steps > 0 and plain.lookup_steps == 0
        assert look.nfe < plain.nfe, (variant, look.nfe, plain.nfe)


# -- batching --------------------------------------------------------------------------------------

BATCH_MIX = [
    DecodeParams(mode="ar", max_new_tokens=25),
    DecodeParams(mode="ar", max_new_tokens=9),
    DecodeParams(mode="spec", max_new_tokens=30, block_size=4),
    DecodeParams(mode="spec", max_new_tokens=14, block_size=4),
    DecodeParams(mode="spec", spec_variant="quadratic", max_new_tokens=20, block_size=3),
    DecodeParams(mode="diffusion", max_new_tokens=18, block_size=4, threshold=0.5),
    DecodeParams(mode="diffusion", max_new_tokens=11, block_size=4, threshold=0.5),
]


@pytest.mark.parametrize("m", ["model64", "lora_model64"])
def test_batched_decodes_equal_one_at_a_time(m, request):
    """Requests of every mode and of different prompt lengths decoded together give exactly what each
    gives alone, and forwards of one shape really ran batched (fewer model calls than forwards)."""
    model = request.getfixturevalue(m)
    rng = random.Random(77)
    prompts = [random_prompt(rng, model.cfg.vocab_size, rng.choice([1, 3, 8, 21, 40])) for _ in BATCH_MIX]
    alone = [generate(model, p, q) for p, q in zip(prompts, BATCH_MIX)]
    with forward_widths(model) as calls:
        batched = generate_batch(model, prompts, BATCH_MIX)
    for a, b in zip(alone, batched):
        assert b.tokens == a.tokens and b.stop_reason == a.stop_reason and b.nfe == a.nfe
    assert sum(calls) == sum(r.nfe for r in batched)   # every forward ran once, in some batch
    assert len(calls) < sum(calls) and max(calls) >= 3


def test_batched_ar_runs_one_forward_per_step(model64):
    rng = random.Random(8)
    prompts = [random_prompt(rng, model64.cfg.vocab_size, n) for n in (3, 17, 30, 44)]
    params = [DecodeParams(mode="ar", max_new_tokens=12)] * 4
    with forward_widths(model64) as calls:
        out = generate_batch(model64, prompts, params)
    assert [r.tokens for r in out] == [generate(model64, p, q).tokens for p, q in zip(prompts, params)]
    assert calls == [1, 1, 1, 1] + [4] * 11   # four prefills, then every step one batch of four


def test_batch_members_keep_their_own_cache_and_interrupts(model64):
    """Joining a running batch, prefix reuse per request and a cancel of one member."""
    rng = random.Random(5)
    prompt = random_prompt(rng, model64.cfg.vocab_size, 30)
    cache = model64.new_cache(200)
    generate(model64, prompt, DecodeParams(mode="ar", max_new_tokens=4), cache=cache)
    cancel = threading.Event()
    a = Decode(model64, prompt + [40], DecodeParams(mode="spec", max_new_tokens=20, block_size=4), cache=cache)
    b = Decode(model64, prompt[:7], DecodeParams(mode="ar", max_new_tokens=40), cancel=cancel)
    step(model64, [a, b])
    step(model64, [a, b])
    c = Decode(model64, prompt[:12], DecodeParams(mode="ar", max_new_tokens=10))   # joins mid-way
    rounds = 0
    while not (a.done and b.done and c.done):
        step(model64, [a, b, c])
        rounds += 1
        if rounds == 5:
            cancel.set()
    assert a.result.reused_tokens == 30 and a.result.prefill_tokens == 1
    assert a.result.tokens == generate(model64, prompt + [40], DecodeParams(mode="ar", max_new_tokens=20)).tokens
    assert c.result.tokens == generate(model64, prompt[:12], DecodeParams(mode="ar", max_new_tokens=10)).tokens
    assert b.result.stop_reason == "cancelled" and len(b.result.tokens) < 40
    assert b.result.tokens == generate(model64, prompt[:7], DecodeParams(mode="ar", max_new_tokens=40)).tokens[:len(b.result.tokens)]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["linear", "quadratic"])
def test_greedy_spec_equals_ar_on_cuda_with_triton_kernels(tmp_path, variant):
    path = write_tiny_checkpoint(tmp_path / "c", seed=4, lora=True, hidden=128, heads=4, kv_heads=1)
    m = load_checkpoint(path, device="cuda", dtype="float32").model
    assert m.kernel_impl == "triton"
    rng = random.Random(21)
    for block in (1, 4, 8):
        for _ in range(4):
            prompt = random_prompt(rng, m.cfg.vocab_size, rng.choice([3, 17, 40]))
            ar = generate(m, prompt, DecodeParams(mode="ar", max_new_tokens=24))
            sp = generate(m, prompt, DecodeParams(mode="spec", spec_variant=variant, max_new_tokens=24, block_size=block))
            assert sp.tokens == ar.tokens
