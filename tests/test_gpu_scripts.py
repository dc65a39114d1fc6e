"""The two GPU-lease scripts (scripts/gpu_session.sh, scripts/gpu_session2.sh) and scripts/gpu_check.py,
end to end on the CPU with --cpu-smoke (toy shapes, TRITON_INTERPRET=1, the CPU stand-in for CUDA
graphs): they finish inside their budgets, and a part that fails (a Python error, or a process that
dies as on a device-side assert) is a FAIL row while every other part still writes its rows.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("triton")


def _run(script: str, out: Path, *args: str, fail: str | None = None, timeout: int = 300):
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(out.parent))
    env.pop("TRITON_INTERPRET", None)
    env.pop("GPU_CHECK_FAIL", None)
    if fail:
        env["GPU_CHECK_FAIL"] = fail
    t0 = time.time()
    r = subprocess.run(["bash", str(ROOT / "scripts" / script), "--cpu-smoke", "--out", str(out), *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def _rows(report: str, section: str) -> list[list[str]]:
    """The table rows of the report section whose title starts with `section`."""
    block = report.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in block.splitlines()
            if ln.startswith("|") and not ln.startswith("|---")][1:]


def test_first_script_smoke_with_a_crashing_part(tmp_path):
    """The first script in smoke mode, with the w4a16 part's process killed as a device assert would:
    its row is a FAIL naming the exit; the tests, attention_cached and CUDA-graph parts still report
    and pass (the runner, with the CPU stand-in, captured every step shape and each replay matched
    eager before it was timed); the report and the logs come back, all within the 240 s budget."""
    out = tmp_path / "out"
    r, wall = _run("gpu_session.sh", out, fail="w4_matmul:crash")
    log = r.stdout + r.stderr
    assert r.returncode == 1, log[-4000:]                  # a FAIL row: the script says so
    assert wall < 240, wall
    report = (out / "gpu_check_first.md").read_text()
    tests = _rows(report, "1. Correctness")
    assert len(tests) == 1 and tests[0][1] == "PASS", tests
    cached = _rows(report, "2a. attention_cached")
    assert cached and all(re.fullmatch(r"[\d.]+", row[1]) for row in cached), cached   # timings: checks passed
    steps = _rows(report, "3. CUDA-graph runner")
    replays = [row for row in steps if "eager / cuda-graphs" in row[0]]
    assert len(replays) == 4 and all("replay vs eager rel err" in row[2] for row in replays), steps
    assert not any(row[1] == "FAIL" for row in steps), steps
    w4 = _rows(report, "4a. w4a16 matmul")
    assert len(w4) == 1 and w4[0][:2] == ["w4_matmul", "FAIL"] and "exited with 134" in w4[0][2], w4
    assert "Failures: 1." in report and "Still to run" not in report
    with tarfile.open(out / "session.tar.gz") as tar:
        names = tar.getnames()
    assert "session/gpu_check_first.md" in names and "session/session.log" in names, names


def test_second_script_smoke_with_a_failing_part(tmp_path):
    """The second script in smoke mode with one part raising: that part is a FAIL row, the other
    parts write theirs, training is skipped for want of data (not an error), within its budget."""
    out = tmp_path / "out"
    r, wall = _run("gpu_session2.sh", out, "--data", str(tmp_path / "no_pack"), "--carry-in", str(tmp_path / "none"),
                   fail="small:raise")
    log = r.stdout + r.stderr
    assert wall < 420, wall
    report = (out / "gpu_check_second.md").read_text()
    small = _rows(report, "2b. Verify / unmask")
    assert small[0][:2] == ["small", "FAIL"] and "injected failure" in small[0][2], small
    for section in ("2. Attention kernel", "2a. attention_cached", "3b. Eager forwards", "4a. w4a16 matmul",
                    "4b. Whole model with w4a16"):
        rows = _rows(report, section)
        assert rows and not any(row[1] == "FAIL" for row in rows), (section, rows)
    assert "Failures: 1." in report
    assert "training skipped" in log, log[-3000:]


def test_second_script_trains_a_pulled_models_drafter(tmp_path):
    """Part (b2) in smoke mode on a tiny Qwen2 directory: the drafter and its resume state come back
    in one tar within the budget; the next lease continues from it (--drafter-in); without the model
    the part is skipped with a note, not an error."""
    from tests.tiny_pretrained import write_tiny_ar_with_tokenizer
    model = write_tiny_ar_with_tokenizer(tmp_path / "tiny-qwen")
    out = tmp_path / "out"
    common = ("--data", str(tmp_path / "no_pack"), "--carry-in", str(tmp_path / "none"), "--check-s", "0",
              "--total-s", "240", "--drafter-s", "120")
    r, wall = _run("gpu_session2.sh", out, *common, "--drafter-model", str(model))
    log = r.stdout + r.stderr
    assert wall < 240 and "(b2) drafter rc=0" in log, log[-4000:]
    with tarfile.open(out / "drafter.tar.gz") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "back")
    assert "drafter/state/train_state.pt" in names and "drafter/drafter/drafter.json" in names, names
    assert "drafter/drafter/linear_spec_lora/adapter_model.safetensors" in names, names
    import json
    info = json.loads((tmp_path / "back" / "drafter" / "drafter" / "drafter.json").read_text())
    assert info["steps"] == 6 and info["mask_token"] == "<|fim_pad|>"
    assert "training skipped" in log
    r, _ = _run("gpu_session2.sh", tmp_path / "out2", *common, "--drafter-model", str(model),
                "--drafter-in", str(tmp_path / "back" / "drafter"))
    with tarfile.open(tmp_path / "out2" / "session.tar.gz") as tar:
        tar.extractall(tmp_path / "logs2")
    assert "resuming at step 6/6" in (tmp_path / "logs2" / "session" / "drafter.log").read_text()
    r, _ = _run("gpu_session2.sh", tmp_path / "out3", *common, "--drafter-model", "no-such-model")
    assert "(b2) drafter skipped" in r.stdout + r.stderr and not (tmp_path / "out3" / "drafter.tar.gz").exists()
