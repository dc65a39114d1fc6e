"""Next-edit suggestions in a real VS Code (code-server in headless Chromium), end to end with the real
`tricode lsp` (set-up, build and private environment as tests/test_vscode.py, whose fixtures this
reuses).

tests/vscode/drive_next_edit.cjs types `print name` -> `print(name)` with real keys; the decorations of
the same edit must appear on the next line; the second edit is typed over them; the preview of the
third line must show " items" struck through and "(items)" as an `after` decoration, with the hint at
the cursor line (screenshot: build/vscode-test/artifacts/vscode_next_edit.png, copied to
docs/vscode_next_edit.png when that is missing or with TRICODE_UPDATE_SCREENSHOT=1); Tab moves the
cursor there, Tab applies it; the fourth line's preview comes without a keystroke (prefetch); Escape
removes it; the saved file holds exactly the two typed edits and the applied one. Then an edit that
only inserts (`log.warn(` -> `log.warning(`): the next line's preview is an `after` decoration; Tab
takes the cursor there, where it is ghost text (the inline suggestion API); Tab inserts it; the
prefetched preview of the line after is dismissed with Escape.

The server's own ghost text is off for Python here (`tricode.disabled_languages`), so that Tab is the
next edit's: the next-edit request does not depend on that setting today.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon_guard import stop_daemon_at
from tests.test_vscode import (ARTIFACTS, REPO, free_port, private_env, run, settings, stop_group,
                               tools, tricode_exe, vsix, wait_http)  # noqa: F401 (tools, vsix: fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

DRIVER = REPO / "tests" / "vscode" / "drive_next_edit.cjs"
SCREENSHOT = REPO / "docs" / "vscode_next_edit.png"
SAMPLE = '''\
def report(name, total, items, count):
    print name
    print total
    print items
    print count
    return total
'''
SAMPLE2 = """\
import logging
log = logging.getLogger()
log.warn('a')
log.warn('b')
log.warn('c')
"""


def test_next_edit_in_code_server(tools, vsix, tmp_path):
    tricode = tricode_exe()
    assert tricode.exists(), f"no tricode executable at {tricode} (run `make install`)"
    node, entry = tools["node"], tools["code_server"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("vscode_next_edit*.png"):
        old.unlink()

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "report.py").write_text(SAMPLE, encoding="utf-8")
    (workspace / "logs.py").write_text(SAMPLE2, encoding="utf-8")
    data_dir, ext_dir = tmp_path / "cs-data", tmp_path / "cs-extensions"
    env, short = private_env(tmp_path / "xdg")
    common = ["--user-data-dir", data_dir, "--extensions-dir", ext_dir]
    p = run([node, entry, *common, "--install-extension", vsix], env=env, timeout=300)
    assert p.returncode == 0, f"--install-extension failed:\n{p.stdout}\n{p.stderr}"
    user = {**settings(tricode),
            # no ghost text from the server (Tab is the next edit's here; the additive next edit still
            # goes through the inline suggestion API) and no auto-closed brackets (typed as is)
            "tricode.disabled_languages": ["python"],
            "editor.autoClosingBrackets": "never",
            "tricode.nextEdit.debounceMs": 150}
    (data_dir / "User").mkdir(parents=True, exist_ok=True)
    (data_dir / "User" / "settings.json").write_text(json.dumps(user, indent=2), encoding="utf-8")

    port = free_port()
    cs_log = open(ARTIFACTS / "code-server-next-edit.log", "w")
    server = None
    t0 = time.monotonic()
    try:
        server = subprocess.Popen(
            [str(node), str(entry), *map(str, common), "--bind-addr", f"127.0.0.1:{port}", "--auth", "none",
             "--disable-telemetry", "--disable-update-check", "--disable-workspace-trust",
             "--disable-getting-started-override", "--ignore-last-opened", str(workspace)],
            env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=cs_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_http(f"http://127.0.0.1:{port}/healthz", server, 120)
        config = {"url": f"http://127.0.0.1:{port}", "folder": str(workspace), "file": "report.py", "file2": "logs.py",
                  "out_dir": str(ARTIFACTS), "playwright_core": tools["playwright_core"],
                  "chromium": tools["chromium"], "ready_timeout_s": 420, "edit_timeout_s": 60}
        cfg_file = tmp_path / "drive_next_edit.json"
        cfg_file.write_text(json.dumps(config), encoding="utf-8")
        with open(ARTIFACTS / "drive-next-edit.log", "w") as drive_log:
            driver = subprocess.run([str(node), str(DRIVER), str(cfg_file)], env=env, timeout=900, text=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=drive_log)
        lines = driver.stdout.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {"ok": False, "error": "the driver printed nothing"}
        (ARTIFACTS / "result-next-edit.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        assert result.get("ok"), f"driver failed: {result.get('error')}\nsee {ARTIFACTS}"

        shot = ARTIFACTS / "vscode_next_edit.png"
        assert shot.is_file() and shot.stat().st_size > 10_000
        if not SCREENSHOT.exists() or os.environ.get("TRICODE_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(shot, SCREENSHOT)

        steps = result["steps"]
        # the preview of the third line: on "    print items", with the hint on the cursor's line
        second = steps["second"]
        assert any(a["text"] == "(items)" and a["line"].startswith("    print items") for a in second["after"]), second
        assert any(s["text"] == " items" for s in second["struck"]), second
        assert any("next edit: line 4" in a["text"] for a in second["after"]), second
        assert steps["gone_total"], "the preview of the second line outlived the keystroke that typed over it"
        # Tab moved the cursor to the edit (line 4, column 10) without changing anything; Tab applied it
        assert steps["cursor_jump"] == [4, 10], steps["cursor_jump"]
        assert any(a["text"] == "(items)" for a in steps["after_jump"]["after"]), steps["after_jump"]
        # the prefetched place, then Escape: nothing drawn, nothing changed
        assert not any(a["text"] == "(count)" for a in steps["after_escape"]["after"]), steps["after_escape"]
        assert not steps["after_escape"]["struck"], steps["after_escape"]
        assert result["saved"] == SAMPLE.replace("print name", "print(name)").replace(
            "print total", "print(total)").replace("print items", "print(items)"), result["saved"]
        # the insertion: a decoration away from the cursor, ghost text at it (Tab took the cursor to
        # line 4, column 9), Tab inserted it, the line after it was proposed and dismissed
        assert any(a["text"] == "ing" and a["line"].startswith("log.warn('b')") for a in steps["insertion"]["after"])
        assert steps["insertion_ghost"] == "ing", steps["insertion_ghost"]
        assert steps["insertion_cursor"] == [4, 9], steps["insertion_cursor"]
        assert not any(a["text"] == "ing" for a in steps["insertion_decorations"]["after"]), \
            "the insertion is drawn twice (decoration and ghost text)"
        assert not any(a["text"] == "ing" for a in steps["insertion_after_escape"]["after"]), steps["insertion_after_escape"]
        assert result["saved2"] == SAMPLE2.replace("log.warn('a')", "log.warning('a')").replace(
            "log.warn('b')", "log.warning('b')"), result["saved2"]
        print("VS Code next edit:", json.dumps({"timings": result.get("timings"),
                                                "wall_s": round(time.monotonic() - t0, 1)}))
    finally:
        stop_group(server)
        cs_log.close()
        run([tricode, "daemon", "stop"], env=env, timeout=60)
        stop_daemon_at(env["TRICODE_SOCKET"])      # one a surviving `tricode lsp` restarted meanwhile
        for log in data_dir.glob("logs/**/*tricode*.log"):
            shutil.copyfile(log, ARTIFACTS / f"exthost-next-edit-{log.name}")
        shutil.rmtree(short, ignore_errors=True)
