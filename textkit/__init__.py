"""Torch-free text tools that both `lsp/` and `daemon/` (and `training/`, `bench/`) use: the
tokenizer wrapper (textkit/tokenizer.py), the loop detector (textkit/loops.py) and the gitignore
matcher (textkit/gitignore.py). Imports neither torch nor the daemon."""
