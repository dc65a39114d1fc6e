"""`tricode generate` through the real CLI (a subprocess, its own data and config folders): the daemon's
model rule (`--model NAME|PATH`, TRICODE_MODEL, `model` in the config, else the pulled
qwen2.5-coder-0.5b when it is there, else the embedded model), the daemon's runner choice for a GGUF
(llama.cpp's kernels on a CPU), `--threads` (default: the daemon's `cpu_threads` rule), and the errors
for a bad model or thread count. The real 0.5B decodes a few tokens per run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_daemon import REPO, make_env

PROMPT = "def add(a, b):\n    "


def run(base: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = make_env(base)
    e.pop("TRICODE_MODEL", None)
    e.pop("TRICODE_RUNNER", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "tricode", "generate", *args], env=e, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def with_pulled_models(base: Path, real_gguf: Path) -> None:
    """`base`'s data folder sees the user's pulled models (as the real daemon tests do)."""
    from registry.models import models_dir
    if real_gguf.parent.parent != models_dir():
        pytest.skip("TRICODE_TEST_GGUF names a file outside the registry: the default is not testable")
    (base / "data" / "tricode").mkdir(parents=True, exist_ok=True)
    (base / "data" / "tricode" / "models").symlink_to(models_dir())


def config(base: Path, text: str) -> None:
    path = base / "cfg" / "tricode" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.slow
def test_default_is_the_pulled_model_on_llamacpp_with_the_daemons_threads(tmp_path, real_gguf):
    with_pulled_models(tmp_path, real_gguf)
    out = run(tmp_path, "--prompt", PROMPT, "--max-new-tokens", "6", "--mode", "ar", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert Path(r["model"]).resolve() == real_gguf.resolve()
    assert r["runner"] == "llama.cpp" and r["dtype"] == "gguf"
    assert r["prompt_format"] == "fim-prefix"
    # the daemon's rule for llama.cpp: the cores other processes of normal priority leave idle
    assert 1 <= r["threads"] <= (os.cpu_count() or 1), r["threads"]
    # the daemon's prompt with whitespace healing: the indentation is not written twice
    assert r["text"].startswith("return a + b"), r

    # --threads reaches the runner; the plain output is the prompt and its continuation
    out = run(tmp_path, "--prompt", PROMPT, "--max-new-tokens", "6", "--mode", "ar", "--threads", "2")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(PROMPT + "return a + b"), out.stdout


@pytest.mark.slow
def test_config_threads_and_model_name(tmp_path, real_gguf):
    """`cpu_threads` and `model = "NAME"` in the config are what the daemon would use."""
    with_pulled_models(tmp_path, real_gguf)
    config(tmp_path, 'model = "qwen2.5-coder-0.5b"\ncpu_threads = 2\n')
    out = run(tmp_path, "--prompt", PROMPT, "--max-new-tokens", "2", "--mode", "ar", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["threads"] == 2 and r["runner"] == "llama.cpp"
    assert Path(r["model"]).resolve() == real_gguf.resolve()


def test_without_a_pulled_model_the_embedded_one(tmp_path):
    from engine.embedded_model import default_model
    emb = default_model()
    if emb is None:
        pytest.skip("the embedded model is not installed")
    out = run(tmp_path, "--prompt", PROMPT, "--max-new-tokens", "3", "--mode", "ar", "--json", "--threads", "1")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert Path(r["model"]).resolve() == Path(emb).resolve()
    assert r["runner"] == "torch" and r["threads"] == 1 and r["prompt_format"] == "tricode"
    assert len(r["token_ids"]) <= 3


@pytest.mark.parametrize("args, says", [
    (["--model", "no-such-model"], "not a path and not a known model name"),
    (["--model", "/nowhere/model.gguf"], "no such file or directory"),
    (["--threads", "0"], "not a thread count"),
    (["--threads", "two"], "not a thread count"),
    (["--runner", "gpu"], "invalid choice"),
])
def test_bad_arguments_are_clear_errors(tmp_path, args, says):
    out = run(tmp_path, "--prompt", "x = ", *args, timeout=120)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_model_from_the_environment_or_config(tmp_path):
    out = run(tmp_path, "--prompt", "x = ", env={"TRICODE_MODEL": "no-such-model"}, timeout=120)
    assert out.returncode == 2 and "'no-such-model': not a path and not a known model name" in out.stderr
    config(tmp_path, 'model = "qwen2.5-coder-7b"\n')
    out = run(tmp_path, "--prompt", "x = ", timeout=120)
    assert out.returncode == 2 and "qwen2.5-coder-7b" in out.stderr and "tricode model" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_mode_the_gguf_cannot_serve(tmp_path, real_gguf):
    out = run(tmp_path, "--model", str(real_gguf), "--prompt", "x = ", "--mode", "diffusion",
              "--max-new-tokens", "2")
    assert out.returncode == 2 and "no drafter" in out.stderr and "Traceback" not in out.stderr
