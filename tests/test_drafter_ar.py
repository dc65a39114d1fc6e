"""A drafter for a pulled AR model (training/ar_drafter.py, engine/drafter.py): `tricode train
--drafter-for` on a tiny Qwen2 HF directory with its own tokenizer trains an o_proj LoRA with the draft
objective (its loss falls, the base stays bitwise frozen), writes it beside the model, and loading the
model then serves diffusion and spec with diffusion drafts (greedy spec == ar); a drafter trained for
other weights is refused with a clear message; the daemon keeps llama.cpp unless a mode needs the drafter."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.drafter import DrafterError, drafter_dir
from engine.generate import DecodeParams, ModeError, generate
from engine.reference import naive_generate
from tests.tiny_pretrained import write_tiny_ar_with_tokenizer

ROOT = Path(__file__).resolve().parent.parent
STEPS = 30


def _corpus(d: Path) -> Path:
    """A few of the repository's own modules as training files, and copies under names whose keys
    fall in the held-out split (training/corpus.py split_of), so the held-out loss can be measured."""
    from training.corpus import split_of
    d.mkdir(parents=True)
    for name in ("generate.py", "model.py", "kv_cache.py", "lookup.py", "config.py", "checkpoint.py"):
        shutil.copy(ROOT / "engine" / name, d / name)
    i = held = 0
    while held < 2:
        if split_of(f"site/held_{i}.py") == "heldout":
            shutil.copy(ROOT / "engine" / "runner.py", d / f"held_{i}.py")
            held += 1
        i += 1
    return d


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model, and the CLI run that trained its drafter (exit code, stderr, weights' sha before)."""
    tmp = tmp_path_factory.mktemp("drafter")
    model = write_tiny_ar_with_tokenizer(tmp / "tiny-qwen")
    before = _sha(model / "model.safetensors")
    cmd = [sys.executable, "-m", "tricode", "train", "--drafter-for", str(model), "--corpus", str(_corpus(tmp / "corpus")),
           "--steps", str(STEPS), "--seq-len", "64", "--batch", "8", "--micro-batch", "8", "--warmup", "5",
           "--lr", "3e-3", "--drafter-rank", "8", "--work", str(tmp / "work"), "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp / "cache")))
    return model, r, before, tmp


def test_cli_trains_a_drafter_whose_draft_loss_falls(trained):
    model, r, before, _ = trained
    assert r.returncode == 0, r.stderr[-3000:]
    d = drafter_dir(model)
    assert d == model.with_name("tiny-qwen.drafter")
    assert (d / "linear_spec_lora" / "adapter_model.safetensors").is_file()
    info = json.loads((d / "drafter.json").read_text())
    assert info["mask_token"] == "<|fim_pad|>" and info["mask_token_id"] == 3     # the tokenizer's id
    assert info["base"]["sha256"] == hashlib.sha256(
        "".join(f"{f} {_sha(model / f)}\n" for f in ("config.json", "model.safetensors")).encode()).hexdigest()
    assert info["steps"] == STEPS and info["finished"] and info["rank"] == 8 and info["block_size"] == 8
    assert info["data"]["heldout_rows"] > 0 and info["data"]["train_rows"] > 0
    # the draft objective's training loss falls, and on held-out rows the drafter beats the plain model
    losses = [float(x) for x in re.findall(r"\] \d+/\d+ loss ([\d.]+)", r.stderr)]
    assert len(losses) >= 2 and losses[-1] < 0.8 * losses[0], losses
    ce = info["heldout_draft_ce"]
    assert ce["with_drafter"] < 0.8 * ce["plain_model"], ce
    assert _sha(model / "model.safetensors") == before          # the base file is untouched


def test_loaded_drafter_serves_diffusion_and_lossless_spec(trained):
    model, r, _, _ = trained
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(model, device="cpu", dtype="float64")
    caps = ck.capabilities
    assert caps["modes"] == ["ar", "diffusion", "spec"] and caps["drafter"] is True and caps["family"] == "qwen2"
    m = ck.model
    assert m.has_lora and m.cfg.mask_token_id == 3 and m.cfg.block_size == 8
    assert float(m.layers[0].o_lora.B.abs().sum()) > 0                     # trained, not the zero init
    assert not any(p.requires_grad for p in m.parameters())
    passes = []
    hook = m.register_forward_hook(lambda mod, a, kw, out: passes.append((kw.get("pattern"), kw.get("lora"))),
                                   with_kwargs=True)
    try:
        from textkit.tokenizer import Tokenizer
        tok = Tokenizer(model)
        for text in ("def add(a, b):\n    return", "for i in range(10):\n    print("):
            prompt = [tok.bos_id] + tok.encode(text)
            kw = dict(max_new_tokens=24, stop_token_ids=(), block_size=8)
            ar = generate(m, prompt, DecodeParams(mode="ar", **kw))
            for variant in ("linear", "quadratic"):
                sp = generate(m, prompt, DecodeParams(mode="spec", lookup=False, spec_variant=variant, **kw))
                assert sp.tokens == ar.tokens, (text, variant)
            df = generate(m, prompt, DecodeParams(mode="diffusion", threshold=0.5, **kw))
            assert len(df.tokens) == 24 and 3 not in df.tokens                  # the mask id is never emitted
            assert df.tokens == naive_generate(m, prompt, DecodeParams(mode="diffusion", threshold=0.5, **kw))
            assert naive_generate(m, prompt, DecodeParams(mode="spec", lookup=False, **kw)) == ar.tokens
    finally:
        hook.remove()
    block = [lora for pattern, lora in passes if pattern == "block"]
    assert block and all(lora is True for lora in block)       # denoise steps and drafts run the drafter
    assert all(not lora for pattern, lora in passes if pattern == "causal")
    plain = load_checkpoint(model, device="cpu", dtype="float64", lora=False)
    assert plain.capabilities["modes"] == ["ar", "spec"] and not plain.model.has_lora
    with pytest.raises(ModeError, match="drafter-for"):
        generate(plain.model, [1, 5, 6], DecodeParams(mode="diffusion", max_new_tokens=4))


def test_a_drafter_for_other_weights_is_refused(trained, tmp_path):
    model, r, _, _ = trained
    assert r.returncode == 0, r.stderr[-3000:]
    other = tmp_path / "tiny-qwen"
    shutil.copytree(model, other)
    shutil.copytree(drafter_dir(model), drafter_dir(other))
    load_checkpoint(other, device="cpu")                                 # same weights: accepted
    from safetensors.torch import load_file, save_file
    t = load_file(other / "model.safetensors")
    t["model.norm.weight"] = t["model.norm.weight"] * 1.01
    save_file(t, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DrafterError) as e:
        load_checkpoint(other, device="cpu")
    msg = str(e.value)
    assert "trained for base weights with sha256" in msg and str(other) in msg and "--drafter-for" in msg
    assert load_checkpoint(other, device="cpu", lora=False).capabilities["modes"] == ["ar", "spec"]
    # the daemon's loader refuses the drafter, loads the model without it and says why
    from daemon.config import Config
    from daemon.model_load import load_torch
    ck, note = load_torch(other, Config(device="cpu"))
    assert not ck.model.has_lora and note.startswith("drafter refused:") and "sha256" in note


def test_base_weights_stay_bitwise_frozen(trained):
    model, r, _, tmp = trained
    from training import objective
    from training.train import TrainConfig, build_model, train_step
    cfg = TrainConfig(seq_len=32, block=8, batch=4, micro_batch=2, steps=3, lr=1e-2, warmup=1, w_dlm=1.0, w_ar=0.0,
                      drafter_rank=4, drafter_alpha=8.0, init=str(model), mask_id=3)
    m = build_model(cfg, torch.device("cpu"))
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if "o_lora" not in n}
    trainable = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("o_lora" in n for n, _ in trainable)
    opt = torch.optim.AdamW([p for _, p in trainable], lr=cfg.lr)
    data = np.random.default_rng(0).integers(4, 300, (16, 32)).astype(np.uint32)
    mask = objective.training_mask(cfg.seq_len, cfg.block)
    g = torch.Generator()
    lora_before = m.layers[0].o_lora.B.detach().clone()
    for step in range(3):
        train_step(m, opt, trainable, data, cfg, step, cfg.lr, cfg.micro_batch, mask, g, torch.device("cpu"))
    assert not torch.equal(m.layers[0].o_lora.B, lora_before)
    for n, p in m.named_parameters():
        if "o_lora" not in n:
            assert torch.equal(p, frozen[n]), n
    # the resume state of a drafter holds the LoRA only, not the frozen base
    st = torch.load(tmp / "work" / "train_state.pt", weights_only=False)
    assert st["model"] and all("o_lora" in k for k in st["model"])


def test_budget_stop_writes_the_drafter_so_far_and_resumes(trained, tmp_path):
    model, r, _, tmp = trained
    from training.ar_drafter import cmd_drafter
    from training.commands import main  # noqa: F401  (the parser lives there)
    import argparse
    from training.commands import add_commands
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--drafter-for", str(model), "--data-dir", str(tmp / "work" / "data"),
                              "--steps", "6", "--seq-len", "64", "--batch", "4", "--micro-batch", "4", "--warmup", "2",
                              "--drafter-rank", "4", "--work", str(tmp_path / "w"), "--device", "cpu",
                              "--out", str(tmp_path / "d"), "--minutes", "0"])
    assert cmd_drafter(args) == 3                                     # stopped by the budget after one step
    info = json.loads((tmp_path / "d" / "drafter.json").read_text())
    assert info["steps"] == 1 and not info["finished"]
    args.minutes = None
    assert cmd_drafter(args) == 0
    info = json.loads((tmp_path / "d" / "drafter.json").read_text())
    assert info["steps"] == 6 and info["finished"]


def test_mask_token_choice_and_data_of_another_base(trained, real_gguf):
    model, r, _, tmp = trained
    from textkit.tokenizer import Tokenizer
    from training.ar_drafter import DrafterTrainingError, choose_mask_token, ensure_rows
    tok = Tokenizer(model)
    assert choose_mask_token(tok, 320) == ("<|fim_pad|>", 3)
    with pytest.raises(DrafterTrainingError, match="BOS/EOS"):
        choose_mask_token(tok, 320, "<|endoftext|>")
    with pytest.raises(DrafterTrainingError, match="not one token"):
        choose_mask_token(tok, 320, "<|no such token|>")
    with pytest.raises(DrafterTrainingError, match="another model's tokenizer"):
        ensure_rows(tmp / "work" / "data", tok, "0" * 64, 64, 1000, 0, None, print)
    qwen = Tokenizer(real_gguf)
    assert choose_mask_token(qwen, 151936) == ("<|fim_pad|>", 151662)


def test_daemon_keeps_llama_cpp_unless_a_mode_needs_the_drafter(tmp_path, real_gguf, monkeypatch):
    monkeypatch.delenv("TRICODE_RUNNER", raising=False)
    from daemon.config import Config
    from daemon.model_load import drafter_note, load_llama, needs_diffusion
    from engine.runner import EagerFallback
    path = tmp_path / "q.gguf"
    path.symlink_to(real_gguf)
    assert drafter_note(path, "llama.cpp") is None                      # no drafter: nothing to say
    drafter_dir(path).mkdir()
    note = drafter_note(path, "llama.cpp")
    assert "runner = \"torch\"" in note and drafter_note(path, "torch") is None
    cfg = Config(device="cpu", runner="auto", inline_mode="diffusion")
    assert needs_diffusion(cfg) and load_llama(path, cfg, EagerFallback("llama.cpp"), lambda *a: None) is None
    assert needs_diffusion(replace(cfg, inline_mode="spec", lookup=False))
    assert not needs_diffusion(replace(cfg, inline_mode="spec", refactor_mode="ar"))
    from tricode.commands import _capability_lines
    lines = _capability_lines({"capabilities": {"family": "qwen2", "format": "gguf", "modes": ["ar", "spec"],
                                                "drafter": False, "drafter_note": note}})
    assert len(lines) == 2 and "llama.cpp runs no LoRA" in lines[1]


def test_daemon_serves_the_drafters_modes(trained):
    """A real daemon on the tiny model with its drafter beside it (torch: an HF directory): the status
    shows the drafter and all three modes, and diffusion and spec completions come back."""
    import tempfile
    from protocol import Complete
    from protocol.client import call
    from tests.test_daemon import BASE_CONFIG, D, wait_ready
    model, r, _, _ = trained
    assert r.returncode == 0, r.stderr[-3000:]
    base = Path(tempfile.mkdtemp(prefix="tcdr", dir="/tmp"))    # short: a socket path has a 107-byte limit
    try:
        shutil.copytree(model, base / "m")
        shutil.copytree(drafter_dir(model), drafter_dir(base / "m"))
        d = D(base, base / "m")
        d.config.parent.mkdir(parents=True)
        d.config.write_text(BASE_CONFIG)
        with open(base / "daemon.err", "wb") as err:
            d.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run", "--model", str(d.ckpt)],
                                      env=d.env, cwd=ROOT, stdout=err, stderr=err)
            try:
                st = wait_ready(d.sock, proc=d.proc)
                caps = st["capabilities"]
                assert caps["drafter"] and caps["modes"] == ["ar", "diffusion", "spec"] and st["lora"], caps
                assert "drafter_note" not in caps
                out = d.cli("daemon", "status").stdout
                assert "with a drafter" in out and "ar, diffusion, spec" in out, out
                for mode in ("diffusion", "spec", "ar"):
                    req = Complete(doc="file:///t.py", prefix="def add(a, b):\n    return", suffix="\n", path="/t.py",
                                   max_tokens=8, max_lines=1, mode=mode)
                    res = call(req, socket_path=d.sock, timeout=60)[0]
                    assert res["type"] == "result", (mode, res)
            finally:
                d.proc.kill()
                d.proc.wait(10)
    finally:
        shutil.rmtree(base, ignore_errors=True)
