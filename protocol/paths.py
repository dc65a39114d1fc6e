"""Where the daemon listens: the runtime directory and the Unix socket path (TRICODE_SOCKET)."""
from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/tricode, else a private directory under the temp dir (mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "tricode"
    import tempfile
    return Path(tempfile.gettempdir()) / f"tricode-{os.getuid()}"


def socket_path() -> Path:
    return Path(os.environ.get("TRICODE_SOCKET") or runtime_dir() / "daemon.sock")
