"""`tricode train`: train the embedded tri-mode model on packed token rows, resumably.

Knows the training loop (AdamW, warm-up + cosine, gradient clipping, bf16 autocast on CUDA), the model
size presets, progress reporting and the resume state. The objective is objective.py's; the data
(packed uint16 rows of token ids) is prepared by fim.py. Exports an NLD-layout checkpoint at the end.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import pick_device, save_checkpoint
from engine.config import ModelConfig
from engine.model import NLDModel
from training import objective

from training.presets import PRESETS  # noqa: E402  (torch-free: the CLI lists them)


FIT_AT = 40  # with steps == 0, the step at which the schedule's length is fixed


@dataclass(frozen=True)
class TrainConfig:
    preset: str = "small"
    vocab_size: int = 8192
    seq_len: int = 1024
    block: int = 8
    batch: int = 64
    micro_batch: int = 8       # rows per forward; gradients accumulate to `batch` (math unchanged)
    steps: int = 2000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    w_dlm: float = 0.3
    w_ar: float = 1.0
    seed: int = 0
    grad_clip: float = 1.0
    compile: bool = False
    # drafter_rank > 0: train only an o_proj LoRA drafter (linear_spec_lora/) on top of the frozen
    # checkpoint `init`, with the draft-pass objective (objective.loss(drafter=True)).
    drafter_rank: int = 0
    drafter_alpha: float = 0.0
    init: str = ""
    mask_id: int = 1           # the mask token of the objective (a pulled AR model's: training/ar_drafter.py)

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=self.vocab_size, rope_theta=10000.0, rope_scaling=None,
                           max_position_embeddings=max(4096, 2 * self.seq_len), mask_token_id=1,
                           eos_token_id=0, bos_token_id=0, block_size=self.block, torch_dtype="float16",
                           **PRESETS[self.preset])


def build_model(cfg: TrainConfig, device) -> NLDModel:
    """A fresh model; the `init` checkpoint, all of it trainable (a fine-tune, e.g. the next-edit stage:
    its drafter LoRA is left out, it would be stale); or (drafter training) the frozen `init` checkpoint
    plus a trainable LoRA: an NLD checkpoint's own drafter when it has one of rank `drafter_rank`
    (training continues from it), else a new one (always for a pretrained AR checkpoint: a run continues
    from its resume state instead)."""
    from engine.checkpoint import load_checkpoint
    if not cfg.drafter_rank and cfg.init:
        model = load_checkpoint(cfg.init, device=device, dtype=torch.float32, lora=False).model
        got = {k: getattr(model.cfg, k) for k in PRESETS[cfg.preset]}
        if got != PRESETS[cfg.preset] or model.cfg.vocab_size != cfg.vocab_size:
            raise SystemExit(f"--init {cfg.init} has shape {got} (vocab {model.cfg.vocab_size}), not the preset "
                             f"{cfg.preset!r} (vocab {cfg.vocab_size}); pass the preset it was trained with")
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        return model
    if not cfg.drafter_rank:
        return NLDModel(cfg.model_config()).to(device)
    from engine.pretrained import hf_architecture
    init = Path(cfg.init).expanduser()
    ar = init.is_file() or hf_architecture(init) is not None
    model = load_checkpoint(init, device=device, dtype=torch.float32, lora=not ar).model
    if not model.has_lora or model.layers[0].o_lora.A.shape[0] != cfg.drafter_rank:
        model.add_lora(cfg.drafter_rank, cfg.drafter_alpha or 2.0 * cfg.drafter_rank)
        with torch.no_grad():
            for layer in model.layers:  # B = 0: training starts from the plain model's drafts
                torch.nn.init.normal_(layer.o_lora.A, std=layer.o_lora.A.shape[1] ** -0.5)
    for name, p in model.named_parameters():
        p.requires_grad_("o_lora" in name)
    model.train()
    return model


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def batch_at(data: np.ndarray, cfg: TrainConfig, step: int, device) -> torch.Tensor:
    """Rows for a step, a pure function of (seed, step) so that a resumed run sees the same data."""
    idx = np.random.default_rng([cfg.seed, step]).integers(0, data.shape[0], cfg.batch)
    rows = data[np.sort(idx), : cfg.seq_len].astype(np.int64)
    return torch.from_numpy(rows).to(device, non_blocking=True)


class Progress:
    def __init__(self, total: int, start: int):
        self.total, self.start, self.t0 = total, start, time.time()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, step: int, tokens: int, stats: dict) -> None:
        now = time.time()
        if not self.tty and now - self.last < 15 and step + 1 < self.total:
            return
        self.last = now
        done = step + 1 - self.start
        rate = tokens / max(now - self.t0, 1e-9)
        eta = (self.total - step - 1) * (now - self.t0) / max(done, 1)
        bar = "#" * int(30 * (step + 1) / self.total)
        line = (f"[{bar:<30}] {step + 1}/{self.total} loss {stats['loss']:.3f} ar {stats['ar']:.3f} "
                f"dlm {stats['dlm']:.3f} | {rate:,.0f} tok/s | ETA {eta / 60:.1f} min")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)


def train_step(model, opt, trainable, data: np.ndarray, cfg: TrainConfig, step: int, lr: float, micro: int,
               mask, g: torch.Generator, device) -> tuple[torch.Tensor, dict, int]:
    """One optimiser step on the batch of `step` at learning rate `lr`: gradients accumulated over
    micro-batches of `micro` rows, clipped. Returns (the last micro-batch's loss, its stats, tokens)."""
    g.manual_seed(cfg.seed * 1_000_003 + step)
    for group in opt.param_groups:
        group["lr"] = lr
    x0 = batch_at(data, cfg, step, device)
    opt.zero_grad(set_to_none=True)
    parts = x0.split(micro)
    for part in parts:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, stats = objective.loss(model, part, mask_id=cfg.mask_id, block=cfg.block, w_dlm=cfg.w_dlm,
                                         w_ar=cfg.w_ar, attn_mask=mask, generator=g,
                                         drafter=cfg.drafter_rank > 0)
        (loss / len(parts)).backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in trainable], cfg.grad_clip)
    opt.step()
    return loss, stats, x0.numel()


def _save_state(path: Path, model, opt, step: int, cfg: TrainConfig, tokens: int) -> None:
    """The resume state. A drafter's holds only the LoRA (the frozen base is `init`, read again on
    resume): a few MiB instead of the whole model every save."""
    tmp = path.with_suffix(".tmp")
    weights = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad} if cfg.drafter_rank \
        else model.state_dict()
    torch.save({"model": weights, "opt": opt.state_dict(), "step": step, "tokens": tokens,
                "config": asdict(cfg)}, tmp)
    tmp.replace(path)


@torch.no_grad()
def evaluate_loss(model, data: np.ndarray, cfg: TrainConfig, device, batches: int = 4) -> dict:
    model.eval()
    g = torch.Generator(device=device).manual_seed(1234)
    out = {"ar": 0.0, "dlm": 0.0, "dlm_ce": 0.0}
    mask = objective.training_mask(cfg.seq_len, cfg.block, device)
    for b in range(batches):
        x0 = batch_at(data, replace(cfg, seed=10_000 + b), 0, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            _, stats = objective.loss(model, x0, mask_id=cfg.mask_id, block=cfg.block, attn_mask=mask, generator=g,
                                      drafter=cfg.drafter_rank > 0)
        for k in out:
            out[k] += float(stats[k]) / batches
    model.train()
    return out


def train(cfg: TrainConfig, data_dir: Path, work: Path, *, device=None, minutes: float | None = None,
          resume: bool = True, save_every_s: float = 300.0, deadline: float | None = None) -> Path | None:
    """Run (or continue) training. Returns the state path when all steps are done, None if a stage
    budget (`minutes` of the loop, or the UNIX time `deadline`) ended it early; run again to continue."""
    device = pick_device(device)
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    data = np.load(data_dir / f"train_{cfg.seq_len}.npy", mmap_mode="r")
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "train_state.pt"
    model = build_model(cfg, device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() >= 2]
    no_decay = [p for n, p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    start, tokens = 0, 0
    if not resume and state_path.is_file():
        state_path.unlink()
    if resume and state_path.is_file():
        st = torch.load(state_path, map_location=device, weights_only=False)
        runtime_only = ("micro_batch", "compile")
        if {k: v for k, v in st["config"].items() if k not in runtime_only} != \
                {k: v for k, v in asdict(cfg).items() if k not in runtime_only}:
            raise SystemExit(f"{state_path} was written by a different training config; use --fresh to restart")
        model.load_state_dict(st["model"], strict=not cfg.drafter_rank)
        opt.load_state_dict(st["opt"])
        start, tokens = st["step"], st["tokens"]
        print(f"resuming at step {start}/{cfg.steps} ({tokens:,} tokens seen)", file=sys.stderr)
    print(f"model: {model.cfg.num_parameters / 1e6:.1f}M parameters, {device}; data: {data.shape[0]:,} rows "
          f"of {data.shape[1]} tokens", file=sys.stderr)
    mask = objective.training_mask(cfg.seq_len, cfg.block, device)
    micro = cfg.batch if device.type == "cuda" else cfg.micro_batch
    if cfg.compile and device.type == "cuda":
        # the cache-free masked pass has fixed shapes: compile it alone (the loss gathers masked rows)
        model.hidden_masked = torch.compile(model.hidden_masked)
    model.train()
    # steps == 0: fit the schedule to the stage budget. The first steps are all warm-up, whose
    # learning rate does not depend on the total, so the total can be fixed after timing them.
    fit = cfg.steps == 0
    if fit and (minutes is None or start or cfg.warmup < FIT_AT):
        raise SystemExit(f"--steps 0 (fit to the time budget) needs --minutes, a fresh run and warmup >= {FIT_AT}")
    total = 10**9 if fit else cfg.steps
    progress = Progress(total, start)
    t_start = last_save = time.time()
    g = torch.Generator(device=device)
    step = start
    while step < total:
        loss, stats, n = train_step(model, opt, trainable, data, cfg, step, lr_at(cfg, step), micro, mask, g, device)
        tokens += n
        if step % 10 == 0 or step + 1 == total:
            progress.update(step, tokens - start * n, {"loss": float(loss.detach()), **{k: float(v) for k, v in stats.items()}})
        now = time.time()
        out_of_time = (minutes is not None and now - t_start > minutes * 60) or (deadline is not None and now > deadline)
        if now - last_save > save_every_s or out_of_time or step + 1 == total:
            _save_state(state_path, model, opt, step + 1, cfg, tokens)
            last_save = now
        if out_of_time and step + 1 < total:
            print(f"\nstage budget reached at step {step + 1}/{total}; "
                  f"run the same command again to continue", file=sys.stderr)
            return None
        step += 1
        if fit and step in (10, FIT_AT):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == 10:
                t10 = time.time()
            else:
                per_step = (time.time() - t10) / (FIT_AT - 10)
                total = step + max(1, int((minutes * 60 - (time.time() - t_start) - 30) / per_step))
                cfg = replace(cfg, steps=total)
                progress.total = total
                print(f"\nfitting the schedule to {minutes} min: {per_step * 1e3:.0f} ms/step -> {total} steps",
                      file=sys.stderr)
    print("", file=sys.stderr)
    return state_path


def export(state_path: Path, data_dir: Path, out: Path, heldout_loss: dict | None = None, shards: int = 1) -> Path:
    """Write the NLD-layout checkpoint (fp16) with the tokenizer and the held-out file list."""
    st = torch.load(state_path, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**st["config"])
    model = build_model(cfg, "cpu")
    model.load_state_dict(st["model"], strict=not cfg.drafter_rank)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, dtype=torch.float16, shards=shards)
    shutil.copy(data_dir / "tokenizer.json", out / "tokenizer.json")
    for name in ("heldout_files.txt",):
        if (data_dir / name).is_file():
            shutil.copy(data_dir / name, out / name)
    info = {"train_config": asdict(cfg), "steps": st["step"], "tokens_seen": st["tokens"],
            "parameters": cfg.model_config().num_parameters}
    if heldout_loss:
        info["heldout_loss"] = heldout_loss
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out
