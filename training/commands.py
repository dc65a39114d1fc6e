"""CLI subcommands for the embedded model: `tricode train`, `tricode eval` and `tricode quantize`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cmd_train(args) -> int:
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
    if not (data_dir / "tokenizer.json").is_file() or not (data_dir / f"train_{cfg.seq_len}.npy").is_file():
        print(f"preparing data in {data_dir} (corpus, split, tokenizer, packing)...", file=sys.stderr)
        prepare_data(data_dir, seq_len=cfg.seq_len, vocab_size=cfg.vocab_size, seed=cfg.seed,
                     log=lambda m: print(m, file=sys.stderr))
    state = train(cfg, data_dir, args.work, device=args.device, minutes=args.minutes, resume=not args.fresh)
    if state is None:
        return 3  # stage budget reached; run again to continue
    from engine.checkpoint import pick_device
    device = pick_device(args.device)
    st = torch.load(state, map_location=device, weights_only=False)
    from training.train import build_model
    model = build_model(cfg, device)
    model.load_state_dict(st["model"])
    held = data_dir / f"heldout_{cfg.seq_len}.npy"
    losses = evaluate_loss(model, np.load(held), cfg, device) if held.is_file() else None
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
    bar = None

    def progress(done, total, name):
        nonlocal bar
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="tensor", desc="quantize", file=sys.stderr, disable=args.quiet)
        bar.update(1)

    try:
        spec = QuantSpec(bits=args.bits, group_size=group)
        summary = quantize_checkpoint(args.model, args.out, spec, progress=progress)
    except (CheckpointError, QuantError) as e:
        print(f"tricode quantize: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    print(f"{summary['quantized']} of {summary['tensors']} tensors quantized to {args.bits} bits"
          f"{f' (groups of {group})' if group else ' (per output row)'}; weights "
          f"{summary['bytes_in'] / 2**20:.1f} MiB -> {summary['bytes_out'] / 2**20:.1f} MiB; written to {args.out}",
          file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train the embedded tri-mode model (resumable; see docs/model_card.md)")
    p.add_argument("--data-dir", type=Path, default=REPO / "data", help="corpus, tokenizer and packed rows")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "train", help="resume state")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "model", help="where the finished checkpoint goes")
    p.add_argument("--preset", choices=("tiny", "small", "base"))
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
    p.add_argument("--init", type=Path, help="checkpoint to start from (drafter training)")
    p.add_argument("--vocab-size", type=int, dest="vocab_size")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--minutes", type=float, help="stage budget: save and stop after this long (rerun to resume)")
    p.add_argument("--fresh", action="store_true", help="ignore a saved resume state")
    p.add_argument("--shards", type=int, default=1, help="write the weights in this many safetensors shards")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (CUDA)")
    p.set_defaults(func=cmd_train)
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
