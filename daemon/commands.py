"""CLI subcommands that talk to the daemon: daemon start|stop|status|restart|run, complete, demo."""


def add_commands(sub) -> None:
    pass
