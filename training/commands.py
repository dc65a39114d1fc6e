"""CLI subcommands for the embedded model: `tricode train`, `tricode eval` and `tricode quantize`;
`tricode train --drafter-for NAME` trains a pulled AR model's drafter (training/ar_drafter.py)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cmd_train(args) -> int:
    if args.drafter_for is not None:
        from training.ar_drafter import cmd_drafter
        return cmd_drafter(args)
    args.data_dir = args.data_dir or REPO / "data"
    args.work = args.work or REPO / "runs" / "train"
    args.out = args.out or REPO / "runs" / "model"
    from dataclasses import replace

    from training.fim import prepare_data
    from training.train import TrainConfig, evaluate_loss, export, train
    import numpy as np
    import torch

    cfg = TrainConfig()
    overrides = {k: getattr(args, k) for k in ("preset", "steps", "batch", "micro_batch", "seq_len", "block", "lr",
                                               "vocab_size", "seed", "warmup", "w_dlm", "w_ar", "drafter_rank")
                 if getattr(args, k) is not None}
    if args.init is not None:
        overrides["init"] = str(args.init)
    cfg = replace(cfg, compile=args.compile, **overrides)
    data_dir = args.data_dir
    if args.carry_out is not None:
        return _cumulative(args, cfg)
    if not (data_dir / "tokenizer.json").is_file() or not (data_dir / f"train_{cfg.seq_len}.npy").is_file():
        print(f"preparing data in {data_dir} (corpus, split, tokenizer, packing)...", file=sys.stderr)
        prepare_data(data_dir, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size, seed=cfg.seed,
                     log=lambda m: print(m, file=sys.stderr), next_edit_share=args.next_edit_share,
                     max_files=args.max_files, tokenizer=args.tokenizer)
    state = train(cfg, data_dir, args.work, device=args.device, minutes=args.minutes, resume=not args.fresh)
    if state is None:
        return 3  # stage budget reached; run again to continue
    from engine.checkpoint import pick_device
    device = pick_device(args.device)
    st = torch.load(state, map_location=device, weights_only=False)
    from training.train import build_model
    model = build_model(cfg, device)
    model.load_state_dict(st["model"], strict=not cfg.drafter_rank)
    held = data_dir / f"heldout_{cfg.seq_len}.npy"
    held_rows = np.load(held) if held.is_file() else None
    losses = evaluate_loss(model, held_rows, cfg, device) if held_rows is not None and len(held_rows) else None
    if losses:
        print(f"held-out loss: AR {losses['ar']:.3f}, masked {losses['dlm_ce']:.3f}", file=sys.stderr)
    out = export(state, data_dir, args.out, heldout_loss=losses, shards=args.shards)
    print(f"checkpoint written to {out}", file=sys.stderr)
    return 0


def cmd_quantize(args) -> int:
    from engine.checkpoint import CheckpointError
    from engine.quant import QuantError, QuantSpec
    from engine.quantize import quantize_checkpoint

    if args.bits not in (4, 8):
        print(f"tricode quantize: --bits must be 4 or 8, got {args.bits}", file=sys.stderr)
        return 2
    group = args.group_size if args.group_size is not None else (128 if args.bits == 4 else None)
    if args.bits == 8 and group is not None:
        print("tricode quantize: 8-bit weights use one scale per output row (PyTorch's int8 kernel); "
              "--group-size applies to --bits 4 only", file=sys.stderr)
        return 2
    tty = sys.stderr.isatty()

    def progress(done, total, name):
        """A progress bar on a terminal, a line per tenth of the work otherwise (no dependency)."""
        if args.quiet or not (tty or done == total or done % max(total // 10, 1) == 0):
            return
        line = f"quantize: [{'#' * (30 * done // total):<30}] {done}/{total} tensors  {name}"
        print(("\r" + line[:100].ljust(100)) if tty else line, end="" if tty and done < total else "\n",
              file=sys.stderr, flush=True)

    try:
        spec = QuantSpec(bits=args.bits, group_size=group)
        summary = quantize_checkpoint(args.model, args.out, spec, progress=progress)
    except (CheckpointError, QuantError) as e:
        print(f"tricode quantize: {e}", file=sys.stderr)
        return 2
    print(f"{summary['quantized']} of {summary['tensors']} tensors quantized to {args.bits} bits"
          f"{f' (groups of {group})' if group else ' (per output row)'}; weights "
          f"{summary['bytes_in'] / 2**20:.1f} MiB -> {summary['bytes_out'] / 2**20:.1f} MiB; written to {args.out}",
          file=sys.stderr)
    return 0


def _cumulative(args, cfg) -> int:
    """One run of cumulative training (training/cumulative.py): continue from --carry-in (or the state
    already in --carry-out), train for --minutes or --run-steps, leave the state in --carry-out."""
    from training import carry, cumulative
    from training.datapack import ensure_unpacked

    if (args.minutes is None and args.stop_at is None) == (args.run_steps is None):
        raise SystemExit("a cumulative run (--carry-out) needs exactly one budget: --minutes M (or --stop-at T) "
                         "or --run-steps N")
    data_dir = ensure_unpacked(args.data_dir, cfg.seq_len)
    if args.stop_at is not None:   # an absolute deadline: the time spent starting up counts too
        import time
        left = (args.stop_at - time.time()) / 60
        if left <= 0:
            raise SystemExit(f"--stop-at is {-left:.1f} min in the past: nothing to train")
        args.minutes = left if args.minutes is None else min(args.minutes, left)
    budget = carry.CarryBudget(max_files=args.carry_files, file_bytes=int(args.carry_file_mib * carry.MiB),
                               total_bytes=None if args.carry_total_mib is None else int(args.carry_total_mib * carry.MiB))
    plan = cumulative.RunPlan(minutes=args.minutes, steps=args.run_steps, rewarm=args.rewarm,
                              cooldown=args.cooldown, save_every_s=args.save_every)
    try:
        cumulative.run(cfg, data_dir, args.carry_out, plan, carry_in=args.carry_in, device=args.device,
                       budget=budget)
    except carry.CarryError as e:
        raise SystemExit(str(e))
    if args.export:
        out = cumulative.export_carry(args.carry_out, data_dir, args.out, shards=args.shards)
        print(f"checkpoint written to {out}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from training import carry, cumulative
    import json
    from training.datapack import ensure_unpacked
    try:
        out = cumulative.export_carry(args.carry, args.data_dir, args.out, shards=args.shards)
    except carry.CarryError as e:
        raise SystemExit(str(e))
    print(f"checkpoint written to {out}", file=sys.stderr)
    if args.check:
        res = cumulative.quick_check(out, ensure_unpacked(args.data_dir), args.check, device=args.device)
        print("quick check: " + json.dumps(res), flush=True)
    return 0


def cmd_pack(args) -> int:
    from training.datapack import PackError, build_pack
    try:
        rep = build_pack(args.data_dir, args.out, max_mib=args.max_mib, seq_len=args.seq_len,
                         heldout_rows=args.heldout_rows, start_row=args.start_row,
                         log=lambda m: print(m, file=sys.stderr))
    except (PackError, FileNotFoundError) as e:
        raise SystemExit(f"tricode pack: {e}")
    print(f"pack written to {args.out}: {rep['train_rows']:,} train rows ({rep['train_tokens']:,} tokens), "
          f"{rep['bytes'] / 2**20:.1f} MiB", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train the embedded tri-mode model (resumable; see docs/model_card.md)")
    p.add_argument("--data-dir", type=Path, help="corpus, tokenizer and packed rows (default data/; "
                   "with --drafter-for: WORK/data)")
    p.add_argument("--work", type=Path, help="resume state (default runs/train; with --drafter-for: "
                   "runs/drafter-NAME)")
    p.add_argument("--out", type=Path, help="where the finished checkpoint goes (default runs/model; with "
                   "--drafter-for: MODEL.drafter/ beside the model, where loading finds it)")
    from training.presets import PRESETS
    p.add_argument("--preset", choices=tuple(PRESETS))
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--micro-batch", type=int, dest="micro_batch")
    p.add_argument("--seq-len", type=int, dest="seq_len")
    p.add_argument("--block", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--w-dlm", type=float, dest="w_dlm")
    p.add_argument("--w-ar", type=float, dest="w_ar")
    p.add_argument("--drafter-rank", type=int, dest="drafter_rank",
                   help="train only an o_proj LoRA drafter of this rank on top of --init")
    p.add_argument("--init", type=Path, help="checkpoint to start from: a fine-tune of all of it, or with "
                   "--drafter-rank the drafter LoRA on it frozen")
    d = p.add_argument_group("data preparation (when --data-dir has no packed rows yet)")
    d.add_argument("--next-edit-share", type=float, default=0.0, dest="next_edit_share",
                   help="share of the samples that are next-edit samples (training/next_edit.py), e.g. 0.3")
    d.add_argument("--max-files", type=int, default=0, dest="max_files", help="only this many corpus files")
    d.add_argument("--tokenizer", type=Path, help="reuse this tokenizer.json (a fine-tune keeps the init's)")
    p.add_argument("--vocab-size", type=int, dest="vocab_size")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--minutes", type=float, help="stage budget: save and stop after this long (rerun to resume)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved resume state")
    p.add_argument("--shards", type=int, default=1, help="write the weights in this many safetensors shards")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (CUDA)")
    d = p.add_argument_group("a drafter for a pulled AR model (training/ar_drafter.py)")
    d.add_argument("--drafter-for", dest="drafter_for", metavar="NAME",
                   help="train an o_proj LoRA drafter for this model (a name from `tricode model list`, a "
                        ".gguf file or an HF directory) on top of its frozen weights: it becomes tri-mode")
    d.add_argument("--mask-token", dest="mask_token", metavar="TEXT",
                   help="the special token the drafter masks with (default: <|fim_pad|> or the like)")
    d.add_argument("--corpus", type=Path, action="append",
                   help="a folder of Python files to train on (repeatable; default: this machine's Python "
                        "installation, as for the embedded model)")
    d.add_argument("--corpus-tokens", type=int, default=20_000_000, dest="corpus_tokens",
                   help="at most this many training tokens are prepared")
    c = p.add_argument_group("cumulative runs (training/cumulative.py): a state that travels in few small files")
    c.add_argument("--carry-out", type=Path, dest="carry_out",
                   help="run cumulatively: write the travelling state and runs.jsonl here")
    c.add_argument("--carry-in", type=Path, dest="carry_in",
                   help="continue from this state (default: the one already in --carry-out, if any)")
    c.add_argument("--run-steps", type=int, dest="run_steps", help="this run's step budget (instead of --minutes)")
    c.add_argument("--stop-at", type=float, dest="stop_at",
                   help="end the run by this UNIX time (start-up included); with --minutes, whichever is first")
    c.add_argument("--cooldown", type=float, default=0.2, help="share of the run spent decaying the rate")
    c.add_argument("--rewarm", type=int, default=50, help="warm-up steps of a continuing run")
    c.add_argument("--save-every", type=float, default=60.0, dest="save_every", help="seconds between saves")
    c.add_argument("--carry-files", type=int, default=6, dest="carry_files", help="at most this many state files")
    c.add_argument("--carry-file-mib", type=float, default=16.0, dest="carry_file_mib", help="MiB per state file")
    c.add_argument("--carry-total-mib", type=float, dest="carry_total_mib",
                   help="at most this many MiB in all (what may travel back up with the code)")
    c.add_argument("--export", action="store_true", help="after the run, export the checkpoint to --out")
    p.set_defaults(func=cmd_train)
    e = sub.add_parser("export", help="the NLD checkpoint of a cumulative training state (--carry)")
    e.add_argument("--carry", type=Path, required=True, help="folder of state-*.safetensors and runs.jsonl")
    e.add_argument("--data-dir", type=Path, default=REPO / "data", help="tokenizer.json and heldout_files.txt")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--shards", type=int, default=1)
    e.add_argument("--check", type=int, default=0, help="then greedy spec vs ar on this many held-out rows")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_export)
    k = sub.add_parser("pack", help="the compressed training set that travels to a GPU machine")
    k.add_argument("--data-dir", type=Path, default=REPO / "data", help="prepared data (train/heldout rows, tokenizer)")
    k.add_argument("--out", type=Path, default=REPO / "data" / "pack")
    k.add_argument("--max-mib", type=float, default=24.0, dest="max_mib", help="size limit of the whole pack")
    k.add_argument("--seq-len", type=int, default=1024, dest="seq_len")
    k.add_argument("--heldout-rows", type=int, default=256, dest="heldout_rows")
    k.add_argument("--start-row", type=int, default=0, dest="start_row",
                   help="take rows from here on (wrapping): another slice of the corpus for another lease")
    k.set_defaults(func=cmd_pack)
    from training.evaluate import add_eval_command
    add_eval_command(sub)
    p = sub.add_parser("quantize", help="write a weight-only quantized copy of a checkpoint (int8 or int4)")
    p.add_argument("--model", type=Path, required=True, help="float NLD checkpoint directory")
    p.add_argument("--bits", type=int, required=True, help="4 or 8")
    p.add_argument("--group-size", type=int, dest="group_size",
                   help="4 bits: inputs per scale/zero group (default 128; the CPU kernel takes 32, 64, 128, 256)")
    p.add_argument("--out", type=Path, required=True, help="new directory for the quantized checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quantize)


def main(argv: list[str] | None = None) -> int:
    """`python -m training.commands train ...`: the training commands without the rest of the CLI
    (for a GPU machine that has torch but not the editor-side dependencies)."""
    parser = argparse.ArgumentParser(prog="python -m training.commands")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
