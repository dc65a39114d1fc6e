"""Cumulative training: runs of unknown length, each continuing from the state the last one returned.

A GPU is lent now and then for minutes; each lease runs one *run*: load the travelling state
(training/carry.py), train for a time or step budget, save the state (periodically, so a run that is
cut off still leaves one), and append the run to ``runs.jsonl`` beside the state.

Schedule: warm-up, stable, cool-down *within every run*. The peak learning rate is held while the
run's budget lasts, and the last `cooldown` share of the run decays it linearly to
``lr * min_lr_ratio``; the next run re-warms from zero over `rewarm` steps (its moments may have been
left behind, and its weights are cooled-down ones). Why not one cosine: the total length is unknown
when a run starts (how many leases will come, and how long each is, is not known), and a cosine
fitted to one run would leave every later run restarting a whole cosine. Why not WSD with a decayed
copy exported beside the stable weights: the returned files hold one copy of the weights, not two
(at 40M+ parameters even one is a squeeze). The price is that a cool-down's steps run at a lower rate
than stable ones would; every returned state is a finished, usable model in exchange.

Time budgets: the cool-down starts when `(1 - cooldown)` of the budget is spent; its length in steps
is then fixed from the measured step time, and the run stops when it is done or the budget is gone.
Step budgets (`steps`) make a run deterministic: the CPU smoke tests use them.

The data position is the global step: rows come from train.batch_at(seed, step), a pure function of
the two, so run k+1 sees new batches. This module knows nothing of the GPU machine or its limits
beyond the CarryBudget it is given.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import threading
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.checkpoint import pick_device
from training import carry, objective
from training.train import TrainConfig, build_model, evaluate_loss, train_step

RUNS_FILE = "runs.jsonl"
# fields of TrainConfig that may change between runs without making the state another model's
RUN_FIELDS = ("steps", "micro_batch", "compile", "warmup", "lr", "batch", "min_lr_ratio", "grad_clip",
              "weight_decay", "w_dlm", "w_ar")


@dataclass(frozen=True)
class RunPlan:
    minutes: float | None = None    # this run's budget (wall clock from the start of run(): loading, training), or
    steps: int | None = None        # a step budget (deterministic)
    rewarm: int = 50                # warm-up steps of every run after the first (the first: cfg.warmup)
    cooldown: float = 0.2           # share of the run spent decaying the rate to lr * min_lr_ratio
    save_every_s: float = 60.0
    eval_batches: int = 4


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores, {socket.gethostname()})"


def read_runs(path: str | os.PathLike | None) -> list[dict]:
    """The run records in `path`/runs.jsonl (empty without one)."""
    if path is None or not (Path(path) / RUNS_FILE).is_file():
        return []
    return [json.loads(line) for line in (Path(path) / RUNS_FILE).read_text().splitlines() if line.strip()]


def _write_runs(path: Path, runs: list[dict]) -> None:
    tmp = path / (RUNS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in runs))
    os.replace(tmp, path / RUNS_FILE)


class Schedule:
    """Learning rate of run-local step i: linear warm-up over `warm` steps, then the peak, then from
    step `cool_start` a linear decay over `cool_steps` to the floor."""

    def __init__(self, peak: float, floor_ratio: float, warm: int):
        self.peak, self.floor, self.warm = peak, peak * floor_ratio, max(1, warm)
        self.cool_start: int | None = None
        self.cool_steps = 0

    def start_cooldown(self, at: int, steps: int) -> None:
        self.cool_start, self.cool_steps = at, max(1, steps)

    @property
    def end(self) -> int | None:
        return None if self.cool_start is None else self.cool_start + self.cool_steps

    def lr(self, i: int) -> float:
        lr = self.peak * min(1.0, (i + 1) / self.warm)
        if self.cool_start is not None and i >= self.cool_start:
            frac = min(1.0, (i - self.cool_start + 1) / self.cool_steps)
            lr = min(lr, self.peak + (self.floor - self.peak) * frac)
        return lr


def _check_same_model(desc: dict, cfg: TrainConfig, where) -> None:
    old = {k: v for k, v in desc["config"].items() if k not in RUN_FIELDS}
    new = {k: v for k, v in asdict(cfg).items() if k not in RUN_FIELDS}
    if old != new:
        diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        raise carry.CarryError(f"{where} holds another model or data setup (state vs now: {diff}); "
                               f"use the same preset/seq_len/block/vocab/seed, or start fresh without --carry-in")


def run(cfg: TrainConfig, data_dir: Path, carry_out: Path, plan: RunPlan, *, carry_in: Path | None = None,
        device=None, budget: carry.CarryBudget = carry.CarryBudget(), log=None) -> dict:
    """One cumulative run; returns its record (also the last line of carry_out/runs.jsonl)."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if (plan.minutes is None) == (plan.steps is None):
        raise ValueError("a run needs exactly one budget: minutes or steps")
    device = pick_device(device)
    t_start = time.time()
    data = np.load(Path(data_dir) / f"train_{cfg.seq_len}.npy", mmap_mode="r")
    held_path = Path(data_dir) / f"heldout_{cfg.seq_len}.npy"
    carry_out = Path(carry_out)
    carry_out.mkdir(parents=True, exist_ok=True)
    if carry_in is None and carry.has_carry(carry_out):
        carry_in = carry_out
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.dim() >= 2]
    no_decay = [p for n, p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    history: list[dict] = []
    start, tokens, moments = 0, 0, False
    if carry_in is not None and carry.has_carry(carry_in):
        desc, _ = carry.read_carry(carry_in)
        _check_same_model(desc, cfg, carry_in)
        desc = carry.load_carry(carry_in, model, opt)
        start, tokens, moments = desc["step"], desc["tokens"], desc["moments_loaded"]
        history = read_runs(carry_in)
        log(f"continuing from {carry_in}: step {start}, {tokens:,} tokens, format {desc['format']}"
            f"{' (moments carried)' if moments else ' (moments restart: re-warm-up)'}")
    first = start == 0
    sched = Schedule(cfg.lr, cfg.min_lr_ratio, cfg.warmup if first else (0 if moments else plan.rewarm))
    if moments and not first:
        sched.warm = max(1, plan.rewarm // 5)   # the rate left the floor at the last cool-down: brief re-warm
    if plan.steps is not None:
        cool = int(round(plan.cooldown * plan.steps))
        sched.start_cooldown(plan.steps - cool, cool) if cool else None
    rec = {"run": len(history) + 1, "start": _now(), "end": None, "complete": False,
           "device": device_name(device), "preset": cfg.preset,
           "parameters": sum(p.numel() for p in model.parameters()),
           "step_start": start, "step_end": start, "tokens_start": tokens, "tokens_end": tokens,
           "tokens_run": 0, "wall_s": 0.0, "train_s": 0.0, "tokens_per_s": 0.0,
           "lr": cfg.lr, "warmup": sched.warm, "cooldown": plan.cooldown, "moments_carried": moments,
           "budget": {"minutes": plan.minutes, "steps": plan.steps},
           "train_loss": None, "heldout_loss": None, "carry": None, "data_rows": int(data.shape[0])}

    def save(final: bool) -> None:
        meta = {"step": start + i, "tokens": tokens, "config": asdict(cfg), "saved": _now()}
        rec.update(step_end=start + i, tokens_end=tokens, tokens_run=tokens - rec["tokens_start"],
                   end=_now(), wall_s=round(time.time() - t_start, 1), train_s=round(time.time() - t_loop, 1),
                   complete=final)
        rec["tokens_per_s"] = round(rec["tokens_run"] / max(rec["train_s"], 1e-9))
        try:
            rec["carry"] = carry.save_carry(carry_out, model, opt, meta, budget)
        except carry.CarryError as e:
            if budget.total_bytes is None:
                raise
            # over the upload room: keep the state anyway within the return limit (it still comes
            # back), and say that the next lease cannot take it along unless the working tree shrinks
            rec["carry"] = carry.save_carry(carry_out, model, opt, meta, carry.CarryBudget(
                budget.max_files, budget.file_bytes, max(budget.total_bytes, carry.RETURN_TOTAL)))
            rec["carry_warning"] = f"over the {budget.total_bytes / carry.MiB:.1f} MiB total: {e}"
        _write_runs(carry_out, history + [rec])

    mask = objective.training_mask(cfg.seq_len, cfg.block, device)
    micro = cfg.batch if device.type == "cuda" else cfg.micro_batch
    if cfg.compile and device.type == "cuda":
        model.hidden_masked = torch.compile(model.hidden_masked)
    model.train()
    g = torch.Generator(device=device)
    losses: list[float] = []
    step_times: list[float] = []
    t_loop = last_save = time.time()
    budget_s = None if plan.minutes is None else plan.minutes * 60
    i = 0
    stop = threading.Event()   # SIGTERM (the session's `timeout`): finish the step, save, leave
    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log(f"run {rec['run']}: {rec['parameters'] / 1e6:.1f}M parameters on {rec['device']}, from step {start}; "
        f"budget {plan.minutes} min / {plan.steps} steps; data {data.shape[0]:,} rows")
    while True:
        end = sched.end if plan.steps is None else plan.steps
        if end is not None and i >= end:
            break
        elapsed = time.time() - t_start      # the budget counts from the start: loading is part of the run
        if stop.is_set():
            log(f"SIGTERM at run step {i}: saving and stopping")
            break
        if budget_s is not None:
            if elapsed >= budget_s:
                break
            if sched.cool_start is None and elapsed >= (1 - plan.cooldown) * budget_s and step_times:
                per = statistics.median(step_times[-50:])
                sched.start_cooldown(i, int((budget_s - elapsed) / per))
                log(f"cool-down from run step {i}: {sched.cool_steps} steps at {per * 1e3:.0f} ms/step")
        t0 = time.time()
        step = start + i
        loss, _, n = train_step(model, opt, trainable, data, cfg, step, sched.lr(i), micro, mask, g, device)
        tokens += n
        i += 1
        if i % 10 == 0 or i < 3:
            losses.append(float(loss.detach()))
            if device.type == "cuda":
                torch.cuda.synchronize()
        step_times.append(time.time() - t0)
        if i % 100 == 0:
            log(f"step {start + i} loss {losses[-1]:.3f} lr {sched.lr(i - 1):.2e} "
                f"{n / max(statistics.median(step_times[-50:]), 1e-9):,.0f} tok/s")
        if time.time() - last_save > plan.save_every_s:
            rec["train_loss"] = round(statistics.fmean(losses[-10:]), 4) if losses else None
            save(final=False)
            last_save = time.time()
    rec["train_loss"] = round(statistics.fmean(losses[-10:]), 4) if losses else None
    if stop.is_set():
        rec["stopped"] = "SIGTERM"
    save(final=True)              # the state first: a kill during the evaluation loses only its figure
    if not stop.is_set() and held_path.is_file():
        held = evaluate_loss(model, np.load(held_path), cfg, device, batches=plan.eval_batches)
        rec["heldout_loss"] = {k: round(v, 4) for k, v in held.items()}
        _write_runs(carry_out, history + [rec])
        log(f"held-out loss: AR {held['ar']:.3f}, masked {held['dlm_ce']:.3f}")
    if old_handler is not None:
        signal.signal(signal.SIGTERM, old_handler)
    log(f"run {rec['run']} done: steps {rec['step_start']} -> {rec['step_end']}, {rec['tokens_run']:,} tokens "
        f"in {rec['train_s']} s; state {rec['carry']['format']} in {rec['carry']['files']} files "
        f"({rec['carry']['bytes'] / 2**20:.1f} MiB) at {carry_out}")
    return rec


def export_carry(carry_dir: Path, data_dir: Path, out: Path, shards: int = 1) -> Path:
    """The NLD-layout checkpoint (fp16) of a travelling state, with its tokenizer, held-out list and a
    training.json that sums up every run."""
    import shutil

    from engine.checkpoint import save_checkpoint

    desc, _ = carry.read_carry(carry_dir)
    cfg = TrainConfig(**desc["config"])
    model = build_model(cfg, "cpu")
    carry.load_carry(carry_dir, model, None)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, dtype=torch.float16, shards=shards)
    shutil.copy(Path(data_dir) / "tokenizer.json", out / "tokenizer.json")
    if (Path(data_dir) / "heldout_files.txt").is_file():
        shutil.copy(Path(data_dir) / "heldout_files.txt", out / "heldout_files.txt")
    runs = read_runs(carry_dir)
    info = {"train_config": desc["config"], "steps": desc["step"], "tokens_seen": desc["tokens"],
            "parameters": cfg.model_config().num_parameters, "carry_format": desc["format"],
            "runs": len(runs), "gpu_seconds": round(sum(r["train_s"] for r in runs), 1)}
    if runs and runs[-1].get("heldout_loss"):
        info["heldout_loss"] = runs[-1]["heldout_loss"]
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def quick_check(model_dir: Path, data_dir: Path, n: int = 8, device=None, prompt_tokens: int = 256,
                new_tokens: int = 32, block: int = 4) -> dict:
    """Greedy `ar` and `spec` on `n` held-out rows (the first `prompt_tokens` as the prompt): how many
    agree token for token, and spec's tokens per forward. A smoke check of a fresh export, not the
    evaluation (that is `tricode eval`)."""
    from engine.checkpoint import load_checkpoint
    from engine.generate import DecodeParams, generate

    seq = json.loads((Path(model_dir) / "training.json").read_text())["train_config"]["seq_len"]
    rows = np.load(Path(data_dir) / f"heldout_{seq}.npy", mmap_mode="r")[:n]
    ck = load_checkpoint(model_dir, device=str(pick_device(device)))
    same, tpf = 0, []
    for r in rows:
        prompt = [int(t) for t in r[:prompt_tokens]]
        ar = generate(ck.model, prompt, DecodeParams(mode="ar", max_new_tokens=new_tokens))
        sp = generate(ck.model, prompt, DecodeParams(mode="spec", max_new_tokens=new_tokens, block_size=block))
        same += sp.tokens == ar.tokens
        tpf.append(sp.tokens_per_forward)
    return {"rows": len(rows), "spec_equals_ar": same, "spec_tpf_mean": round(statistics.fmean(tpf), 3) if tpf else None,
            "device": str(ck.device), "dtype": str(ck.dtype)}
