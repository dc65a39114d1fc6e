"""config.toml written while the daemon runs (daemon/config_watch.py): a real `tricode daemon run` on
two tiny checkpoints, its config file written the way editors and scripts write it (truncated, then in
pieces with pauses). Watched all along through `status`: no half-written file is applied (no model
reload, no `loading` state, no syntax error reported), a real change is applied, an unchanged rewrite
is not, and a file that stays invalid is reported while the settings in effect are kept."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_guard import stop_daemon_at
from tests.test_daemon import BASE_CONFIG, REPO, D, wait_ready
from tests.tiny_checkpoint import write_tiny_checkpoint

pytestmark = [pytest.mark.slow]


class Watcher(threading.Thread):
    """Samples the daemon's status every few tens of ms: (state, model, deadline_ms, problems)."""

    def __init__(self, d: D):
        super().__init__(daemon=True)
        self.d, self.samples, self.halt = d, [], threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                st = self.d.status()
                self.samples.append((st["state"], st["model"], st["deadline_ms"], tuple(st["config"]["problems"])))
            except Exception as e:  # noqa: BLE001 - a lost answer is a finding too
                self.samples.append(("no answer", repr(e), 0, ()))
            time.sleep(0.03)


def write_in_pieces(path: Path, text: str, pauses: dict[int, float], piece: int = 12, gap: float = 0.05):
    """Truncate `path`, then write `text` `piece` characters at a time with `gap` s between pieces, and
    `pauses[offset]` s once the file holds text[:offset] (0: right after the truncation)."""
    ends = sorted(set(range(piece, len(text), piece)) | set(pauses) | {len(text)})
    with open(path, "w") as f:
        f.flush()
        time.sleep(pauses.get(0, gap))
        start = 0
        for end in ends:
            if end <= start:
                continue
            f.write(text[start:end])
            f.flush()
            time.sleep(pauses.get(end, gap))
            start = end


def log_lines(d: D, what: str) -> list[str]:
    return [ln for ln in (d.base / "state" / "tricode" / "daemon.log").read_text().splitlines() if what in ln]


def until(d: D, pred, what: str, timeout: float = 30.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = d.status()
        if pred(st):
            return st
        time.sleep(0.1)
    raise AssertionError(f"the daemon did not pick up {what}: {st['state']} {st['model']} {st['config']}")


def test_config_written_in_pieces_is_applied_once_settled(tmp_path):
    base = Path(tempfile.mkdtemp(prefix="tcw", dir="/tmp"))      # short: a socket path has a 107-byte limit
    d = D(base, write_tiny_checkpoint(base / "ck1"))
    ck2 = write_tiny_checkpoint(base / "ck2", seed=1)
    d.config.parent.mkdir(parents=True)
    first = f'model = "{d.ckpt}"\n' + BASE_CONFIG               # the model comes from the config
    d.config.write_text(first)
    err = open(base / "daemon.err", "wb")
    d.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run"], env=d.env, cwd=REPO,
                              stdout=err, stderr=err)
    try:
        st = wait_ready(d.sock, proc=d.proc)
        assert st["model"] == str(d.ckpt)
        deadline0 = st["deadline_ms"]

        # 1. the same file plus one new key, written in pieces; it stays half-written for 0.6 s three
        # times: empty (truncated), mid-string in the model's path (not valid TOML), and cut inside the
        # new number ("deadline_ms = 7"); each alone would be applied: the empty file as the defaults
        # (the embedded model: a reload), the last as a deadline of 7 ms
        second = first + "deadline_ms = 777\n"
        in_path = second.index(str(d.ckpt)) + 10
        in_number = second.index("777") + 1
        watcher = Watcher(d)
        watcher.start()
        try:
            write_in_pieces(d.config, second, {0: 0.6, in_path: 0.6, in_number: 0.6})
            st = until(d, lambda s: s["deadline_ms"] == 777, "deadline_ms = 777")
            time.sleep(0.5)
        finally:
            watcher.halt.set()
            watcher.join(5)
        states = {s[0] for s in watcher.samples}
        assert states == {"ready"}, states                      # never `loading`, never without an answer
        assert {s[1] for s in watcher.samples} == {str(d.ckpt)}
        assert {s[2] for s in watcher.samples} <= {deadline0, 777}
        assert not any(s[3] for s in watcher.samples), [s[3] for s in watcher.samples if s[3]]
        assert len(watcher.samples) > 20                        # it was watched all along (> 2.5 s)
        assert not log_lines(d, "reloading the model")
        assert [ln.split(": ", 1)[1] for ln in log_lines(d, "config reloaded")] == ["config reloaded: deadline_ms changed"]
        assert st["state"] == "ready" and st["model"] == str(d.ckpt)

        # 2. rewritten unchanged (a new mtime, same settings): nothing is applied
        d.config.write_text(second)
        time.sleep(3.0)
        assert len(log_lines(d, "config reloaded")) == 1

        # 3. a real model change still reloads the model
        d.config.write_text(second.replace(str(d.ckpt), str(ck2)))
        st = until(d, lambda s: s["model"] == str(ck2) and s["state"] == "ready", "the new model")
        assert len(log_lines(d, "reloading the model")) == 1

        # 4. a file that stays invalid: reported once it has settled, the settings in effect are kept
        d.config.write_text('model = "' + str(ck2) + "\n")
        st = until(d, lambda s: s["config"]["problems"], "the syntax error", timeout=15)
        assert "not valid TOML" in st["config"]["problems"][0] and "keeping the settings" in st["config"]["problems"][0]
        assert st["model"] == str(ck2) and st["deadline_ms"] == 777 and st["state"] == "ready"
        assert len(log_lines(d, "reloading the model")) == 1
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        stop_daemon_at(d.sock)
        err.close()
        import shutil
        shutil.rmtree(base, ignore_errors=True)
