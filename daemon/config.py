"""The daemon's settings: one TOML file, `$XDG_CONFIG_HOME/tricode/config.toml` (flat keys, all
optional; tables such as `[lsp]` belong to other parts of tricode and are ignored here).

    model = "~/models/nld-8b"     # checkpoint directory, GGUF file or model name (tricode model list);
                                  # "" = the pulled qwen2.5-coder-0.5b when it is there, else the embedded model
    device = "auto"               # auto | cpu | cuda | cuda:1 ...
    inline_mode = "spec"          # ar | diffusion | spec
    deadline_ms = 1000
    backend = "openai"            # send the model calls to an OpenAI-compatible server (remote.py)
    remote_url = "http://gpu-box:30000/v1"

Where the model comes from, first match wins: `--model` on `tricode daemon start|run`, the
TRICODE_MODEL environment variable, `model` in this file, then the default: the pulled
`qwen2.5-coder-0.5b` (DEFAULT_MODEL, `tricode model pull`) when it is on this machine, else the
embedded model. A name goes through registry.models.resolve (an unknown name is a clear error). The daemon watches the
file and applies a change between requests once the file has settled (daemon/config_watch.py; a new
model, device or dtype reloads the model).
A key with a bad value is reported (log and `status`) and its default used instead.
"""
from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from daemon.prompt.fim import FORMATS as FIM_FORMATS
from registry.models import find, resolve, resolve_lenient

MODES = ("ar", "diffusion", "spec")
RUNNERS = ("auto", "llama", "torch")
DEFAULT_MODEL = "qwen2.5-coder-0.5b"    # the default when it is pulled (issue 21); else the embedded model
LOG_LEVELS = ("debug", "info", "warning", "error")


def config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "tricode"


def config_path() -> Path:
    return config_home() / "config.toml"


def state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tricode"


def log_path() -> Path:
    return state_home() / "daemon.log"


@dataclass(frozen=True)
class Config:
    # the model
    model: str = ""                    # "" = TRICODE_MODEL, else DEFAULT_MODEL when pulled, else embedded
    device: str = "auto"
    dtype: str = "auto"
    runner: str = "auto"               # auto: a GGUF model on a CPU runs on llama.cpp's kernels (engine/
                                       # llama_runner.py), else torch | llama | torch (env TRICODE_RUNNER wins)
    cpu_threads: int = 0               # CPU threads; 0 = llama.cpp: the idle cores, torch: 1 on <= 2 cores, else its default
    # decoding, per request kind (a request may override the mode)
    inline_mode: str = "spec"
    refactor_mode: str = "ar"
    spec_variant: str = "auto"         # auto (quadratic on a GPU, linear on a CPU) | linear | quadratic
    lookup: bool = True                # spec also drafts from the context (prompt lookup)
    loop_guard: bool = True            # inline completions end where they start repeating themselves (textkit/loops.py)
    block_size: int = 0                # 0 = the engine's default for the device
    threshold: float = 0.0             # diffusion commit threshold; 0 = the engine's default
    # budgets
    context_tokens: int = 1024         # prompt budget of an inline completion
    prompt_layout: str = "window"      # window: stable part first, the cursor's window last; contiguous
    inline_format: str = "auto"        # a pretrained model's inline prompt format (daemon/prompt/fim.py
                                       # FORMATS); auto = the measured best (fim.BEST_FORMAT)
    refactor_context_tokens: int = 2048
    deadline_ms: int = 1000            # default time budget of an inline completion
    prefill_budget_ms: int = 300       # an inline request prefills at most what the measured prefill rate runs
                                       # in this long; a longer uncached prompt is cut to the cursor's window
                                       # (daemon/prompt_sizing.py); 0 = no limit
    refactor_deadline_ms: int = 60000
    max_tokens: int = 256              # cap on an inline completion's max_tokens
    refactor_max_tokens: int = 1024
    # workspace context
    extra_context: bool = True         # other files (open documents, recent edits, imports) in the prompt
    max_file_kb: int = 512             # files larger than this are never read for context
    repo_context: bool = True          # index the workspace's project roots; snippets in the prompt
    repo_context_tokens: float = 0.3   # the snippets' share of a prompt's budget (0 = none; at most 0.6)
    repo_context_pretrained: bool = False  # snippets in a pretrained model's fim-prefix inline prompt too
                                           # (daemon/prompt/fim.py REPO_SNIPPET_*); off: no gain measured on
                                           # the 0.5B (docs/repo_context.md, phase 3)
    cache_slots: int = 4               # KV caches kept for prefix reuse (one per recent document)
    batch_size: int = 4                # decodes run together (batched forwards); 1 = one at a time
    prefetch_tokens_per_s: int = 2048  # prefill work a second for prefetches (lowest priority); 0 = no prefetch
    # next-edit suggestions (daemon/next_edit_run.py): "model" = the pattern and the model's rewrite, each
    # answered only when the model scores it above the unchanged region by next_edit_margin nats;
    # "pattern" = the history's pattern alone, unverified (no model call)
    next_edit_gate: str = "model"
    next_edit_margin: float = -4.0     # measured: docs/next_edit.md
    # process
    idle_exit_minutes: float = 0.0     # exit after this long without connections or requests; 0 = never
    log_level: str = "info"
    tcp_port: int = 0                  # 0 = no TCP listener; else 127.0.0.1:port, with a token
    # where the model runs (remote.py): this process, or an OpenAI-compatible server (SGLang, vLLM, llama.cpp)
    backend: str = "local"             # local | openai
    remote_url: str = ""               # the server's API base, e.g. http://gpu-box:30000/v1
    remote_model: str = ""             # the served model's name; "" = the first one the server lists
    remote_api_key_env: str = ""       # NAME of an environment variable holding the bearer token
    remote_timeout_ms: int = 5000      # connect, first byte and any silence mid-stream
    remote_prompt: str = "auto"        # prompt layout: auto | tokens | tricode | prefix | qwen | starcoder | deepseek
    remote_max_inflight: int = 2       # requests in flight to the server per editor connection
    remote_fallback: str = ""          # "" | local: use the local model while the server is down

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)

    def engine_key(self) -> tuple:
        """Settings whose change needs a model reload."""
        return (self.model, self.device, self.dtype, self.runner)


_CHOICES = {"inline_mode": MODES, "refactor_mode": MODES, "spec_variant": ("auto", "linear", "quadratic"),
            "log_level": LOG_LEVELS, "prompt_layout": ("window", "contiguous"),
            "inline_format": ("auto",) + FIM_FORMATS, "runner": RUNNERS, "backend": ("local", "openai"),
            "remote_fallback": ("", "local"), "next_edit_gate": ("model", "pattern"),
            "remote_prompt": ("auto", "tokens", "tricode", "prefix", "qwen", "starcoder", "deepseek")}
_MINIMUM = {"cpu_threads": 0, "block_size": 0, "context_tokens": 64, "refactor_context_tokens": 64, "deadline_ms": 0,
            "prefill_budget_ms": 0, "refactor_deadline_ms": 0, "max_tokens": 1, "refactor_max_tokens": 1, "max_file_kb": 1,
            "cache_slots": 1, "batch_size": 1, "prefetch_tokens_per_s": 0, "idle_exit_minutes": 0, "tcp_port": 0,
            "remote_timeout_ms": 100, "remote_max_inflight": 1}


def _check(name: str, want: str, value):
    if want == "str":
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{name} = {value!r}: choose one of {', '.join(_CHOICES[name])}")
        return value
    if want == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if want == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
    elif want == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number")
        value = float(value)
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise ValueError(f"{name} = {value}: must be >= {_MINIMUM[name]}")
    if name == "threshold" and not 0.0 <= value <= 1.0:
        raise ValueError("threshold must be within [0, 1]")
    if name == "repo_context_tokens" and not 0.0 <= value <= 0.6:
        raise ValueError(f"repo_context_tokens = {value}: a share of context_tokens within [0, 0.6] "
                         "(the prefix and suffix need the rest)")
    if name == "tcp_port" and value > 65535:
        raise ValueError("tcp_port must be <= 65535")
    return value


def _check_remote(kw: dict, problems: list[str]) -> None:
    """Keys that only make sense together: an openai backend needs a usable URL; the key's env var
    is a name, never the token itself."""
    url = kw.get("remote_url", "")
    if url:
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"remote_url = {url!r}: expected http://host:port/v1 or https://... (using none)")
            kw.pop("remote_url")
    env = kw.get("remote_api_key_env", "")
    if env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
        problems.append("remote_api_key_env must be the NAME of an environment variable holding the token "
                        "(e.g. TRICODE_API_KEY), never the token itself (ignored)")
        kw.pop("remote_api_key_env")
    if kw.get("backend") == "openai" and not kw.get("remote_url"):
        problems.append('backend = "openai" needs remote_url (e.g. "http://gpu-box:30000/v1"); '
                        'using the local backend')
        kw["backend"] = "local"


def parse(data: dict) -> tuple[Config, list[str]]:
    """A TOML mapping -> (Config, problems). Bad keys keep their defaults and are listed."""
    problems: list[str] = []
    kw = {}
    types = {f.name: f.type for f in fields(Config)}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # a table for another component ([lsp] ...)
        if key not in types:
            problems.append(f"unknown key {key!r} (ignored)")
            continue
        try:
            kw[key] = _check(key, types[key], value)
        except ValueError as e:
            problems.append(f"{e} (using the default {getattr(Config, key)!r})")
    _check_remote(kw, problems)
    return Config(**kw), problems


def load(path: Path | None = None) -> tuple[Config, list[str]]:
    """Read the config file (missing file: defaults, no problem)."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config(), []
    except OSError as e:
        return Config(), [f"{path}: cannot be read ({e})"]
    cfg, problems = parse_bytes(raw, path)
    if cfg is None:
        return Config(), [problems[0] + "; using the defaults"]
    return cfg, problems


def parse_bytes(raw: bytes, path: Path) -> tuple[Config | None, list[str]]:
    """The file's bytes -> (Config, problems), or (None, [the syntax error]) when they are not valid
    TOML (a half-written file is one: daemon/config_watch.py decides what to make of that)."""
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        return None, [f"{path}: not valid TOML ({e})"]
    cfg, problems = parse(data)
    return cfg, [f"{path}: {p}" for p in problems]


def default_model_path() -> Path | None:
    """The model served when none is named: the pulled DEFAULT_MODEL when it is on this machine (and
    whole), else the embedded checkpoint (None when that is not installed either)."""
    pulled = find(DEFAULT_MODEL)
    if pulled is not None:
        return pulled
    from engine.embedded_model import default_model
    return default_model()


def resolve_model(cfg: Config, override: str | Path | None = None, strict: bool = False) -> Path | None:
    """The model to serve: --model, then TRICODE_MODEL, then the config, then default_model_path().
    A name goes through registry.models.resolve; with `strict` an unknown name or missing path raises
    ModelError (its message says what to do), else it comes back as the path it spells."""
    for candidate in (override, os.environ.get("TRICODE_MODEL"), cfg.model):
        if candidate:
            return resolve(candidate) if strict else resolve_lenient(candidate)
    return default_model_path()

