"""The remote backend: model calls sent to an OpenAI-compatible server (SGLang, vLLM, llama.cpp).

With `backend = "openai"` the daemon keeps everything else (workspace context, prompt budgeting,
supersede/abort, deadlines, stop rules, post-processing, replies, status) and sends the model call
to `remote_url`: POST {remote_url}/completions with stream: true, greedy unless the request asks for a
temperature, the request's stop strings and max tokens. The prompt is built by prompt.PromptBuilder
with the local tokenizer and laid out for the served model (daemon/prompt/ `render`).

HTTP: a small HTTP/1.1 client on asyncio streams (stdlib only): connections are kept alive and
reused per host; a response is read as chunked, Content-Length or close-delimited, and its SSE
`data:` lines are parsed as they arrive. A superseded or aborted request (the job's cancel signal),
a deadline, a stop rule or the loop guard (`loop_guard`, as for local completions) met on the client
side closes that connection at once, so the server sees the disconnect and stops generating; a
deadline answers with the complete lines received so far.

Failures, each answered at once with an error (code REMOTE) the user can read, counted in status and
logged when the backend's health changes (not once per keystroke): unreachable, auth (401/403), model
(404 or a name the server does not list), server (5xx), stream (malformed or truncated), slow (nothing
within remote_timeout_ms). Connection failures before the first response byte are retried with
backoff (a request that got no byte is idempotent); nothing else is. With `remote_fallback = "local"`
the job goes to the local worker instead while the server is down (DOWN_FOR seconds after a failure).

At most remote_max_inflight requests per editor connection are in flight; the others wait their turn
(supersede answers the waiting ones, so a typing user never queues more than that).

This module knows no model and no torch: token ids come from the local tokenizer only for the
`tokens` layout.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import protocol
from daemon import prompt as layouts
from daemon.finish import loop_context, result_frame, text_cut
from daemon.http_client import Pool, RemoteError, Response
from daemon.prompt import PromptBuilder
from daemon.repo_context import prompt_repo, reported

log = logging.getLogger("tricode.daemon")

RETRIES = 2                # extra attempts after a connection failure before the first byte
BACKOFF_S = 0.05           # doubled per attempt
DOWN_FOR = 10.0            # seconds the fallback serves locally after a failure before trying again
MODELS_TTL = 30.0          # seconds a /models listing is trusted
DOWN_KINDS = ("unreachable", "server", "slow", "stream")   # failures the local fallback covers


# -- the backend ------------------------------------------------------------------------------------------

class CancelSignal(threading.Event):
    """A job's cancel flag that also cancels the asyncio task running it (the flag is set on the loop
    thread by supersede, abort, a closed connection or shutdown)."""

    def __init__(self):
        super().__init__()
        self.task: asyncio.Task | None = None

    def set(self) -> None:
        super().set()
        task = self.task
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)


@dataclass
class _Health:
    state: str = "unknown"        # unknown | ok | error
    kind: str = ""
    message: str = ""
    since: float = 0.0            # time.time() of the last change
    failed_at: float = 0.0        # time.monotonic() of the last failure


def _error_message(body: bytes) -> str:
    try:
        obj = json.loads(body)
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(err)[:300]
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace").strip()[:300]


class RemoteBackend:
    """Runs jobs against the configured server; lives on the daemon's event loop.

    The same interface as the local worker (daemon/worker.py): `submit(job)`, and each job's one
    result or error frame comes back through `deliver(job, frame)`. What it needs is passed in: the
    workspace (extra context), `config()` (the current config), the counters, and the local worker,
    which budgets prompts with its tokenizer and takes the jobs back while the server is down
    (`remote_fallback = "local"`)."""

    def __init__(self, workspace, config, stats, deliver, local):
        self.workspace, self.config, self.stats, self.deliver, self.local = workspace, config, stats, deliver, local
        self.pool = Pool()
        self.health = _Health()
        self.errors: dict[str, int] = {}
        self.requests = 0
        self.fallbacks = 0
        self.first_byte_ms: deque = deque(maxlen=200)
        self.total_ms: deque = deque(maxlen=200)
        self.inflight: dict[int, asyncio.Semaphore] = {}
        self.models: tuple[str, float, list[str]] | None = None   # (url, when, ids)
        self.model = ""               # the served model's name in use
        self.layout = ""
        self._builder: PromptBuilder | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tricode-remote-prompt")
        self._url = ""

    # -- routing ------------------------------------------------------------------------------------

    def wants(self, cfg) -> bool:
        """Should a new job go to the server (False: to the local worker)?"""
        if cfg.backend != "openai":
            return False
        if (cfg.remote_fallback == "local" and self.health.state == "error" and self.health.kind in DOWN_KINDS
                and self.local.has_model):
            if time.monotonic() - self.health.failed_at <= DOWN_FOR:
                self.fallbacks += 1
                return False
        return True

    def submit(self, job) -> None:
        """Start `job` (already registered with the scheduler, its cancel a CancelSignal)."""
        task = asyncio.get_running_loop().create_task(self._run(job))
        job.cancel.task = task
        if job.cancel.is_set():
            task.cancel()

    def drop_connection(self, conn_id: int) -> None:
        self.inflight.pop(conn_id, None)

    def config_changed(self, old, new) -> None:
        if (old.remote_url, old.remote_model, old.remote_api_key_env, old.remote_prompt) != \
                (new.remote_url, new.remote_model, new.remote_api_key_env, new.remote_prompt):
            self.pool.clear()
            self.models = None
            self.health = _Health()
            self.model = self.layout = ""
        if old.remote_max_inflight != new.remote_max_inflight:
            self.inflight.clear()

    def close(self) -> None:
        self.pool.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one job ------------------------------------------------------------------------------------

    async def _run(self, job) -> None:
        sem = self.inflight.get(job.conn.id)
        if sem is None:
            sem = self.inflight[job.conn.id] = asyncio.Semaphore(self.config().remote_max_inflight)
        try:
            async with sem:
                if job.replied or job.cancel.is_set():
                    return
                await self._serve(job)
        except asyncio.CancelledError:
            pass                 # superseded, aborted, connection closed or shutdown: already answered
        except Exception as e:  # noqa: BLE001 - a bug must not leave the request unanswered
            log.exception("remote request %s failed", job.id)
            self.deliver(job, protocol.error(job.id, protocol.INTERNAL, f"{type(e).__name__}: {e}"))

    async def _serve(self, job) -> None:
        cfg = self.config()
        self.requests += 1
        try:
            model, layout = await self._model(cfg)
            body = await self._body(job, cfg, model, layout)
            text, reason, first_ms, total_ms, chunks = await self._complete(job, cfg, body)
        except RemoteError as e:
            self._failed(e, cfg)
            if cfg.remote_fallback == "local" and e.kind in DOWN_KINDS \
                    and self.local.has_model and not job.replied:
                self.fallbacks += 1
                job.prompt = None       # the worker builds its own prompt for the local model
                self.local.submit(job)
                return
            self.deliver(job, protocol.error(job.id, protocol.REMOTE, e.message))
            return
        self._ok()
        self._finish(job, text, reason, first_ms, total_ms, chunks, cfg.loop_guard)

    async def _model(self, cfg) -> tuple[str, str]:
        """The served model's name (checked against the server's list) and the prompt layout."""
        base = cfg.remote_url.rstrip("/")
        now = time.monotonic()
        if self.models is None or self.models[0] != base or now - self.models[1] > MODELS_TTL:
            resp = await self.pool.request("GET", base + "/models", self._headers(cfg), None,
                                           cfg.remote_timeout_ms / 1e3)
            try:
                data = await asyncio.wait_for(resp.body(), cfg.remote_timeout_ms / 1e3)
            except asyncio.TimeoutError:
                resp.close()
                raise RemoteError("slow", f"{base}/models did not finish within {cfg.remote_timeout_ms} ms") from None
            resp.release()
            self._check_status(resp, data, base + "/models", cfg)
            try:
                ids = [m["id"] for m in json.loads(data)["data"]]
            except (ValueError, KeyError, TypeError):
                raise RemoteError("stream", f"{base}/models is not an OpenAI model list: {data[:80]!r}") from None
            self.models = (base, now, ids)
        ids = self.models[2]
        model = cfg.remote_model or (ids[0] if ids else "")
        if not model:
            raise RemoteError("model", f"{base} serves no model (its /models list is empty)")
        if cfg.remote_model and ids and cfg.remote_model not in ids:
            self.models = None          # ask again next time: the server may be restarting with it
            raise RemoteError("model", f"{base} does not serve the model {cfg.remote_model!r}; it serves "
                                       f"{', '.join(map(repr, ids[:5]))}: set remote_model to one of them")
        self.model = model
        self.layout = layouts.resolve(cfg.remote_prompt, model)
        return model, self.layout

    def _headers(self, cfg) -> dict:
        h = {"Accept": "application/json, text/event-stream"}
        if cfg.remote_api_key_env:
            token = os.environ.get(cfg.remote_api_key_env, "")
            if not token:
                raise RemoteError("auth", f"remote_api_key_env names {cfg.remote_api_key_env}, which is not set "
                                          "in the daemon's environment (set it and restart the daemon)")
            h["Authorization"] = f"Bearer {token}"
        return h

    def _check_status(self, resp: Response, data: bytes, url: str, cfg) -> None:
        s = resp.status
        if s == 200:
            return
        detail = _error_message(data)
        if s in (401, 403):
            how = (f"check the token in ${cfg.remote_api_key_env}" if cfg.remote_api_key_env
                   else "set remote_api_key_env to the name of an environment variable holding the token")
            raise RemoteError("auth", f"{url} refused the request ({s} {resp.reason}: {detail}); {how}")
        if s == 404:
            raise RemoteError("model", f"{url}: 404 {detail or resp.reason} (wrong remote_url path, or "
                                       f"remote_model {cfg.remote_model!r} is not served)")
        if s >= 500:
            raise RemoteError("server", f"{url}: server error {s} {resp.reason}: {detail}")
        raise RemoteError("server", f"{url}: {s} {resp.reason}: {detail}")

    def _prompt_builder(self):
        tok = self.local.tok
        if tok is None:
            raise RemoteError("config", "no local tokenizer to budget the prompt with (the model failed to load)")
        if self._builder is None or self._builder.tok is not tok:
            self._builder = PromptBuilder(tok)
        return self._builder

    async def _body(self, job, cfg, model: str, layout: str) -> dict:
        msg = job.msg
        builder = self._prompt_builder()
        workspace = self.workspace
        budget = cfg.context_tokens if job.kind == "complete" else cfg.refactor_context_tokens
        t0 = time.perf_counter()
        job.started = t0

        def build():
            extra = []
            if cfg.extra_context and layouts.needs_suffix(layout):
                try:
                    extra = workspace.extra_files(msg.path, msg.doc, msg.prefix + msg.suffix)
                except Exception:  # noqa: BLE001 - context is a bonus, never a failure
                    log.exception("extra context for %s", msg.path)
            fim = None if layout == "tokens" else layout in layouts.FIM_LAYOUTS
            repo, repo_budget, snippets = [], 0, []
            if layouts.needs_suffix(layout):
                repo, repo_budget, snippets = prompt_repo(workspace, builder.tok, cfg, msg, budget, extra, "contiguous")
            prompt = builder.build(msg.prefix, msg.suffix, budget, extra, fim=fim, repo=repo, repo_budget=repo_budget)
            prompt.repo_context = reported(prompt, snippets)
            return prompt, layouts.render(layout, prompt, builder.tok, msg.path)

        prompt, rendered = await asyncio.get_running_loop().run_in_executor(self._executor, build)
        job.prompt = prompt
        job.context_ms = (time.perf_counter() - t0) * 1e3
        # the layout puts what changes rarely first: servers that cache prompt prefixes (SGLang's radix
        # cache, vLLM's prefix caching, llama.cpp's cache_prompt) prefill only what a keystroke changed
        body = {"model": model, "prompt": rendered, "max_tokens": job.max_tokens, "stream": True,
                "temperature": max(msg.temperature, 0.0), "cache_prompt": True}
        if msg.temperature <= 0:
            # greedy as the local decoders are: no nucleus cut, and no repetition penalty (llama.cpp's
            # servers default to repeat_penalty 1.1 even at temperature 0; others ignore the key)
            body.update(top_p=1.0, repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0)
        if msg.stop:
            body["stop"] = [s for s in msg.stop if s]
        if layout == "tokens":     # the local decoders never emit the mask id; neither may the server
            if builder.tok.mask_id is not None:     # an AR checkpoint (GGUF) has no mask token
                body["logit_bias"] = {str(builder.tok.mask_id): -100}
        return body

    async def _complete(self, job, cfg, body: dict) -> tuple[str, str, float, float, int]:
        """Stream one completion: (raw text, stop reason, ms to the first byte, ms in all, chunks)."""
        msg = job.msg
        url = cfg.remote_url.rstrip("/") + "/completions"
        data = json.dumps(body).encode()
        headers = self._headers(cfg) | {"Content-Type": "application/json"}
        timeout = cfg.remote_timeout_ms / 1e3
        t0 = time.perf_counter()

        def left() -> float | None:
            return None if job.deadline is None else job.deadline - time.monotonic()

        attempt = 0
        while True:
            wait = timeout if left() is None else min(timeout, max(left(), 0.001))
            try:
                resp = await self.pool.request("POST", url, headers, data, wait)
                break
            except RemoteError as e:
                if e.kind == "slow" and left() is not None and left() <= 0:
                    spent = (time.perf_counter() - t0) * 1e3
                    return "", "deadline", spent, spent, 0
                if not e.retry or attempt >= RETRIES:
                    raise
                pause = BACKOFF_S * 2 ** attempt
                if left() is not None and left() < pause:
                    raise
                attempt += 1
                await asyncio.sleep(pause)
        first_ms = (time.perf_counter() - t0) * 1e3
        if resp.status != 200:
            try:
                err = await asyncio.wait_for(resp.body(), timeout)
            except (asyncio.TimeoutError, RemoteError):
                err = b""
            resp.release()
            self._check_status(resp, err, url, cfg)
        text, reason, chunks = "", "", 0
        buf = b""
        stops = tuple(s for s in msg.stop if s)
        # the loop guard as in local completions (textkit/loops.py): a loop cut ends the stream like a
        # stop rule, and the connection is closed so that the server stops generating the repeats
        before = loop_context(job) if cfg.loop_guard else None
        try:
            while not reason:
                rest = left()
                if rest is not None and rest <= 0:
                    reason = "deadline"
                    break
                try:
                    piece = await asyncio.wait_for(resp.read(), timeout if rest is None else min(timeout, rest))
                except asyncio.TimeoutError:
                    if left() is not None and left() <= 0:
                        reason = "deadline"
                        break
                    raise RemoteError("slow", f"{url}: the stream stalled for {cfg.remote_timeout_ms} ms "
                                              f"after {chunks} chunk(s)") from None
                if not piece:
                    raise RemoteError("stream", f"{url}: the stream ended without [DONE] after {chunks} "
                                                "chunk(s) (the server closed it)")
                buf += piece
                while b"\n" in buf and not reason:
                    line, buf = buf.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if not line.startswith(b"data:"):
                        continue          # blank separators, comments (": ping"), event names
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        reason = reason or "eos"
                        break
                    delta, finish = self._event(payload, url)
                    text += delta
                    chunks += 1
                    if text_cut(text, msg.max_lines, stops, before) is not None:
                        reason = "stop"
                    elif finish:
                        reason = {"length": "length", "stop": "eos"}.get(finish, finish)
            if reason in ("eos", "length") and not buf.replace(b"data: [DONE]", b"").strip():
                # the rest of the body (normally "data: [DONE]" and the end of the chunked stream) is
                # read after the reply, to keep the connection alive for the next request
                asyncio.get_running_loop().create_task(self._drain(resp))
                resp = None
        finally:
            if resp is not None:
                resp.close()          # the server sees the disconnect and stops generating
        if reason == "eos" and body["max_tokens"] <= chunks:
            reason = "length"
        total_ms = (time.perf_counter() - t0) * 1e3
        self.first_byte_ms.append(first_ms)
        self.total_ms.append(total_ms)
        return text, reason, first_ms, total_ms, chunks

    @staticmethod
    async def _drain(resp: Response) -> None:
        try:
            tail = await asyncio.wait_for(resp.body(4096), 1.0)
            if resp.done and not tail.replace(b"data: [DONE]", b"").strip():
                resp.release()
        except (asyncio.TimeoutError, RemoteError, OSError):
            pass
        finally:
            resp.close()

    @staticmethod
    def _event(payload: bytes, url: str) -> tuple[str, str]:
        try:
            obj = json.loads(payload)
        except ValueError:
            raise RemoteError("stream", f"{url}: a malformed stream event {payload[:80]!r}") from None
        if not isinstance(obj, dict):
            raise RemoteError("stream", f"{url}: a stream event is not an object: {payload[:80]!r}")
        if "error" in obj:
            raise RemoteError("server", f"{url}: the server reported an error mid-stream: {_error_message(payload)}")
        try:
            choice = obj["choices"][0]
            return str(choice.get("text") or ""), str(choice.get("finish_reason") or "")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RemoteError("stream", f"{url}: a stream event without choices[0].text: {payload[:80]!r}") from None

    def _finish(self, job, raw: str, reason: str, first_ms: float, total_ms: float, chunks: int,
                loop_guard: bool) -> None:
        frame = result_frame(job, raw, reason, self.stats, mode="remote", tokens=chunks, prefill_ms=first_ms,
                             decode_ms=total_ms - first_ms, loop_guard=loop_guard,
                             budget_tokens=self.config().context_tokens)
        self.deliver(job, frame)

    # -- health ---------------------------------------------------------------------------------------

    def _failed(self, e: RemoteError, cfg) -> None:
        self.errors[e.kind] = self.errors.get(e.kind, 0) + 1
        h = self.health
        h.failed_at = time.monotonic()
        if h.state != "error" or h.kind != e.kind:
            log.warning("remote backend %s: %s: %s%s", cfg.remote_url, e.kind, e.message,
                        "; using the local model meanwhile" if cfg.remote_fallback == "local" else "")
            h.since = time.time()
        h.state, h.kind, h.message = "error", e.kind, e.message

    def _ok(self) -> None:
        h = self.health
        if h.state != "ok":
            if h.state == "error":
                log.info("remote backend %s: working again (model %s)", self.config().remote_url, self.model)
            h.state, h.kind, h.message, h.since = "ok", "", "", time.time()

    def status(self, cfg) -> dict:
        fb = list(self.first_byte_ms)
        tot = list(self.total_ms)
        key_env = cfg.remote_api_key_env
        return {
            "url": cfg.remote_url, "model": self.model or cfg.remote_model, "prompt_layout": self.layout or cfg.remote_prompt,
            "state": self.health.state, "error_kind": self.health.kind, "error": self.health.message,
            "since": self.health.since, "requests": self.requests, "errors_by_kind": dict(self.errors),
            "fallback": cfg.remote_fallback, "fallbacks": self.fallbacks,
            "first_byte_ms_p50": round(statistics.median(fb), 1) if fb else None,
            "total_ms_p50": round(statistics.median(tot), 1) if tot else None,
            "last_total_ms": round(tot[-1], 1) if tot else None,
            "connections_opened": self.pool.opened,
            "api_key": (f"${key_env} " + ("set" if os.environ.get(key_env) else "NOT SET")) if key_env else "none",
        }
