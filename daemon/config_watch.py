"""When a changed config.toml is read and handed to the daemon: the debounce between the file's
watcher (and the poll behind it) and Daemon.apply_config.

Writers do not write a file at once: an editor truncates it and writes it in pieces, a script may
pause between lines. A file read in the middle of that is empty, ends in the middle of a line, or is
not valid TOML; applied, it would switch the settings it lacks back to their defaults (a model reload,
the `loading` state) and then back again. So:
- every change restarts a quiet period: the file is read once its stamp (mtime, size, inode) has not
  changed for SETTLE_S;
- a file that looks unfinished (missing, empty, without its final newline, or not valid TOML) waits
  for UNFINISHED_S of quiet before it is applied or its syntax error reported; an invalid file then
  keeps the settings in effect (the daemon does not fall back to the defaults mid-session);
- the daemon applies a config only when it differs from the one in effect (server.Daemon.apply_config).

What this does not know: a writer that stops for longer than UNFINISHED_S in the middle of a line gets
its partial file applied (and then the whole one). It knows nothing of what the settings mean.
"""
from __future__ import annotations

import time
from typing import Callable

from daemon import config as config_mod
from daemon.config import Config

SETTLE_S = 0.2          # unchanged this long: the writer is done with it
UNFINISHED_S = 2.0      # ... unless the file looks unfinished: then this long


def config_stamp():
    """What changes when config.toml is written (None: no file)."""
    try:
        st = config_mod.config_path().stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return None


def read_config() -> tuple[Config | None, list[str], bool]:
    """(config or None when it is not valid TOML, problems, whether the file looks unfinished)."""
    path = config_mod.config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config(), [], True
    except OSError as e:
        return None, [f"{path}: cannot be read ({e})"], True
    cfg, problems = config_mod.parse_bytes(raw, path)
    return cfg, problems, cfg is None or not raw.strip() or not raw.endswith(b"\n")


class ConfigWatch:
    """Called with poke() on every sign of a change (watchdog event, poll, SIGHUP with force=True), on
    the daemon's event loop; calls `apply(cfg_or_None, problems)` once the file has settled."""

    def __init__(self, apply: Callable[[Config | None, list[str]], None], loop=None,
                 settle_s: float = SETTLE_S, unfinished_s: float = UNFINISHED_S):
        """Made before the daemon reads the file (a write in between is then seen as a change); the
        event loop may be set later, before the first poke."""
        self.loop, self.apply = loop, apply
        self.settle_s, self.unfinished_s = settle_s, unfinished_s
        self.applied = config_stamp()           # the file the daemon's settings came from
        self.seen, self.since = self.applied, time.monotonic()
        self.force = False
        self.timer = None
        self.deferred = 0                       # reads put off because the file looked unfinished

    def poke(self, force: bool = False) -> None:
        stamp = config_stamp()
        if stamp != self.seen:
            self.seen, self.since = stamp, time.monotonic()
        elif stamp == self.applied and not force and not self.force:
            return
        self.force = self.force or force
        if self.timer is None:
            self.timer = self.loop.call_later(self.settle_s, self._check)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _again(self, delay: float) -> None:
        self.timer = self.loop.call_later(max(delay, 0.01), self._check)

    def _check(self) -> None:
        self.timer = None
        stamp, now = config_stamp(), time.monotonic()
        if stamp != self.seen:                  # written again meanwhile: the quiet period restarts
            self.seen, self.since = stamp, now
            return self._again(self.settle_s)
        quiet = now - self.since
        if quiet < self.settle_s:
            return self._again(self.settle_s - quiet)
        if stamp == self.applied and not self.force:
            return
        cfg, problems, unfinished = read_config()
        if config_stamp() != stamp:             # written while we read it
            self.seen, self.since = config_stamp(), time.monotonic()
            return self._again(self.settle_s)
        if unfinished and quiet < self.unfinished_s:
            self.deferred += 1
            return self._again(self.unfinished_s - quiet)
        self.applied, self.force = stamp, False
        self.apply(cfg, problems)
