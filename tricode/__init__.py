"""The `tricode` program: the entry point only (tricode/cli.py: the parser and main; tricode/commands.py:
the daemon's subcommands; `python -m tricode` runs it). It imports daemon/, lsp/ and training/;
nothing in those imports it back."""
