"""Where the embedded default model lives: the checkpoint that ships in engine/embedded/.

Torch-free, so that the daemon's configuration and the CLI can ask for it without loading the engine.
"""
from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent / "embedded"


def default_model() -> Path | None:
    """The embedded checkpoint directory, or None when it is not installed."""
    return EMBEDDED_MODEL if (EMBEDDED_MODEL / "config.json").is_file() else None
