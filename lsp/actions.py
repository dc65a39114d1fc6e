"""Refactor code actions: listed cheaply, resolved lazily, run as `tricode.refactor`.

    textDocument/codeAction   the actions that apply at the selection (or the enclosing function),
                              with only `data` (nothing is generated to list them)
    codeAction/resolve        adds the `tricode.refactor` command (or `disabled` with the reason)
    workspace/executeCommand  tricode.refactor {action, uri, range, instruction?}: builds the prompt
                              (lsp/refactor.py), runs `generate` in the refactor mode (AR by default)
                              with $/progress, applies the result with workspace/applyEdit as one
                              edit; never writes a file

Cancelling ($/cancelRequest on the command, or the progress' cancel button) aborts the daemon work.
"""
from __future__ import annotations

import asyncio
import logging
import time

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from protocol.client import DaemonUnavailable
from protocol import ABORTED, Error, Generate, Result, decode_reply
from lsp import refactor
from lsp.progress import WorkDone

log = logging.getLogger(__name__)

KIND = types.CodeActionKind.RefactorRewrite
COMMAND = "tricode.refactor"
REQUEST_FAILED = -32803
REQUEST_CANCELLED = -32800
READY_WAIT_S = 600.0        # a refactor waits this long for the model to load


def _range_list(r: types.Range) -> list[int]:
    return [r.start.line, r.start.character, r.end.line, r.end.character]


def _parse_range(value) -> tuple[int, int, int, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, dict):
        try:
            s, e = value["start"], value["end"]
            return int(s["line"]), int(s["character"]), int(e["line"]), int(e["character"])
        except (KeyError, TypeError, ValueError):
            return None
    if isinstance(value, types.Range):
        return tuple(_range_list(value))
    return None


def _kind_wanted(only) -> bool:
    if not only:
        return True
    ours = str(KIND.value if hasattr(KIND, "value") else KIND)
    return any(ours == str(getattr(k, "value", k)) or ours.startswith(str(getattr(k, "value", k)) + ".")
               for k in only)


class Actions:
    def __init__(self, server):
        self.server = server

    def _resolve_supported(self) -> bool:
        caps = self.server.client_capabilities
        try:
            rs = caps.text_document.code_action.resolve_support
        except AttributeError:
            return False
        return rs is not None and "command" in (rs.properties or [])

    # -- listing and resolving ------------------------------------------------------------------------

    def list(self, params: types.CodeActionParams) -> list[types.CodeAction]:
        doc = self.server.documents.get(params.text_document.uri)
        if doc is None or not _kind_wanted(params.context.only if params.context else None):
            return []
        r = params.range
        start = doc.offset_at(r.start.line, r.start.character)
        end = doc.offset_at(r.end.line, r.end.character)
        names = refactor.available(doc.text, doc.language, start, end)
        lazy = self._resolve_supported()
        out = []
        for name in names:
            title = refactor.ACTIONS[name]
            if name == "docstring" and refactor.family(doc.language) == "brace":
                title = "Add doc comment"
            data = {"action": name, "uri": doc.uri, "range": _range_list(r)}
            action = types.CodeAction(title=f"tricode: {title}", kind=KIND, data=data)
            if not lazy:
                action.command = self._command(title, data)
            out.append(action)
        return out

    def _command(self, title: str, data: dict) -> types.Command:
        return types.Command(title=f"tricode: {title}", command=COMMAND, arguments=[dict(data)])

    def resolve(self, action: types.CodeAction) -> types.CodeAction:
        data = action.data
        if hasattr(data, "_asdict"):
            data = data._asdict()
        data = data if isinstance(data, dict) else {}
        name = data.get("action")
        doc = self.server.documents.get(data.get("uri", ""))
        rng = _parse_range(data.get("range"))
        if name not in refactor.ACTIONS or doc is None or rng is None:
            action.disabled = types.CodeActionDisabled(reason="the document is no longer open")
            return action
        if name != "rewrite" or data.get("instruction"):
            start, end = doc.offset_at(rng[0], rng[1]), doc.offset_at(rng[2], rng[3])
            try:
                refactor.build(name, doc.text, doc.language, start, end, instruction=data.get("instruction", ""))
            except refactor.RefactorError as e:
                action.disabled = types.CodeActionDisabled(reason=str(e))
                return action
        action.command = self._command(action.title.removeprefix("tricode: "), data)
        return action

    # -- running --------------------------------------------------------------------------------------

    async def execute(self, args, msg_id) -> dict:
        a = args[0] if args and isinstance(args[0], dict) else {}
        name = a.get("action")
        instruction = a.get("instruction") or (args[1] if len(args) > 1 and isinstance(args[1], str) else "")
        doc = self.server.documents.get(a.get("uri", ""))
        rng = _parse_range(a.get("range"))
        if name not in refactor.ACTIONS:
            raise JsonRpcInvalidParams(f"tricode.refactor: unknown action {name!r}; known: {', '.join(refactor.ACTIONS)}")
        if doc is None:
            raise JsonRpcInvalidParams(f"tricode.refactor: {a.get('uri')!r} is not an open document")
        if rng is None:
            raise JsonRpcInvalidParams("tricode.refactor: `range` must be an LSP range or [line, character, line, character]")
        start, end = doc.offset_at(rng[0], rng[1]), doc.offset_at(rng[2], rng[3])
        version, text = doc.version, doc.text
        settings = self.server.settings
        try:
            job = refactor.build(name, text, doc.language, start, end, instruction=instruction,
                                 max_tokens=settings.refactor_max_tokens)
        except refactor.RefactorError as e:
            raise JsonRpcException(str(e), code=REQUEST_FAILED) from None

        backend = self.server.backend
        stop = asyncio.get_running_loop().create_future()
        state = {"rid": None}

        def cancel():
            if not stop.done():
                stop.set_result(True)
            if state["rid"] is not None:
                backend.abort_later(state["rid"])

        progress = WorkDone(self.server, f"tricode: {job.title}", cancellable=True, on_cancel=cancel)
        if msg_id is not None:
            self.server.running_commands[msg_id] = cancel
        t0 = time.perf_counter()
        try:
            await progress.begin("starting")
            try:
                await backend.ensure()
                if backend.state != "ready":
                    progress.report("waiting for the model to load")
                    waiting = asyncio.ensure_future(backend.wait_ready(READY_WAIT_S))
                    await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not waiting.done():
                        waiting.cancel()
                        raise JsonRpcException("cancelled", code=REQUEST_CANCELLED)
                    waiting.result()
            except DaemonUnavailable as e:
                raise JsonRpcException(f"tricode daemon unavailable: {e}", code=REQUEST_FAILED) from None
            msg = Generate(doc=doc.uri, prefix=job.prefix, suffix=job.suffix, path=doc.path,
                           language=doc.language or "", mode=settings.refactor_mode, max_tokens=job.max_tokens,
                           max_lines=job.max_lines, stop=job.stop, action=job.action, original=job.original,
                           instruction=job.instruction, scaffold=job.scaffold)
            try:
                rid, fut = backend.submit(msg)
            except DaemonUnavailable as e:
                raise JsonRpcException(f"tricode daemon unavailable: {e}", code=REQUEST_FAILED) from None
            state["rid"] = rid
            if stop.done():
                backend.abort_later(rid)
            progress.report("generating")
            while not fut.done() and not stop.done():
                await asyncio.wait({fut, stop}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if not fut.done() and not stop.done():
                    progress.report(f"generating ({time.perf_counter() - t0:.0f} s)")
            if stop.done():
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise JsonRpcException("cancelled", code=REQUEST_CANCELLED)
            try:
                reply = fut.result()
            except DaemonUnavailable as e:
                raise JsonRpcException(f"the tricode daemon stopped during the refactor ({e})",
                                       code=REQUEST_FAILED) from None
            reply = decode_reply(reply)
            if isinstance(reply, Error):
                if reply.code == ABORTED:
                    raise JsonRpcException("cancelled", code=REQUEST_CANCELLED)
                raise JsonRpcException(f"tricode: {reply.code}: {reply.message}", code=REQUEST_FAILED)
            if not isinstance(reply, Result):
                raise JsonRpcException(f"tricode: the daemon answered a refactor with {reply.get('type')!r}",
                                       code=REQUEST_FAILED)
            generated = reply.text
            stats = {"mode": reply.mode, "tokens": reply.tokens, "tokens_per_forward": reply.tokens_per_forward,
                     "total_ms": reply.total_ms}
            new_text = job.finish(generated)
            log.info("refactor %s on %s: %d chars generated, usable=%s %s", name, doc.uri, len(generated),
                     new_text is not None, stats)
            if new_text is None:
                raise JsonRpcException(f"tricode: {job.title}: the model's answer was not usable; nothing changed",
                                       code=REQUEST_FAILED)
            current = self.server.documents.get(doc.uri)
            if current is None or current.version != version:
                raise JsonRpcException(f"tricode: {job.title}: the document changed while generating; "
                                       "run it again", code=REQUEST_FAILED)
            if doc.eol() != "\n":
                new_text = new_text.replace("\n", doc.eol())
            applied, reason = await self._apply(doc, version, job, new_text)
            progress.end("applied" if applied else f"not applied {reason or ''}".strip())
            return {"applied": applied, "failure_reason": reason, "action": name, "text": new_text, **stats}
        finally:
            progress.end()
            if msg_id is not None:
                self.server.running_commands.pop(msg_id, None)

    async def _apply(self, doc, version: int, job: refactor.RefactorEdit, new_text: str) -> tuple[bool, str | None]:
        sl, sc = doc.position_at(job.start)
        el, ec = doc.position_at(job.end)
        edit = types.TextEdit(range=types.Range(start=types.Position(line=sl, character=sc),
                                                end=types.Position(line=el, character=ec)), new_text=new_text)
        caps = self.server.client_capabilities
        versioned = bool(caps and caps.workspace and caps.workspace.workspace_edit
                         and caps.workspace.workspace_edit.document_changes)
        if versioned:
            ws_edit = types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=doc.uri, version=version),
                edits=[edit])])
        else:
            ws_edit = types.WorkspaceEdit(changes={doc.uri: [edit]})
        try:
            result = await asyncio.wait_for(self.server.workspace_apply_edit_async(
                types.ApplyWorkspaceEditParams(edit=ws_edit, label=f"tricode: {job.title}")), 120.0)
        except asyncio.TimeoutError:
            return False, "the editor did not answer workspace/applyEdit"
        except Exception as e:
            return False, f"workspace/applyEdit failed: {e}"
        return bool(result and result.applied), getattr(result, "failure_reason", None)
