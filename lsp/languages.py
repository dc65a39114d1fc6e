"""What the server knows about languages: how blocks open and close, how comments look."""
from __future__ import annotations

import re
from typing import Iterator

INDENT_BLOCKS = {"python", "cython", "starlark", "nim", "coffeescript", "yaml"}
BRACE_BLOCKS = {
    "c", "cpp", "objective-c", "objective-cpp", "cuda", "cuda-cpp", "csharp", "java", "kotlin", "scala",
    "go", "rust", "swift", "dart", "javascript", "javascriptreact", "typescript", "typescriptreact",
    "php", "zig", "groovy", "css", "scss", "less", "json", "jsonc", "glsl", "hlsl", "solidity", "proto",
}
END_BLOCKS = {"ruby", "lua", "elixir", "julia", "shellscript", "sh", "bash", "zsh", "fish", "matlab", "vb"}

_LINE_COMMENT = {
    "python": "#", "ruby": "#", "shellscript": "#", "sh": "#", "bash": "#", "zsh": "#", "fish": "#",
    "perl": "#", "r": "#", "yaml": "#", "toml": "#", "elixir": "#", "julia": "#", "nim": "#",
    "cython": "#", "starlark": "#", "dockerfile": "#", "makefile": "#", "cmake": "#", "powershell": "#",
    "lua": "--", "sql": "--", "haskell": "--", "elm": "--", "ada": "--",
    "matlab": "%", "erlang": "%", "latex": "%", "tex": "%",
    "lisp": ";;", "clojure": ";;", "scheme": ";;", "elisp": ";;",
    "vim": '"', "vb": "'",
}

_END_OPENER = re.compile(r"(\b(do|then|else|begin)|\bfunction\b.*\)|^\s*(def|class|module|if|unless|while|until|for|case)\b.*)$")
_BRACE_CLOSERS = "}])"
QUOTES = "\"'`"


def family(language: str) -> str:
    """'indent' (Python-like), 'brace' (C-like), 'end' (Ruby/Lua-like) or 'other'."""
    lang = (language or "").lower()
    if lang in INDENT_BLOCKS:
        return "indent"
    if lang in BRACE_BLOCKS:
        return "brace"
    if lang in END_BLOCKS:
        return "end"
    return "other"


def line_comment(language: str) -> str:
    return _LINE_COMMENT.get((language or "").lower(), "//")


def scan_code(text: str, start: int = 0, quote: str | None = None) -> Iterator[tuple[int, str | None]]:
    """Walk text[start:] past string literals (roughly: any of QUOTES opens a string, the same
    character closes it, a backslash in a string escapes the next character; `quote` is the string
    the text starts in). Yields (i, open) for each character not inside a string: code, and the quotes
    that open or close a string; `open` is the string open after text[i] (an opening quote's own
    character, None after a closing quote or code)."""
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
                yield i, None
        else:
            if c in QUOTES:
                quote = c
            yield i, quote
        i += 1


def strip_comment(line: str, language: str) -> str:
    """The line without a trailing line comment (quotes are respected, roughly)."""
    marker = line_comment(language)
    if marker not in line:
        return line
    for i, _ in scan_code(line):
        if line[i] not in QUOTES and line.startswith(marker, i):
            return line[:i]
    return line


def is_block_opener(line: str, language: str) -> bool:
    """Does this line open a block whose body goes on the next lines?"""
    code = strip_comment(line, language).rstrip()
    if not code:
        return False
    fam = family(language)
    if fam == "indent":
        return code.endswith(":")
    if fam == "brace":
        return code.endswith("{")
    if fam == "end":
        return bool(_END_OPENER.search(code)) or code.endswith("{")
    return code.endswith(("{", ":"))


def is_closer_line(line: str) -> bool:
    """A line that only closes blocks/brackets (`}`, `});`, `end` ...)."""
    s = line.strip()
    if s in ("end", "end;", "fi", "done", "esac"):
        return True
    return bool(s) and s[0] in _BRACE_CLOSERS and all(c in "}])>;,. \t" for c in s)
