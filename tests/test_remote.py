"""The remote backend (`backend = "openai"`): prompt layouts (units), then end to end against a real
third-party OpenAI-compatible server on 127.0.0.1: llama-cpp-python's `llama_cpp.server` serving the
embedded model exported to GGUF (bench/gguf_export.py), in front of real daemons (`tricode complete`,
`tricode lsp`). No mocks: the server is the one users run, the daemon is the real process.

What the server returns is checked by asking it directly: the same prompt text (the `tricode` layout
of the prompt the daemon builds), greedy, the same max tokens; its text, cut by the same stop rules
(context.finish_text), must equal what tricode answers after post-processing.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from bench.gguf_export import LlamaServer as Server
import protocol
from daemon import config
from daemon import prompt as layouts
from protocol.client import DaemonClient, call
from daemon.finish import finish_text
from textkit.loops import loop_cut
from daemon.prompt import PromptBuilder, protect_special_tokens
from protocol import Complete, Generate, Status
from textkit.tokenizer import Tokenizer
from engine.embedded_model import default_model

REPO = Path(__file__).resolve().parent.parent
KEY = "tricode-test-token-0123456789"
ALIAS = "tricode-embedded"


def embedded_tokenizer() -> Tokenizer:
    path = default_model()
    if path is None:
        pytest.skip("the embedded model is not installed")
    tok = Tokenizer(path)
    protect_special_tokens(tok)
    return tok


# -- units: prompt layouts ----------------------------------------------------------------------------------

PREFIX = "import os\n\n\ndef area(width, height):\n    return "
SUFFIX = "\n\n\nprint(area(2, 3))\n"
OTHER = ("util.py", "".join(f"def helper_{i}(x):\n    return x * {i}\n" for i in range(12)))


def test_layouts_lay_out_the_same_pieces():
    tok = embedded_tokenizer()
    p = PromptBuilder(tok).build(PREFIX, SUFFIX, 1024, [OTHER], fim=True)
    assert p.context_files == ["util.py"]
    f = tok.decode(p.entry_ids[0])
    assert f == "util.py\n" + OTHER[1]             # the pieces decode back to the text
    assert tok.decode(p.prefix_ids) == PREFIX and tok.decode(p.suffix_ids) == SUFFIX
    # the local layout, as ids and as text
    assert layouts.render("tokens", p, tok) == p.ids
    text = layouts.render("tricode", p, tok, "/w/a.py")
    assert text == f"<|endoftext|><|file_sep|>{f}<|fim_suffix|>{SUFFIX}<|fim_prefix|>{PREFIX}<|fim_middle|>"
    # a server that tokenizes with the checkpoint's tokenizer.json (vLLM, SGLang) and parses special
    # tokens in the prompt text gets exactly the local prompt's ids
    parsing = Tokenizer(default_model())._tok
    parsing.encode_special_tokens = False
    assert parsing.encode(text, add_special_tokens=False).ids == p.ids
    assert layouts.render("prefix", p, tok) == PREFIX
    assert layouts.render("qwen", p, tok, "/nowhere/a.py") == (
        f"<|repo_name|>nowhere\n<|file_sep|>{f}<|file_sep|>a.py\n"
        f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>")
    assert layouts.render("starcoder", p, tok, "/w/a.py") == (
        f"<file_sep>{f}<file_sep><fim_prefix>a.py\n{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>")
    assert layouts.render("deepseek", p, tok, "/w/a.py") == (
        f"<｜fim▁begin｜>#{f}#a.py\n{PREFIX}<｜fim▁hole｜>{SUFFIX}<｜fim▁end｜>")
    bare = PromptBuilder(tok).build(PREFIX, SUFFIX, 1024, [], fim=True)
    assert layouts.render("starcoder", bare, tok) == f"<fim_prefix>{PREFIX}<fim_suffix>{SUFFIX}<fim_middle>"
    assert layouts.render("qwen", bare, tok) == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    with pytest.raises(ValueError, match="unknown prompt layout"):
        layouts.render("gpt", p, tok)


def test_prefix_only_budget_and_clipping():
    tok = embedded_tokenizer()
    long_prefix = "".join(f"value_{i} = compute({i})\n" for i in range(400)) + "result = "
    p = PromptBuilder(tok).build(long_prefix, SUFFIX, 256, [OTHER], fim=False)
    text = layouts.render("prefix", p, tok)
    assert long_prefix.endswith(text) and text.endswith("result = ") and text.startswith("value_")
    assert len(tok.encode(text)) <= 255 and not p.suffix_ids and not p.entry_ids
    assert p.ids == [tok.bos_id] + p.prefix_ids


def test_layout_markers_in_user_text_stay_text():
    tok = embedded_tokenizer()
    prefix = 'SPECIAL = "<|fim_middle|><fim_suffix>"\nx = '
    p = PromptBuilder(tok).build(prefix, "", 512, [], fim=True)
    for layout, marker in (("tricode", "<|fim_middle|>"), ("qwen", "<|fim_middle|>"), ("starcoder", "<fim_suffix>")):
        out = layouts.render(layout, p, tok)
        assert out.count(marker) == 1, (layout, out)      # the layout's own, not the user's
        assert "\u200b" in out


def test_layout_detection_from_the_model_name():
    assert layouts.detect("Qwen/Qwen2.5-Coder-7B") == "qwen"
    assert layouts.detect("bigcode/starcoder2-15b") == "starcoder"
    assert layouts.detect("deepseek-ai/deepseek-coder-6.7b-base") == "deepseek"
    assert layouts.detect("nvidia/Nemotron-Labs-Diffusion-8B") == "prefix"
    assert layouts.detect("nld-14b") == "prefix"
    assert layouts.detect("tricode-embedded") == "tricode"
    assert layouts.resolve("qwen", "nld-8b") == "qwen"


def test_remote_config_keys_are_checked():
    cfg, problems = config.parse({"backend": "openai", "remote_url": "http://gpu-box:30000/v1",
                                  "remote_model": "nld-8b", "remote_api_key_env": "TEAM_TOKEN",
                                  "remote_timeout_ms": 2000, "remote_prompt": "prefix", "remote_fallback": "local"})
    assert not problems and cfg.backend == "openai" and cfg.remote_fallback == "local"
    _, problems = config.parse({"backend": "openai", "remote_url": "http://h/v1", "remote_api_key_env": "sk-12.34"})
    assert any("NAME of an environment variable" in p for p in problems)
    cfg, problems = config.parse({"backend": "openai"})
    assert cfg.backend == "local" and "needs remote_url" in problems[0]
    cfg, problems = config.parse({"backend": "openai", "remote_url": "gpu-box:30000"})
    assert cfg.backend == "local" and len(problems) == 2
    cfg, problems = config.parse({"backend": "grpc", "remote_prompt": "chatml", "remote_timeout_ms": 5})
    assert cfg.backend == "local" and cfg.remote_prompt == "auto" and cfg.remote_timeout_ms == 5000
    assert len(problems) == 3


# -- the server -----------------------------------------------------------------------------------------------

def http(url: str, body: dict | None = None, token: str = KEY, timeout: float = 60.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama-cpp-python[server] is not installed ({e}); `make test` installs it (.[test])")
    from bench.gguf_export import export
    if default_model() is None:
        pytest.skip("the embedded model is not installed")
    return export(default_model(), tmp_path_factory.mktemp("gguf") / "embedded.gguf", "f32")


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    s = Server(gguf, tmp_path_factory.mktemp("srv") / "server.log", ALIAS, KEY)
    yield s
    s.stop()


# -- the daemon -------------------------------------------------------------------------------------------------

class D:
    def __init__(self, base: Path, server: Server):
        self.base, self.server = base, server
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(base / "run"), XDG_CONFIG_HOME=str(base / "cfg"),
                        XDG_STATE_HOME=str(base / "state"), XDG_DATA_HOME=str(base / "data"),  # no pulled model
                        TRICODE_TEST_KEY=KEY, TRICODE_BAD_KEY="wrong-token")
        for k in ("TRICODE_SOCKET", "TRICODE_MODEL"):
            self.env.pop(k, None)
        self.sock = base / "run" / "tricode" / "daemon.sock"
        self.config = base / "cfg" / "tricode" / "config.toml"
        self.proc = None

    def base_config(self, url: str | None = None, **extra) -> str:
        lines = ['backend = "openai"', f'remote_url = "{url or self.server.url}"', f'remote_model = "{ALIAS}"',
                 'remote_api_key_env = "TRICODE_TEST_KEY"', "remote_timeout_ms = 20000", 'log_level = "debug"',
                 'device = "cpu"', "cpu_threads = 1", "max_tokens = 4000", "deadline_ms = 60000"]
        # the loop guard off unless a test turns it on: the embedded model repeats LONG_PREFIX's loop,
        # and the streams that the supersede, abort, deadline and kill tests need would be cut at once
        extra = {"loop_guard": False, **extra}
        lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
        return "\n".join(lines) + "\n"

    def reconfigure(self, text: str, until, what: str, timeout: float = 120.0) -> dict:
        self.config.write_text(text)
        os.kill(self.proc.pid, signal.SIGHUP)      # reload now (the watcher would within ~2 s)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                st = self.status()
                if until(st):
                    return st
            except Exception:  # noqa: BLE001 - not answering while busy
                pass
            time.sleep(0.1)
        raise AssertionError(f"the daemon did not pick up {what}: {self.status()}")

    def status(self) -> dict:
        return call(Status(), socket_path=self.sock, timeout=10)[0]

    def cli(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tricode", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    async def client(self, name="test") -> DaemonClient:
        c = DaemonClient(self.sock, client_name=name, autostart=False)
        await c.connect()
        return c


@pytest.fixture(scope="module")
def daemon(server):
    base = Path(tempfile.mkdtemp(prefix="tcr", dir="/tmp"))
    d = D(base, server)
    d.config.parent.mkdir(parents=True)
    d.config.write_text(d.base_config())
    err = open(base / "daemon.err", "wb")
    d.proc = subprocess.Popen([sys.executable, "-m", "tricode", "daemon", "run"], env=d.env, cwd=REPO,
                              stdout=err, stderr=err)
    try:
        end = time.monotonic() + 90
        while True:
            assert d.proc.poll() is None, (base / "daemon.err").read_text()[-3000:]
            try:
                st = d.status()
                if st["state"] == "ready":
                    break
            except Exception:  # noqa: BLE001
                pass
            assert time.monotonic() < end, "the daemon did not become ready"
            time.sleep(0.1)
        yield d
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
        err.close()
        shutil.rmtree(base, ignore_errors=True)


def arun(coro, timeout: float = 120.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def direct(server: Server, prefix: str, suffix: str, extra=(), max_tokens: int = 16, max_lines: int = 0,
           budget: int = 1024) -> str:
    """What the server itself answers for the prompt the daemon builds, cut by the same stop rules."""
    tok = embedded_tokenizer()
    p = PromptBuilder(tok).build(prefix, suffix, budget, list(extra), fim=True)
    text = layouts.render("tricode", p, tok)
    r = http(server.url + "/completions", {"model": ALIAS, "prompt": text, "max_tokens": max_tokens,
                                           "temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.0})
    choice = r["choices"][0]
    return finish_text(choice["text"], "length" if choice["finish_reason"] == "length" else "eos", max_lines)


LONG_PREFIX = "for i in range(10):\n    print(i)\n"


# -- end to end ------------------------------------------------------------------------------------------------

def test_complete_cli_equals_the_server_and_status_shows_the_backend(daemon, server):
    ws = daemon.base / "ws"
    (ws / ".git").mkdir(parents=True)
    f = ws / "area.py"
    f.write_text("def area(width, height):\n    return \n\nprint(area(2, 3))\n")
    out = daemon.cli("complete", "--file", str(f), "--line", "1", "--character", "11", "--json",
                     "--max-tokens", "12", "--max-lines", "2")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["type"] == "result" and r["mode"] == "remote" and r["tokens"] > 0 and r["context_files"] == []
    prefix, suffix = "def area(width, height):\n    return ", "\n\nprint(area(2, 3))\n"
    assert r["text"] == direct(server, prefix, suffix, max_tokens=12, max_lines=2), r
    st = daemon.status()
    assert st["state"] == "ready" and st["device"] == "remote" and st["memory"].get("model_bytes") is None
    rem = st["remote"]
    assert rem["state"] == "ok" and rem["model"] == ALIAS and rem["prompt_layout"] == "tricode"
    assert rem["url"] == server.url and rem["total_ms_p50"] > 0 and rem["api_key"] == "$TRICODE_TEST_KEY set"
    out = daemon.cli("daemon", "status")
    assert f"backend      openai: {server.url}, model {ALIAS}, prompt layout tricode" in out.stdout, out.stdout
    assert "remote       ok; " in out.stdout and "latency p50" in out.stdout
    # a refactor goes to the same server; keep-alive: the requests shared connections
    r = call(Generate(doc="g", prefix=prefix, suffix=suffix, max_tokens=8), socket_path=daemon.sock, timeout=60)[0]
    assert r["type"] == "result" and r["mode"] == "remote"
    rem = daemon.status()["remote"]
    assert rem["requests"] >= 2 and rem["connections_opened"] < rem["requests"] + 1, rem


def test_supersede_and_abort_close_the_stream_and_deadline_keeps_lines(daemon, server):
    async def go():
        c = await daemon.client("sup")
        before = server.output().count("Disconnected from client")
        old_id, old = c.submit(Complete(doc="s", prefix=LONG_PREFIX, suffix="\n", max_tokens=3000, max_lines=0,
                                        deadline_ms=60000))
        await asyncio.sleep(1.0)                   # streaming by now
        t0 = time.perf_counter()
        new = await c.request(Complete(doc="s", prefix="x = 1\ny = ", suffix="\n", max_tokens=4, max_lines=1))
        superseded = await old
        new_after = time.perf_counter() - t0
        end = time.monotonic() + 10
        while server.output().count("Disconnected from client") == before and time.monotonic() < end:
            await asyncio.sleep(0.1)
        seen = server.output().count("Disconnected from client") - before
        # abort
        rid, fut = c.submit(Generate(doc="a", prefix=LONG_PREFIX, suffix="\n", max_tokens=3000, deadline_ms=60000))
        await asyncio.sleep(1.0)
        t1 = time.perf_counter()
        await c.abort(rid)
        aborted = await fut
        abort_s = time.perf_counter() - t1
        end = time.monotonic() + 10
        while server.output().count("Disconnected from client") < before + 2 and time.monotonic() < end:
            await asyncio.sleep(0.1)
        seen2 = server.output().count("Disconnected from client") - before
        # deadline: the complete lines received so far
        t2 = time.perf_counter()
        dl = await c.request(Complete(doc="d", prefix=LONG_PREFIX, suffix="\n", max_tokens=3000, max_lines=0,
                                      deadline_ms=1500))
        dl_s = time.perf_counter() - t2
        await c.close()
        return superseded, new, new_after, seen, aborted, abort_s, seen2, dl, dl_s

    superseded, new, new_after, seen, aborted, abort_s, seen2, dl, dl_s = arun(go())
    assert superseded["type"] == "error" and superseded["code"] == protocol.SUPERSEDED
    # llama_cpp.server runs one completion at a time: the new one is served only because the old
    # stream was closed and the server stopped generating it
    assert new["type"] == "result" and new["mode"] == "remote", new
    assert seen >= 1, server.output()[-2000:]           # the server saw the disconnect
    assert aborted["code"] == protocol.ABORTED and abort_s < 1.0 and seen2 >= 2
    assert dl["type"] == "result" and dl["stop_reason"] == "deadline" and dl_s < 5.0, dl
    full = direct(server, LONG_PREFIX, "\n", max_tokens=dl["tokens"] + 1)
    assert "\n" not in dl["text"][-1:] and full.startswith(dl["text"]), (dl["text"], full)
    assert dl["text"] == "" or len(dl["text"]) <= len(full)


def direct_raw(server: Server, prefix: str, suffix: str, max_tokens: int) -> str:
    """The server's own greedy text for the prompt the daemon builds (no stop rule applied)."""
    tok = embedded_tokenizer()
    text = layouts.render("tricode", PromptBuilder(tok).build(prefix, suffix, 1024, [], fim=True), tok)
    return http(server.url + "/completions", {"model": ALIAS, "prompt": text, "max_tokens": max_tokens,
                                              "temperature": 0.0, "top_p": 1.0, "repeat_penalty": 1.0})["choices"][0]["text"]


def test_loop_guard_cuts_the_stream_and_closes_it(daemon, server):
    """The served model repeats LONG_PREFIX's loop: with `loop_guard` the daemon stops reading where
    the repeat starts (as local completions do), closes the stream, and reports loop_cut."""
    base = daemon.base_config()
    req = dict(doc="loop", prefix=LONG_PREFIX, suffix="\n", max_tokens=400, max_lines=0, deadline_ms=60000)
    off = call(Complete(**req), socket_path=daemon.sock, timeout=120)[0]       # the guard off: all 400
    assert off["type"] == "result" and off["stop_reason"] == "length" and not off["loop_cut"], off
    raw = direct_raw(server, LONG_PREFIX, "\n", 400)
    assert loop_cut(raw, LONG_PREFIX) is not None, raw     # what the server streams does loop
    try:
        daemon.reconfigure(daemon.base_config(loop_guard=True),
                           lambda s: s["config"]["values"]["loop_guard"] is True, "loop_guard = true")
        cuts = daemon.status()["loop_cuts"]
        disconnects = server.output().count("Disconnected from client")
        r = call(Complete(**req), socket_path=daemon.sock, timeout=120)[0]
        assert r["type"] == "result" and r["mode"] == "remote" and r["loop_cut"] is True, r
        assert r["stop_reason"] == "stop" and r["tokens"] < 200, r      # it stopped reading at the loop
        # the text is the server's own, cut where textkit/loops.py cuts it (the first occurrence kept)
        assert r["text"] == finish_text(raw, "length", 0, (), LONG_PREFIX), (r["text"], raw[:300])
        assert daemon.status()["loop_cuts"] == cuts + 1
        end = time.monotonic() + 10                # the stream was closed: the server stopped generating
        while server.output().count("Disconnected from client") == disconnects and time.monotonic() < end:
            time.sleep(0.1)
        assert server.output().count("Disconnected from client") > disconnects, server.output()[-2000:]
        # the next request on the same server is answered (the closed connection is not reused)
        r2 = call(Complete(doc="t", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock, timeout=60)[0]
        assert r2["type"] == "result", r2
    finally:
        daemon.reconfigure(base, lambda s: s["config"]["values"]["loop_guard"] is False, "the restore")


def test_wrong_token_and_wrong_model_are_reported(daemon, server):
    base = daemon.base_config()
    try:
        daemon.reconfigure(base.replace('"TRICODE_TEST_KEY"', '"TRICODE_BAD_KEY"'),
                           lambda s: s["config"]["values"]["remote_api_key_env"] == "TRICODE_BAD_KEY", "the bad key")
        r = call(Complete(doc="t", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock, timeout=30)[0]
        assert r["type"] == "error" and r["code"] == protocol.REMOTE and "401" in r["message"], r
        assert "$TRICODE_BAD_KEY" in r["message"]
        rem = daemon.status()["remote"]
        assert rem["state"] == "error" and rem["error_kind"] == "auth" and rem["errors_by_kind"]["auth"] >= 1
        out = daemon.cli("daemon", "status")
        assert "ERROR (auth)" in out.stdout and "401" in out.stdout

        daemon.reconfigure(base.replace(f'"{ALIAS}"', '"qwen2.5-coder-7b"'),
                           lambda s: s["config"]["values"]["remote_model"] == "qwen2.5-coder-7b", "the model")
        r = call(Complete(doc="t", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock, timeout=30)[0]
        assert r["code"] == protocol.REMOTE and "does not serve the model 'qwen2.5-coder-7b'" in r["message"], r
        assert f"'{ALIAS}'" in r["message"]
        assert daemon.status()["remote"]["error_kind"] == "model"
        # a burst of keystrokes against the broken server: answered each, logged once
        for i in range(5):
            r = call(Complete(doc="t", prefix=f"x{i} = ", suffix="\n", max_tokens=4), socket_path=daemon.sock,
                     timeout=30)[0]
            assert r["code"] == protocol.REMOTE
        log = (daemon.base / "state" / "tricode" / "daemon.log").read_text()
        assert log.count("does not serve the model 'qwen2.5-coder-7b'") == 1
    finally:
        daemon.reconfigure(base, lambda s: s["config"]["values"]["remote_model"] == ALIAS
                           and s["config"]["values"]["remote_api_key_env"] == "TRICODE_TEST_KEY", "the restore")
    r = call(Complete(doc="t", prefix="x = ", suffix="\n", max_tokens=4), socket_path=daemon.sock, timeout=30)[0]
    assert r["type"] == "result"
    assert daemon.status()["remote"]["state"] == "ok"


def test_server_killed_mid_request_then_unreachable_then_fallback(daemon, server, gguf):
    other = Server(gguf, daemon.base / "killed.log", ALIAS, KEY)
    base = daemon.base_config()
    try:
        daemon.reconfigure(daemon.base_config(url=other.url),
                           lambda s: s["config"]["values"]["remote_url"] == other.url, "the second server")

        async def killed():
            c = await daemon.client("kill")
            rid, fut = c.submit(Complete(doc="k", prefix=LONG_PREFIX, suffix="\n", max_tokens=3000, max_lines=0,
                                         deadline_ms=60000))
            await asyncio.sleep(1.0)
            t0 = time.perf_counter()
            other.proc.kill()
            r = await fut
            after = time.perf_counter() - t0
            t1 = time.perf_counter()
            r2 = await c.request(Complete(doc="k2", prefix="x = ", suffix="\n", max_tokens=4))
            unreachable_s = time.perf_counter() - t1
            await c.close()
            return r, after, r2, unreachable_s

        r, after, r2, unreachable_s = arun(killed())
        assert r["type"] == "error" and r["code"] == protocol.REMOTE and after < 5.0, (r, after)
        assert "stream" in r["message"] or "closed" in r["message"], r
        assert r2["code"] == protocol.REMOTE and "cannot connect" in r2["message"] and unreachable_s < 5.0, r2
        st = daemon.status()["remote"]
        assert st["error_kind"] == "unreachable" and st["errors_by_kind"].get("stream", 0) + \
            st["errors_by_kind"].get("server", 0) >= 1, st

        # remote_fallback = "local": the local (embedded) model loads and serves while the server is down
        st = daemon.reconfigure(daemon.base_config(url=other.url, remote_fallback="local"),
                                lambda s: s["state"] == "ready" and s["device"] == "cpu", "the fallback")
        r = call(Complete(doc="f", prefix="def add(a, b):\n    return ", suffix="\n", max_tokens=6, mode="ar"),
                 socket_path=daemon.sock, timeout=60)[0]
        assert r["type"] == "result" and r["mode"] == "ar" and r["tokens"] > 0, r
        r = call(Complete(doc="f", prefix="def sub(a, b):\n    return ", suffix="\n", max_tokens=6, mode="ar"),
                 socket_path=daemon.sock, timeout=60)[0]
        assert r["type"] == "result" and r["mode"] == "ar"
        st = daemon.status()["remote"]
        assert st["fallbacks"] >= 1 and st["state"] == "error"
        out = daemon.cli("daemon", "status")
        assert "fallback local" in out.stdout
    finally:
        other.stop()
        daemon.reconfigure(base, lambda s: s["config"]["values"]["remote_url"] == server.url
                           and s["state"] == "ready" and s["device"] == "remote", "the restore")


@pytest.mark.asyncio
async def test_lsp_inline_completion_comes_from_the_server(daemon, server):
    from tests.test_lsp import OPTIONS, check_against_postprocess, editor, inline, open_doc, status, wait_ready
    ws = daemon.base / "lspws"
    (ws / ".git").mkdir(parents=True)
    shapes = ws / "shapes.py"
    shapes_text = "class Rect:\n    def __init__(self, w, h):\n        self.w = w\n        self.h = h\n\n" \
                  "    def scaled(self, k):\n        return Rect(self.w * k, self.h * k)\n"
    shapes.write_text(shapes_text)
    main = ws / "main.py"
    text = "from shapes import Rect\n\n\ndef area(r):\n    return "
    main.write_text(text)
    options = {**OPTIONS, "max_tokens": 12}
    env = dict(daemon.env, TRICODE_SOCKET=str(daemon.sock), TRICODE_LSP_LOG="warning")
    async with editor(env, options=options) as c:
        st = await wait_ready(c, timeout=60)
        assert st["mode"] == "remote" and st["daemon"]["backend"] == "openai"   # the editors' status line
        open_doc(c, shapes.as_uri(), shapes_text)
        open_doc(c, main.as_uri(), text)
        res = await inline(c, main.as_uri(), 4, 11)
        st = await status(c)
    last = st["lsp"]["completions"]["last"]
    assert last["mode"] == "remote" and last.get("source") == "daemon", last
    check_against_postprocess(text, len(text), res, last, options=options)
    plan = last["plan"]
    wire_lines = plan["max_lines"] + (1 if plan["multiline"] and last["line_prefix"].strip() else 0)
    # the daemon's text is the server's own answer to the prompt with the imported file as context
    assert last["raw"] == direct(server, text, "", [("shapes.py", shapes_text)], max_tokens=plan["max_tokens"],
                                 max_lines=wire_lines), last
