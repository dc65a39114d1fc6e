"""The `tricode` command: the one entry point. It imports the subsystems' commands (daemon, lsp,
training) and nothing imports it back. Subcommands import what they need when they run, so
`tricode lsp` never pulls in torch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.embedded_model import default_model
from registry.models import model_arg


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=model_arg, help="checkpoint directory, GGUF file or model name (default: the embedded model)")
    p.add_argument("--mode", choices=("ar", "diffusion", "spec"), default="spec")
    p.add_argument("--spec-variant", choices=("auto", "linear", "quadratic"), default="auto",
                   help="auto: quadratic on a GPU, linear on a CPU")
    p.add_argument("--no-lookup", dest="lookup", action="store_false",
                   help="spec: draft only by diffusion, never from the context (prompt lookup)")
    p.add_argument("--block-size", type=int)
    p.add_argument("--threshold", type=float, help="diffusion commit threshold (0..1)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16")


def prompt_ids(tok, prefix: str, suffix: str | None) -> list[int]:
    """The prompt as fill-in-the-middle (suffix first, as the model was trained) when the tokenizer
    has FIM tokens: the model then continues exactly at the end of the text, whatever token boundary
    that is. Without FIM tokens: BOS + the prefix."""
    from daemon.prompt import unbudgeted_prompt
    return unbudgeted_prompt(tok, prefix, suffix)


def cmd_generate(args) -> int:
    import time

    from textkit.tokenizer import Tokenizer, TokenizerError
    from engine.checkpoint import CheckpointError, load_checkpoint
    from engine.generate import DecodeParams, generate

    model_dir = args.model or default_model()
    if model_dir is None:
        print("tricode: no model: pass --model DIR (an NLD checkpoint directory)", file=sys.stderr)
        return 2
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            print(f"tricode: cannot read --prompt-file {args.prompt_file}: {e}", file=sys.stderr)
            return 2
    else:
        prompt = args.prompt
    try:
        params = DecodeParams(mode=args.mode, max_new_tokens=args.max_new_tokens, block_size=args.block_size,
                              threshold=args.threshold, temperature=args.temperature, seed=args.seed,
                              spec_variant=args.spec_variant, lookup=args.lookup)
        t0 = time.perf_counter()
        ckpt = load_checkpoint(model_dir, device=args.device, dtype=args.dtype)
        tok = Tokenizer(model_dir)
        load_ms = (time.perf_counter() - t0) * 1e3
    except (CheckpointError, TokenizerError, ValueError) as e:
        print(f"tricode: {e}", file=sys.stderr)
        return 2
    ids = prompt_ids(tok, prompt, args.suffix)
    res = generate(ckpt.model, ids, params)
    text = tok.decode(res.tokens)
    if args.json:
        print(json.dumps({
            "text": text, "token_ids": res.tokens, "mode": res.mode, "spec_variant": args.spec_variant,
            "nfe": res.nfe, "tokens_per_forward": round(res.tokens_per_forward, 4),
            "accept_lengths": res.accept_lengths, "lookup_steps": res.lookup_steps, "denoise_steps": res.denoise_steps,
            "block_size": res.block_size, "stop_reason": res.stop_reason,
            "prompt_tokens": len(ids), "prefill_ms": round(res.prefill_ms, 2),
            "elapsed_ms": round(res.elapsed_ms, 2), "load_ms": round(load_ms, 1),
            "model": str(model_dir), "device": str(ckpt.device), "dtype": str(ckpt.dtype).removeprefix("torch."),
        }))
    else:
        print(prompt + text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tricode", description="Local code completion with a tri-mode model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt with one of the three decoders")
    _add_decode_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt")
    src.add_argument("--prompt-file", type=Path)
    p.add_argument("--suffix", help="text after the gap (fill-in-the-middle); default: none")
    p.add_argument("--json", action="store_true", help="print one JSON object with text and statistics")
    p.set_defaults(func=cmd_generate)

    from tricode.commands import add_commands as add_daemon_commands
    from lsp.command import add_commands as add_lsp_commands
    add_daemon_commands(sub)
    add_lsp_commands(sub)
    from training.commands import add_commands as add_training_commands
    add_training_commands(sub)
    from registry.commands import add_model_commands
    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
