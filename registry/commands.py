"""`tricode model list|pull|import|remove`: the command-line face of registry.models and registry.pull."""
from __future__ import annotations

import argparse
import json
import sys

from registry.catalogue import CATALOGUE
from registry.models import ModelError, import_model, installed, models_dir, remove


def add_model_commands(sub) -> None:
    """Add `model` with its subcommands to an argparse subparsers object."""
    m = sub.add_parser("model", help="pull, list, import and remove models (by name)")
    msub = m.add_subparsers(dest="model_command", required=True)

    p = msub.add_parser("list", help="the models on this machine and the ones that can be pulled")
    p.add_argument("--json", action="store_true", help="one JSON object: installed and pullable models")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("pull", help="download a model, check its pinned sha256, install it")
    p.add_argument("name", choices=sorted(CATALOGUE), metavar="NAME", help=", ".join(sorted(CATALOGUE)))
    p.add_argument("--force", action="store_true", help="pull again even if it is already here")
    p.set_defaults(func=cmd_pull)

    p = msub.add_parser("import", help="use your own GGUF file or Hugging Face directory by name (by reference)")
    p.add_argument("path")
    p.add_argument("--name", help="the name to use (default: the file or directory name)")
    p.set_defaults(func=cmd_import)

    p = msub.add_parser("remove", help="delete a pulled model, or forget an imported one (its file stays)")
    p.add_argument("name")
    p.add_argument("--with-drafter", action="store_true", dest="with_drafter",
                   help="also delete a drafter trained beside the model (refused without it)")
    p.set_defaults(func=cmd_remove)


def _err(msg: str) -> int:
    print(f"tricode: {msg}", file=sys.stderr)
    return 1


def cmd_list(args) -> int:
    have = installed()
    if args.json:
        print(json.dumps({"models_dir": str(models_dir()),
                          "installed": [m.to_json() for m in have],
                          "pullable": [{"name": e.name, "size": e.size, "sha256": e.sha256, "license": e.license,
                                        "pulled": any(m.name == e.name and m.verified for m in have)}
                                       for e in CATALOGUE.values()]}, indent=2))
        return 0
    print(f"models in {models_dir()}:")
    if not have:
        print("  (none)")
    for m in have:
        state = ("verified" if m.verified else "NOT verified (incomplete or changed)") if m.kind == "pulled" \
            else ("imported, by reference" if m.path.exists() else "imported, MISSING")
        print(f"  {m.name:<24} {m.size / 1e6:>9,.0f} MB  {state:<24} {m.path}")
    missing = [e for e in CATALOGUE.values() if not any(m.name == e.name and m.verified for m in have)]
    if missing:
        print("pullable (tricode model pull NAME):")
        for e in missing:
            print(f"  {e.name:<24} {e.size / 1e6:>9,.0f} MB  {e.license}, {e.upstream}")
    return 0


def cmd_pull(args) -> int:
    from registry.pull import pull
    try:
        pull(args.name, force=args.force)
    except ModelError as e:
        return _err(str(e))
    return 0


def cmd_import(args) -> int:
    try:
        rec = import_model(args.path, args.name)
    except ModelError as e:
        return _err(str(e))
    print(f"imported {rec.name} ({rec.format}, {rec.size / 1e6:,.0f} MB) by reference: {rec.path}\n"
          f"use it with --model {rec.name} or model = \"{rec.name}\" in the config")
    return 0


def cmd_remove(args) -> int:
    try:
        remove(args.name, with_drafter=args.with_drafter)
    except ModelError as e:
        return _err(str(e))
    print(f"removed {args.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry", description="tricode's model commands")
    sub = parser.add_subparsers(dest="command", required=True)
    add_model_commands(sub)
    args = parser.parse_args(["model", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
