"""The `tricode lsp` subcommand (imports no torch)."""


def add_commands(sub) -> None:
    pass
