"""The daemon on the real code model: `python -m tricode daemon run` serving the pulled
qwen2.5-coder-0.5b (Qwen2.5-Coder 0.5B Instruct, GGUF; `make test` pulls it, the `real_gguf` fixture
finds it), real sockets, no mocks. The daemon is started WITHOUT --model, with a data folder that
holds the pulled model: so the default (`model = ""` means the pulled model) is what is tested.

Slow (the model loads once for the module; each request decodes a few dozen tokens on the CPU)."""
from __future__ import annotations

import asyncio
import tempfile
import time
import json
from pathlib import Path

import pytest

from protocol import Complete, Generate, Status
from protocol.client import call
from tests.test_daemon import REPO, D, arun, helper_two_files_away, running

pytestmark = pytest.mark.slow

EXPECTED = "return sum(item.total() for item in items)"      # the line, prefix-only FIM


@pytest.fixture(scope="module")
def real(real_gguf):
    from registry.models import models_dir
    base = Path(tempfile.mkdtemp(prefix="tcq", dir="/tmp"))
    d = D(base, real_gguf)
    args = []
    models = models_dir()
    if real_gguf.parent.parent == models:
        # the user's pulled models, seen through this daemon's own data folder: the default applies
        (base / "data" / "tricode").mkdir(parents=True)
        (base / "data" / "tricode" / "models").symlink_to(models)
    else:                       # TRICODE_TEST_GGUF names a file outside the registry
        args = ["--model", str(real_gguf)]
    d.config.parent.mkdir(parents=True)
    d.config.write_text('device = "cpu"\nlog_level = "debug"\ndeadline_ms = 120000\n'
                        'refactor_deadline_ms = 300000\n')
    with running(d, *args, timeout=600):
        yield d


def demo_request(**kw) -> Complete:
    from tricode.demo_sample import __file__ as sample
    text = Path(sample).read_text()
    cut = text.index("    # demo: complete here\n")
    prefix, suffix = text[:cut] + "    ", "\n" + text[cut + len("    # demo: complete here\n"):]
    args = dict(doc=Path(sample).as_uri(), prefix=prefix, suffix=suffix, path=sample, max_tokens=48,
                max_lines=1, deadline_ms=120000)
    args.update(kw)
    return Complete(**args)


def test_default_model_status_shows_what_it_can_do(real, real_gguf):
    st = real.status()
    assert Path(st["model"]).resolve() == real_gguf.resolve(), st["model"]   # through the default
    caps = st["capabilities"]
    assert caps["family"] == "qwen2" and caps["format"] == "gguf" and caps["drafter"] is False
    assert caps["modes"] == ["ar", "spec"]
    # a GGUF on a CPU runs on llama.cpp's kernels unless TRICODE_RUNNER says otherwise
    import os
    want = {"torch": "torch"}.get(os.environ.get("TRICODE_RUNNER", ""), "llama.cpp")
    assert st["runner"] == want and not st["runner_failures"], (st["runner"], st["runner_failures"])
    if want == "llama.cpp":     # no cpu_threads in the config: llama.cpp runs on the idle cores
        assert st["threads"]["rule"] == "idle cores", st["threads"]
        assert 1 <= st["threads"]["llama_threads"] <= (os.cpu_count() or 1), st["threads"]
    out = real.cli("daemon", "status")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("checkpoint"))
    assert "qwen2" in line and "gguf" in line and "no drafter" in line and "modes ar, spec" in line, line
    if want == "llama.cpp":
        assert any(ln.startswith("threads      llama.cpp ") and "idle cores" in ln for ln in out.stdout.splitlines()), out.stdout
    js = json.loads(real.cli("daemon", "status", "--json").stdout)
    assert js["capabilities"]["modes"] == ["ar", "spec"] and js["capabilities"]["drafter"] is False


def test_demo_completion_is_the_expected_line(real):
    r = call(demo_request(), socket_path=real.sock, timeout=300)[0]
    assert r["type"] == "result", r
    assert r["text"].strip() == EXPECTED, r
    assert r["mode"] == "spec"          # the configured inline mode: drafts from the context only
    # greedy spec is lossless: ar writes the same line
    a = call(demo_request(mode="ar"), socket_path=real.sock, timeout=300)[0]
    assert a["type"] == "result" and a["text"] == r["text"], (a, r)


def test_tricode_demo_output_shape(real):
    """`tricode demo` on the real model (the daemon already running): the completion block is exactly
    the cursor's line completed, with no blank lines after it (the daemon's max_lines counts the
    blank lines before the next function; they are not shown)."""
    out = real.cli("demo", timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    head, rest = out.stdout.split("--- completion ---\n", 1)
    block, tail = rest.split("------------------\n", 1)
    first = next(ln for ln in tail.splitlines() if ln.startswith("first request"))
    # the whole line: the demo's deadline leaves a cold prefill on a shared CPU time to finish
    assert block == "    " + EXPECTED + "\n", (block, first)
    assert "stop deadline" not in first, first
    assert "daemon already running" in head and "\n    # demo: complete here" not in head
    assert tail.startswith("first request") and "one keystroke later" in tail


def test_diffusion_gets_a_clear_error_and_the_daemon_goes_on(real):
    r = call(demo_request(mode="diffusion"), socket_path=real.sock, timeout=120)[0]
    assert r["type"] == "error" and r["code"] == "bad_request", r
    assert "diffusion" in r["message"] and "no drafter" in r["message"] and "ar, spec" in r["message"], r
    ok = call(demo_request(mode="ar", max_tokens=3), socket_path=real.sock, timeout=300)[0]
    assert ok["type"] == "result" and ok["tokens"] >= 1, ok


def test_refactor_goes_through_the_chat_template(real):
    from lsp import refactor
    text = (REPO / "tricode" / "demo_sample.py").read_text()
    start = text.index("def most_valuable")
    text = text.replace('    """The item with the highest total value, or None for an empty list."""\n', "")
    edit = refactor.build("docstring", text, "python", start, start, max_tokens=64)
    msg = Generate(doc="file:///tmp/inventory.py", prefix=edit.prefix, suffix=edit.suffix, path="/tmp/inventory.py",
                   max_tokens=64, stop=edit.stop, mode="ar", deadline_ms=300000)
    r = call(msg, socket_path=real.sock, timeout=400)[0]
    assert r["type"] == "result", r
    assert "```" not in r["text"] and "<|im_end|>" not in r["text"], r
    doc = edit.finish(r["text"])
    assert doc is not None and doc.strip().startswith('"""') and len(doc.strip()) > 8, (r["text"], doc)


def long_module(n: int = 60) -> str:
    """A Python module of ~40 tokens a function: far longer than a cold request may prefill."""
    return "".join(f"def handler_{i}(request, value={i}):\n    result = request.process(value) + {i}\n"
                   f"    return result\n\n" for i in range(n))


def test_a_cold_place_gets_the_window_then_the_full_prompt_then_typing_reuses_it(real):
    """Issue 22 part 4 on the real model: a completion at a new place of a long file prefills only the
    cursor's window (the full prompt is neither cached nor prefillable within prefill_budget_ms at the
    measured rate); the daemon then prefetches the full prompt (on the editor's connection), which the
    next request at that place uses; typing on reuses it, prefilling only the typed tokens."""
    text = long_module()
    cut = text.index("def handler_40")
    prefix, suffix = text[:cut] + "def main(argv):\n    args = ", "\n" + text[cut:]
    req = dict(doc="file:///tmp/cold_place.py", suffix=suffix, path="/tmp/cold_place.py", max_tokens=6,
               max_lines=1, deadline_ms=120000)

    async def go():
        c = await real.client("cold")
        before = await c.request(Status())
        cold = await c.request(Complete(prefix=prefix, **req))
        end = time.monotonic() + 240
        while time.monotonic() < end:       # the full prompt's prefetch, queued by the daemon itself
            st = await c.request(Status())
            if st["prefetch"]["run"] > before["prefetch"]["run"] and not st["running"] and not st["queue_length"]:
                break
            await asyncio.sleep(0.2)
        warm = await c.request(Complete(prefix=prefix + "p", **req))
        typed = await c.request(Complete(prefix=prefix + "pars", **req))
        after = await c.request(Status())
        await c.close()
        return before, cold, warm, typed, after

    before, cold, warm, typed, after = arun(go(), timeout=600)
    assert before["prompt_sizing"]["prefill_rate"]["tokens_per_s"], before["prompt_sizing"]   # the warm-up's
    assert cold["type"] == "result" and cold["prompt_form"] == "window", cold
    # at most the window (MIN_WINDOW tokens and its slack), far less than the full prompt
    assert cold["prefill_tokens"] <= cold["prompt_tokens"] <= 400, cold
    assert after["prefetch"]["run"] > before["prefetch"]["run"], after["prefetch"]
    assert warm["type"] == "result" and warm["prompt_form"] == "full", warm
    assert warm["prompt_tokens"] > 700 and warm["prefill_tokens"] <= 8, warm
    assert typed["type"] == "result" and typed["prompt_form"] == "full", typed
    assert typed["prefill_tokens"] <= 8 and typed["reused_tokens"] >= typed["prompt_tokens"] - 8, typed
    assert after["prompt_sizing"]["forms"]["window"] >= 1


def test_repo_context_with_the_real_model(real):
    """Repository context on (the default) with the real model's pretrained inline format: a helper
    defined two files away goes into the prompt as its definition's header (the policy of
    daemon/prompt/fim.py: definitions and signatures only), and `tricode complete --json` lists it
    (path and line range)."""
    import time
    root = real.base / "repo"
    main = helper_two_files_away(root)
    base_config = real.config.read_text()
    real.config.write_text(base_config + "repo_context_pretrained = true\n")   # whatever the default is
    end = time.monotonic() + 30
    while not real.status()["config"]["values"].get("repo_context_pretrained"):
        assert time.monotonic() < end, real.status()["config"]
        time.sleep(0.1)
    end = time.monotonic() + 120
    while True:
        out = real.cli("complete", "--file", str(main), "--line", "7", "--character", "4", "--json",
                       "--max-tokens", "8", timeout=300)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r["type"] == "result", r
        if r["repo_context"] or time.monotonic() > end:
            break
        time.sleep(0.5)          # the index is built in the background after the first request
    got = [{k: s[k] for k in ("path", "start", "end")} for s in r["repo_context"]]
    assert {"path": "pkg/geometry.py", "start": 4, "end": 4} in got, r["repo_context"]
    assert all(s["why"].startswith(("definition of", "signature of")) for s in r["repo_context"]), r["repo_context"]
    # switched off: the same request's prompt has no snippets
    real.config.write_text(base_config + "repo_context_pretrained = false\n")
    end = time.monotonic() + 30
    while real.status()["config"]["values"].get("repo_context_pretrained"):
        assert time.monotonic() < end, real.status()["config"]
        time.sleep(0.1)
    out = real.cli("complete", "--file", str(main), "--line", "7", "--character", "4", "--json", "--max-tokens", "8",
                   timeout=300)
    r = json.loads(out.stdout)
    assert r["type"] == "result" and r["repo_context"] == [], r
    real.config.write_text(base_config)
