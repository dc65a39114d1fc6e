"""CLI subcommands for the embedded model: train, eval."""


def add_commands(sub) -> None:
    pass
