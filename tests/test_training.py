"""The training objective and loop: the mask follows DESIGN.md §4, training learns, resume is exact,
and the exported checkpoint serves all three decoders."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.generate import DecodeParams, generate
from training import objective
from training.train import TrainConfig, build_model, export, train


def test_training_mask_rules():
    L, blk = 12, 4
    m = objective.training_mask(L, blk)
    for i in range(2 * L):
        for j in range(2 * L):
            qi_noisy, kj_noisy = i < L, j < L
            pi, pj = i % L, j % L
            if qi_noisy and kj_noisy:
                want = pi // blk == pj // blk            # own block, both directions
            elif qi_noisy:
                want = pj // blk < pi // blk              # clean tokens of strictly earlier blocks
            elif kj_noisy:
                want = False                              # clean never sees noisy
            else:
                want = pj <= pi                           # clean is causal
            assert bool(m[i, j]) == want, (i, j)


def test_noise_keeps_block_openers_and_rate():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(6, 50, (64, 32))
    xt, masked, p = objective.noise(x0, 1, 8, g)
    assert not masked[:, ::8].any()
    assert torch.equal(xt[~masked], x0[~masked]) and (xt[masked] == 1).all()
    rate = masked.float().mean(1)
    expect = p.squeeze(1) * 28 / 32
    assert (rate - expect).abs().mean() < 0.1


def synthetic_data(tmp_path, rows=64, seq=64, vocab=64):
    """A 'language' of repeated 8-token motifs: learnable in a few hundred steps."""
    rng = np.random.default_rng(0)
    data = [np.tile(rng.integers(6, vocab, 8), seq // 8 + 1)[:seq] for _ in range(rows)]
    np.save(tmp_path / f"train_{seq}.npy", np.array(data, dtype=np.uint16))
    from tests.tiny_checkpoint import tiny_tokenizer
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    return tmp_path


CFG = TrainConfig(preset="tiny", vocab_size=320, seq_len=64, block=8, batch=8, micro_batch=4, steps=200, lr=1e-2,
                  warmup=10)


def test_training_learns_and_exports_a_tri_mode_checkpoint(tmp_path):
    data = synthetic_data(tmp_path)
    state = train(CFG, data, tmp_path / "work", device="cpu")
    st = torch.load(state, weights_only=False)
    assert st["step"] == CFG.steps
    out = export(state, data, tmp_path / "model")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    ck = load_checkpoint(out, device="cpu")
    row = np.load(data / "train_64.npy")[3].tolist()
    prompt = [0] + row[:20]
    ar = generate(ck.model, prompt, DecodeParams(mode="ar", max_new_tokens=24))
    sp = generate(ck.model, prompt, DecodeParams(mode="spec", max_new_tokens=24, block_size=8))
    df = generate(ck.model, prompt, DecodeParams(mode="diffusion", max_new_tokens=24, block_size=8, threshold=0.5))
    # the motif repeats: all three continue it, and the drafts are mostly right
    assert ar.tokens[:16] == row[20:36]
    assert sp.tokens == ar.tokens
    assert df.tokens[:16] == row[20:36]
    assert sp.tokens_per_forward > 2.0 and df.tokens_per_forward > 2.0


def test_resume_is_exact(tmp_path):
    data = synthetic_data(tmp_path)
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 12})
    straight = train(cfg, data, tmp_path / "a", device="cpu")
    assert train(cfg, data, tmp_path / "b", device="cpu", minutes=0.0) is None  # stopped after one step
    assert torch.load(tmp_path / "b" / "train_state.pt", weights_only=False)["step"] == 1
    resumed = train(cfg, data, tmp_path / "b", device="cpu")
    a = torch.load(straight, weights_only=False)["model"]
    b = torch.load(resumed, weights_only=False)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_drafter_lora_trains_only_the_adapter_and_keeps_spec_exact(tmp_path):
    data = synthetic_data(tmp_path)
    base_cfg = TrainConfig(**{**CFG.__dict__, "steps": 30})
    base = export(train(base_cfg, data, tmp_path / "work", device="cpu"), data, tmp_path / "base")
    cfg = TrainConfig(**{**CFG.__dict__, "steps": 20, "drafter_rank": 4, "init": str(base), "w_ar": 0.0,
                         "w_dlm": 1.0, "lr": 3e-3})
    out = export(train(cfg, data, tmp_path / "dwork", device="cpu"), data, tmp_path / "drafted")
    assert (out / "linear_spec_lora" / "adapter_model.safetensors").is_file()
    from safetensors.torch import load_file
    a, b = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the base weights are frozen
    ck = load_checkpoint(out, device="cpu")
    assert ck.model.has_lora and float(ck.model.layers[0].o_lora.B.abs().sum()) > 0
    row = np.load(data / "train_64.npy")[5].tolist()
    prompt = [0] + row[:13]
    ar = generate(ck.model, prompt, DecodeParams(mode="ar", max_new_tokens=20))
    for variant in ("linear", "quadratic"):
        sp = generate(ck.model, prompt, DecodeParams(mode="spec", spec_variant=variant, max_new_tokens=20, block_size=4))
        assert sp.tokens == ar.tokens


def test_drafter_training_continues_from_the_checkpoints_own_drafter(tiny_ckpt):
    from engine.checkpoint import load_checkpoint as load
    from tests.tiny_checkpoint import write_tiny_checkpoint
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = write_tiny_checkpoint(Path(d) / "lora", seed=3, lora=True)
        shipped = load(path, device="cpu", dtype="float32").model
        rank = shipped.layers[0].o_lora.A.shape[0]
        same = build_model(TrainConfig(**{**CFG.__dict__, "drafter_rank": rank, "init": str(path)}), "cpu")
        assert torch.equal(same.layers[0].o_lora.B, shipped.layers[0].o_lora.B)      # continued
        other = build_model(TrainConfig(**{**CFG.__dict__, "drafter_rank": rank + 1, "init": str(path)}), "cpu")
        assert float(other.layers[0].o_lora.B.abs().sum()) == 0                       # a new one
        assert all(p.requires_grad == ("o_lora" in n) for n, p in same.named_parameters())


def test_distill_rows_are_text_then_the_models_greedy_continuation(tiny_ckpt):
    from training.distill import make_rows
    model = load_checkpoint(tiny_ckpt, device="cpu", dtype="float64").model   # batched == alone, no near-ties
    data = np.random.default_rng(0).integers(6, model.cfg.vocab_size, (10, 64)).astype(np.uint16)
    rows = make_rows(model, data, 5, 12, 9, 2, 0, lambda m: None)
    assert rows.shape == (5, 21) and rows.dtype == np.uint16
    for r in rows:
        ctx = r[:12].tolist()
        assert any(ctx == data[i, o:o + 12].tolist() for i in range(10) for o in range(53))
        greedy = generate(model, ctx, DecodeParams(mode="ar", max_new_tokens=9, stop_token_ids=()))
        n = len(greedy.tokens)                     # AR stops at EOS; the rows go on past it
        assert r[12:12 + n].tolist() == greedy.tokens
