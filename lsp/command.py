"""The `tricode lsp` subcommand (imports no torch; the server is imported when the command runs)."""
from __future__ import annotations

import argparse


def add_commands(sub) -> None:
    p = sub.add_parser("lsp", help="run the language server (editors start this; it talks LSP on stdio)",
                       description="The tricode language server: inline completion and refactor commands "
                                   "over LSP. It starts the daemon when none is running.")
    p.add_argument("--stdio", action="store_true", default=True, help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--model", help="checkpoint directory for a daemon this server starts (sets TRICODE_MODEL)")
    p.add_argument("--socket", help="the daemon's socket (default: $TRICODE_SOCKET or $XDG_RUNTIME_DIR/tricode/daemon.sock)")
    p.add_argument("--log-file", help="also write the server's log to this file")
    p.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"),
                   help="log level on stderr/--log-file (default: warning, or $TRICODE_LSP_LOG)")
    p.set_defaults(func=cmd_lsp)


def cmd_lsp(args: argparse.Namespace) -> int:
    import logging
    import os

    level = (args.log_level or os.environ.get("TRICODE_LSP_LOG") or "warning").upper()
    root = logging.getLogger()
    root.setLevel(getattr(logging, level, logging.WARNING))
    for h in root.handlers:
        h.setLevel(root.level)
    if args.log_file:
        fh = logging.FileHandler(args.log_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    # pygls logs every message at INFO; keep it quiet unless debugging
    logging.getLogger("pygls").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    if args.model:
        os.environ["TRICODE_MODEL"] = os.path.abspath(os.path.expanduser(args.model))
    if args.socket:
        os.environ["TRICODE_SOCKET"] = os.path.abspath(os.path.expanduser(args.socket))

    from lsp.server import serve_stdio
    serve_stdio(args.socket and os.environ["TRICODE_SOCKET"])
    return 0
