"""The `tricode` command: the one entry point. It imports the subsystems' commands (daemon, lsp,
training) and nothing imports it back. Subcommands import what they need when they run, so
`tricode lsp` never pulls in torch."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from registry.models import model_arg


def _add_decode_args(p: argparse.ArgumentParser) -> None:
    from daemon.model_load import thread_count
    p.add_argument("--model", type=model_arg,
                   help="checkpoint directory, GGUF file or model name (tricode model list); default: the "
                        "daemon's (TRICODE_MODEL, else `model` in the config, else the pulled "
                        "qwen2.5-coder-0.5b when it is there, else the embedded model)")
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
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ... (default: the config's `device`)")
    p.add_argument("--dtype", default=None, help="auto, float32, float16, bfloat16 (default: the config's `dtype`)")
    p.add_argument("--runner", choices=("auto", "llama", "torch"), default=None,
                   help="a GGUF model on a CPU: llama.cpp's kernels (auto falls back to torch if they cannot "
                        "load it; llama never does) or torch (default: TRICODE_RUNNER, else the config's `runner`)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads for torch and llama.cpp (default: the daemon's rule: `cpu_threads` when "
                        "set; else llama.cpp takes the cores other processes leave idle, torch 1 thread on a "
                        "machine of 2 cores or fewer, else every core)")


def prompt_ids(tok, prefix: str, suffix: str | None) -> list[int]:
    """The prompt as fill-in-the-middle (suffix first, as the model was trained) when the tokenizer
    has FIM tokens: the model then continues exactly at the end of the text, whatever token boundary
    that is. Without FIM tokens: BOS + the prefix."""
    from daemon.prompt import unbudgeted_prompt
    return unbudgeted_prompt(tok, prefix, suffix)


PRETRAINED_PROMPT_TOKENS = 8000   # a pretrained model's prompt budget here (load_llama's context is >= 8192)


def _prompt(tok, prefix: str, suffix: str | None, max_new_tokens: int, inline_format: str = "auto"):
    """(ids, heal, format): a pretrained code model's prompt in the daemon's inline format (the
    config's `inline_format`, daemon.prompt.pretrained_format; the prefix clipped from the left at line
    boundaries beyond PRETRAINED_PROMPT_TOKENS, with the whitespace it leaves out of the prompt), else
    tricode's own unclipped layout."""
    from daemon.prompt import PromptBuilder, pretrained_format
    fmt = pretrained_format(tok, inline_format)
    if fmt is None:
        return prompt_ids(tok, prefix, suffix), "", None
    budget = max(PRETRAINED_PROMPT_TOKENS - max_new_tokens, 256)
    p = PromptBuilder(tok, fmt).build_pretrained(prefix, suffix or "", budget)
    return p.ids, p.heal, fmt


def load_model(model_path, cfg, device: str, dtype: str, runner: str | None):
    """(Checkpoint, runner name) the daemon's way (daemon.model_load.load_llama): a GGUF file on a CPU
    runs on llama.cpp's kernels unless the runner is torch; with "auto" a llama.cpp that cannot load
    it falls back to torch with one warning."""
    from daemon.model_load import load_llama
    from engine.checkpoint import load_checkpoint
    from engine.runner import EagerFallback
    ck = load_llama(model_path, cfg.replace(device=device), EagerFallback("the llama.cpp runner"),
                    lambda *a: None, runner=runner)
    if ck is not None:
        return ck, "llama.cpp"
    return load_checkpoint(model_path, device=device, dtype=dtype), "torch"


def cmd_generate(args) -> int:
    import time

    from daemon.config import load as load_config, resolve_model
    from registry.models import ModelError
    from daemon.model_load import cpu_threads, runner_choice, stop_token_ids, use_threads
    from daemon.prompt import fim, protect_special_tokens
    from textkit.tokenizer import Tokenizer, TokenizerError
    from engine.checkpoint import CheckpointError
    from engine.generate import DecodeParams, ModeError, generate
    from engine.kv_cache import CacheFullError

    cfg, problems = load_config()
    for problem in problems:
        print(f"tricode: config: {problem}", file=sys.stderr)
    try:
        model_path = resolve_model(cfg, args.model, strict=True)
    except ModelError as e:
        print(f"tricode: {e}", file=sys.stderr)
        return 2
    if model_path is None:
        print("tricode: no model: pass --model NAME|PATH (tricode model list), or `tricode model pull "
              "qwen2.5-coder-0.5b`", file=sys.stderr)
        return 2
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            print(f"tricode: cannot read --prompt-file {args.prompt_file}: {e}", file=sys.stderr)
            return 2
    else:
        prompt = args.prompt
    device, dtype = args.device or cfg.device, args.dtype or cfg.dtype
    runner = args.runner or runner_choice(cfg)
    threads = use_threads(args.threads or cpu_threads(cfg))
    try:
        t0 = time.perf_counter()
        ckpt, runner_name = load_model(model_path, cfg, device, dtype, runner)
        tok = Tokenizer(model_path)
        load_ms = (time.perf_counter() - t0) * 1e3
        if not args.threads and hasattr(ckpt.model, "set_threads"):    # llama.cpp: the idle cores now
            from daemon.cpu_share import ThreadRule
            threads = ThreadRule().apply(cfg, ckpt.model)
    except (CheckpointError, TokenizerError, ValueError, RuntimeError, OSError) as e:
        print(f"tricode: {e}", file=sys.stderr)
        return 2
    protect_special_tokens(tok)
    ids, heal, fmt = _prompt(tok, prompt, args.suffix, args.max_new_tokens, cfg.inline_format)
    params = DecodeParams(mode=args.mode, max_new_tokens=args.max_new_tokens, block_size=args.block_size,
                          threshold=args.threshold, temperature=args.temperature, seed=args.seed,
                          spec_variant=args.spec_variant, lookup=args.lookup, stop_token_ids=stop_token_ids(tok))
    try:
        res = generate(ckpt.model, ids, params)
    except (ModeError, ValueError) as e:     # e.g. diffusion for a checkpoint without a drafter
        print(f"tricode: {e}", file=sys.stderr)
        return 2
    except CacheFullError as e:              # prompt + --max-new-tokens beyond the model's context
        print(f"tricode: {e}; use a smaller --max-new-tokens or a shorter prompt", file=sys.stderr)
        return 2
    text = tok.decode(res.tokens)
    text = fim.heal(text, heal) if heal else text
    if args.json:
        print(json.dumps({
            "text": text, "token_ids": res.tokens, "mode": res.mode, "spec_variant": args.spec_variant,
            "nfe": res.nfe, "tokens_per_forward": round(res.tokens_per_forward, 4),
            "accept_lengths": res.accept_lengths, "lookup_steps": res.lookup_steps, "denoise_steps": res.denoise_steps,
            "block_size": res.block_size, "stop_reason": res.stop_reason,
            "prompt_tokens": len(ids), "prefill_ms": round(res.prefill_ms, 2),
            "elapsed_ms": round(res.elapsed_ms, 2), "load_ms": round(load_ms, 1),
            "model": str(model_path), "device": str(ckpt.device), "runner": runner_name, "threads": threads,
            "dtype": ("gguf" if runner_name == "llama.cpp" else str(ckpt.dtype).removeprefix("torch.")),
            "prompt_format": fmt or "tricode",
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
