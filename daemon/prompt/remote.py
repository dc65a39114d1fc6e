"""The layouts of a model served by another machine (`backend = "openai"`): part of daemon.prompt, the
one home of every prompt format; the layouts are described in daemon/prompt/__init__.py's docstring
(`render` turns a Prompt built by PromptBuilder into what the served model was trained on). Knows
nothing of HTTP (daemon/remote.py sends what it renders); no torch.
"""
from __future__ import annotations

from pathlib import PurePath

REMOTE_LAYOUTS = ("auto", "tokens", "tricode", "prefix", "qwen", "starcoder", "deepseek")
FIM_LAYOUTS = frozenset({"tricode", "qwen", "starcoder", "deepseek"})

_MARKERS = {
    "qwen": ("<|repo_name|>", "<|file_sep|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
             "<|fim_pad|>", "<|endoftext|>"),
    "starcoder": ("<repo_name>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>",
                  "<|endoftext|>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>",
                 "<｜begin▁of▁sentence｜>"),
}
_ZWSP = "\u200b"


def detect(model_name: str) -> str:
    """The layout for a served model's name (a path or a Hugging Face id)."""
    name = model_name.lower()
    if "tricode" in name:         # tricode's own model (the embedded one as GGUF)
        return "tricode"
    if "qwen" in name and "coder" in name:
        return "qwen"
    if "starcoder" in name:
        return "starcoder"
    if "deepseek" in name and "coder" in name:
        return "deepseek"
    return "prefix"


def resolve(layout: str, model_name: str) -> str:
    return detect(model_name) if layout == "auto" else layout


def needs_suffix(layout: str) -> bool:
    """Does the layout use the suffix and the other files (FIM budgeting)?"""
    return layout in FIM_LAYOUTS or layout == "tokens"


def _specials(tok) -> dict[str, str]:
    """The local tokenizer's special tokens as strings (role -> text), for the `tricode` layout."""
    inner = tok._tok
    out = {"bos": inner.id_to_token(tok.bos_id) or ""}
    for role, i in tok.fim.items():
        if i is not None:
            out[role] = inner.id_to_token(i)
    return out


def _escape(text: str, layout: str, markers=()) -> str:
    for m in tuple(_MARKERS.get(layout, ())) + tuple(markers):
        if m and m in text:
            text = text.replace(m, m[0] + _ZWSP + m[1:])
    return text


def render(layout: str, prompt, tok, path: str = "") -> str | list[int]:
    """The prompt to send: token ids for `tokens`, else text. `prompt` is a Prompt built by
    PromptBuilder with `tok` (FIM budgeting for a FIM layout), `path` the file being completed."""
    if layout == "tokens":
        return list(prompt.ids)
    sp = _specials(tok) if layout == "tricode" else {}
    esc = (lambda ids: _escape(tok.decode(ids), layout, sp.values()))
    prefix = esc(prompt.prefix_ids)
    if layout == "prefix":
        return prefix
    if layout not in FIM_LAYOUTS:
        raise ValueError(f"unknown prompt layout {layout!r}: choose one of {', '.join(REMOTE_LAYOUTS)}")
    suffix = esc(prompt.suffix_ids)
    files = [esc(e) for e in prompt.entry_ids]          # "label\ncontent\n" each
    if layout == "tricode":
        if not all(k in sp for k in ("prefix", "suffix", "middle")):
            raise ValueError("the tricode layout needs a local tokenizer with FIM tokens")
        sep = sp.get("file_sep", "")
        head = "".join(sep + f for f in files) if sep else ""
        return f"{sp['bos']}{head}{sp['suffix']}{suffix}{sp['prefix']}{prefix}{sp['middle']}"
    name = PurePath(path).name if path else ""
    if layout == "qwen":
        head = "".join(f"<|file_sep|>{f}" for f in files)
        if files:
            head = f"<|repo_name|>{_repo_name(path)}\n" + head + (f"<|file_sep|>{name}\n" if name else "")
        return f"{head}<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
    if layout == "starcoder":
        head = "".join(f"<file_sep>{f}" for f in files)
        if files:
            return f"{head}<file_sep><fim_prefix>{name}\n{prefix}<fim_suffix>{suffix}<fim_middle>"
        return f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
    # deepseek: repository files as "#path\ncontent" ahead of the current file's prefix
    head = "".join(f"#{f}" for f in files) + (f"#{name}\n" if files and name else "")
    return f"<｜fim▁begin｜>{head}{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>"


def _repo_name(path: str) -> str:
    if not path:
        return "workspace"
    from daemon.workspace import find_root
    from pathlib import Path
    try:
        return find_root(Path(path).expanduser()).name or "workspace"
    except OSError:
        return "workspace"
