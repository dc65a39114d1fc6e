"""Settings of `tricode lsp`: the same keys as the daemon's TOML config (see lsp/SETTINGS.md).

They arrive through `initializationOptions` and `workspace/didChangeConfiguration`, either flat
(`{"max_lines": 4}`) or under a "tricode" section (`{"tricode": {"max_lines": 4}}`, what VS Code and
`vim.lsp.config(..., {settings = {tricode = ...}})` send). Unknown keys and values of the wrong type
are ignored with a warning, never fatal.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MODES = ("", "ar", "diffusion", "spec")


@dataclass(frozen=True)
class Settings:
    enabled: bool = True                    # inline completion on/off (refactors stay available)
    inline_mode: str = ""                   # decoder for inline completion: ar | diffusion | spec; "" = the daemon's (spec)
    refactor_mode: str = ""                 # decoder for refactor commands; "" = the daemon's (ar)
    disabled_languages: tuple[str, ...] = ()  # LSP language ids with no inline completion, e.g. ["markdown"]
    max_lines: int = 8                      # lines of a multi-line suggestion (1 = single-line only)
    max_tokens: int = 64                    # tokens of an inline suggestion
    refactor_max_tokens: int = 512          # tokens of a refactor result
    deadline_ms: int = 0                    # inline time budget in the daemon (0 = the daemon's default)
    debounce_ms: int = 30                   # wait this long for a newer keystroke before asking the model
    max_file_bytes: int = 1_000_000         # no completion in larger files
    respect_gitignore: bool = True          # no completion in files the workspace's .gitignore ignores
    completion_fallback: str = "auto"       # textDocument/completion too: auto (clients without inline) | always | never
    next_edit_prefetch: bool = True         # after answering a next edit, ask for the one after it (lsp/next_edit.py)

    def merged(self, values: dict | None) -> "Settings":
        """A copy with the known keys of `values` applied (after unwrapping a "tricode" section)."""
        values = unwrap(values)
        if not values:
            return self
        changes = {}
        known = {f.name: f for f in dataclasses.fields(self)}
        for key, value in values.items():
            f = known.get(key)
            if f is None:
                log.warning("unknown setting %r ignored (known: %s)", key, ", ".join(known))
                continue
            ok, converted = _convert(key, value, getattr(self, key))
            if not ok:
                log.warning("setting %s=%r ignored: expected %s", key, value, type(getattr(self, key)).__name__)
                continue
            changes[key] = converted
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["disabled_languages"] = list(self.disabled_languages)
        return d


def unwrap(values) -> dict:
    if not isinstance(values, dict):
        return {}
    inner = values.get("tricode")
    if isinstance(inner, dict):
        return inner
    return values


def _convert(key: str, value, current):
    if isinstance(current, bool):
        return (True, value) if isinstance(value, bool) else (False, None)
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
            return False, None
        if key in ("max_lines", "max_tokens", "refactor_max_tokens", "max_file_bytes") and value < 1:
            return False, None
        return True, int(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            return False, None
        if key.endswith("_mode") and value not in MODES:
            return False, None
        if key == "completion_fallback" and value not in ("auto", "always", "never"):
            return False, None
        return True, value
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return True, tuple(value)
        return False, None
    return False, None


DEFAULTS = Settings()
