"""`tricode lsp`: the pygls 2 language server (stdio). Thin handlers over the modules that do the work:

    documents.py  open documents, incremental sync, positions in the negotiated encoding
    inline.py     the completion pipeline (gating, scheduler, cache, multi-line plan, post-processing)
    actions.py    refactor code actions: list, resolve, run (generate), apply (workspace/applyEdit)
    backend.py    the daemon connection (start, loading progress, restart once)

Custom methods (namespace `tricode/`): notifications `tricode/accepted`, `tricode/rejected`,
`tricode/partiallyAccepted` (forwarded to the daemon as feedback), `tricode/cursorIdle`
{textDocument: {uri}, position} (the cursor rested: prefetch, lsp/prefetch.py), request `tricode/status`;
Copilot's next-edit request `textDocument/copilotInlineEdit` and notification `textDocument/didShowInlineEdit`
(lsp/next_edit.py, with the edit history of lsp/edit_history.py; announced under capabilities.experimental);
commands `tricode.accepted` (attached to every inline item) and `tricode.refactor`.
This module never imports torch.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import lsp_method

from protocol.client import DaemonUnavailable
from textkit.gitignore import IgnoreMatcher
from protocol import DocumentUpdate, Feedback, Status
from lsp import gating
from lsp.actions import Actions
from lsp.backend import Backend
from lsp import guard
from lsp.documents import UTF8, UTF16, UTF32, Document, DocumentStore, units, uri_to_path
from lsp.edit_history import EditHistory
from lsp.inline import CompletionFailed, InlineCompleter, Outcome
from lsp.next_edit import NextEditor, daemon_source
from lsp.prefetch import Prefetcher
from lsp.progress import WorkDone
from lsp.settings import Settings, unwrap

log = logging.getLogger(__name__)

VERSION = "0.1.0"
REQUEST_FAILED = -32803          # LSP ErrorCodes.RequestFailed
ACCEPT_COMMAND = "tricode.accepted"
REFACTOR_COMMAND = "tricode.refactor"


class TricodeProtocol(guard.GuardedProtocol):
    """Documents live in lsp.documents (pygls' own copy is not kept: one copy, LSP line rules);
    $/cancelRequest also reaches running refactor commands. Bad messages: lsp/guard.py."""

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        if (h := self.fm.features.get(types.TEXT_DOCUMENT_DID_OPEN)) is not None:
            yield h, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        if (h := self.fm.features.get(types.TEXT_DOCUMENT_DID_CHANGE)) is not None:
            yield h, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        if (h := self.fm.features.get(types.TEXT_DOCUMENT_DID_CLOSE)) is not None:
            yield h, (params,), None

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params):
        result = yield from super().lsp_initialize(params)
        # next-edit suggestions (lsp/next_edit.py), announced the way Copilot's language server does
        caps = result.capabilities
        caps.experimental = {**(caps.experimental if isinstance(caps.experimental, dict) else {}),
                             "copilotInlineEdit": True, "didShowInlineEdit": True}
        return result

    def _handle_cancel_notification(self, msg_id):
        super()._handle_cancel_notification(msg_id)
        on_cancel = getattr(self._server, "on_cancel_request", None)
        if on_cancel is not None:
            on_cancel(msg_id)


class TricodeServer(LanguageServer):
    def __init__(self, *, socket_path: str | None = None):
        super().__init__("tricode", VERSION, text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=TricodeProtocol)
        self.socket_path = socket_path
        self.settings = Settings()
        self.documents = DocumentStore()
        self.edit_history = EditHistory()
        self.next_edit = NextEditor(self.documents, self.edit_history)
        self.ignore = IgnoreMatcher()
        self.backend: Backend | None = None
        self.completer: InlineCompleter | None = None
        self.prefetcher: Prefetcher | None = None
        self.actions: Actions | None = None
        self.client_name = "lsp"
        self.running_commands: dict = {}

    # -- set-up ---------------------------------------------------------------------------------------

    def setup(self, params: types.InitializeParams) -> None:
        info = params.client_info
        if info is not None and info.name:
            self.client_name = "lsp:" + "-".join(info.name.lower().split())
        encoding = str(getattr(self.workspace, "position_encoding", None) or UTF16)
        encoding = encoding if encoding in (UTF8, UTF16, UTF32) else UTF16
        self.documents.encoding = encoding
        roots = []
        for folder in params.workspace_folders or []:
            if p := uri_to_path(folder.uri):
                roots.append(p)
        if params.root_uri and (p := uri_to_path(params.root_uri)):
            roots.append(p)
        elif params.root_path:
            roots.append(params.root_path)
        self.ignore = IgnoreMatcher(roots)
        self.settings = Settings().merged(config_file_settings()).merged(plain(params.initialization_options))
        self.backend = Backend(socket_path=self.socket_path, client_name=self.client_name,
                               progress_factory=lambda title: WorkDone(self, title),
                               on_connected=self.send_open_documents, on_problem=self.show_problem)
        self.completer = InlineCompleter(self.backend, self.settings, self.ignore)
        self.prefetcher = Prefetcher(self.backend, self.settings, self.ignore)
        self.actions = Actions(self)
        # next-edit suggestions go to the daemon, through the completions' scheduler (debounce, supersede)
        self.next_edit.source = daemon_source(self.backend, self.completer.scheduler,
                                              lambda: self.settings.debounce_ms / 1000.0)
        self.next_edit.spawn = self.backend.spawn
        self.next_edit.prefetch = self.settings.next_edit_prefetch
        log.info("initialized for %s: encoding %s, settings %s", self.client_name, encoding, self.settings)

    def report_server_error(self, error: Exception, source) -> None:
        guard.report_server_error(self, error, source)      # logged, never a dialog

    def show_problem(self, message: str) -> None:
        try:
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error,
                                                             message=f"tricode: {message}"))
        except Exception as e:      # the client went away
            log.info("window/showMessage failed: %s", e)

    def configure(self, values) -> None:
        new = self.settings.merged(plain(values))
        if new != self.settings:
            log.info("settings: %s", new)
            self.settings = new
            if self.completer is not None:
                self.completer.configure(new)
            if self.prefetcher is not None:
                self.prefetcher.configure(new)
            self.next_edit.prefetch = new.next_edit_prefetch

    async def pull_configuration(self) -> None:
        caps = self.client_capabilities
        if not (caps and caps.workspace and caps.workspace.configuration):
            return
        try:
            result = await asyncio.wait_for(self.workspace_configuration_async(types.ConfigurationParams(
                items=[types.ConfigurationItem(section="tricode")])), 5.0)
        except Exception as e:
            log.info("workspace/configuration failed: %s", e)
            return
        value = plain(result[0]) if result else None
        if isinstance(value, dict):
            self.configure(value)

    async def send_open_documents(self) -> None:
        for doc in self.documents:
            self.send_document(doc)

    def send_document(self, doc, closed: bool = False) -> None:
        if self.backend is None:
            return
        if closed:
            self.backend.notify(DocumentUpdate(uri=doc.uri, path=doc.path, language=doc.language, text=None))
            return
        if gating.content_gate(doc, self.settings, self.ignore) is None:
            self.backend.notify(DocumentUpdate(uri=doc.uri, path=doc.path, language=doc.language, text=doc.text))

    # -- completion results ---------------------------------------------------------------------------

    def item_range(self, start: types.Position, out: Outcome, end: types.Position | None = None) -> types.Range:
        """The replaced range on the cursor line, from the request's snapshot (not the live text):
        start..end (the cursor, or the end of a selected completion item), plus the closing brackets
        after it that the suggestion replaces."""
        end = end or start
        char = end.character
        if out.suggestion.replace and out.ctx is not None:
            char += units(out.ctx.line_suffix[: out.suggestion.replace], self.documents.encoding)
        return types.Range(start=start, end=types.Position(line=end.line, character=char))

    def item_command(self, uri: str, out: Outcome) -> types.Command:
        info = {k: v for k, v in out.info.items() if k not in ("raw", "plan", "context_files")}
        info.update(uri=uri, shown=len(out.suggestion.text))
        return types.Command(title="tricode: accepted", command=ACCEPT_COMMAND, arguments=[info])

    async def run_completion(self, uri: str, position: types.Position,
                             selected: types.SelectedCompletionInfo | None = None) -> Outcome | None:
        """Complete at `position`. With the editor's completion popup open on an item (`selected`), the
        completion is made as if that item were accepted, and the suggestion then starts with it."""
        doc = self.documents.get(uri)
        if doc is None or self.completer is None:
            return None
        offset = doc.offset_at(position.line, position.character)
        if selected is not None and selected.range.start.line == selected.range.end.line == position.line:
            a = doc.offset_at(selected.range.start.line, selected.range.start.character)
            b = max(a, doc.offset_at(selected.range.end.line, selected.range.end.character))
            doc = Document(uri=doc.uri, text=doc.text[:a] + selected.text + doc.text[b:], version=doc.version,
                           language=doc.language, encoding=doc.encoding)
            offset = a + len(selected.text)
        try:
            return await self.completer.complete(doc, offset)
        except CompletionFailed as e:
            raise JsonRpcException(str(e), code=REQUEST_FAILED) from None

    # -- feedback and status --------------------------------------------------------------------------

    def feedback(self, event: str, params) -> None:
        uri = _get(params, "uri") or _get(params, "doc") or ""
        shown = _int(_get(params, "shown"))
        accepted = _int(_get(params, "accepted"))
        if event == "accepted" and not accepted:
            accepted = shown
        if event == "rejected":
            accepted = 0
        log.info("feedback %s %s shown=%d accepted=%d", event, uri, shown, accepted)
        if self.backend is not None:
            self.backend.notify(Feedback(event=event, doc=str(uri), shown=shown, accepted=accepted))

    async def status(self) -> dict:
        daemon: dict = {}
        if self.backend is not None and self.backend.connected:
            try:
                daemon = await asyncio.wait_for(self.backend.client.request(Status()), 3.0)
            except (DaemonUnavailable, asyncio.TimeoutError) as e:
                daemon = {"state": "unavailable", "error": str(e)}
        backend = self.backend.describe() if self.backend else {"state": "uninitialized"}
        modes = daemon.get("modes") if isinstance(daemon.get("modes"), dict) else {}
        mode = self.settings.inline_mode or modes.get("inline") or "spec"
        remote = daemon.get("remote") if daemon.get("backend") == "openai" else None
        if isinstance(remote, dict) and remote:   # the editors' status line shows the server's health
            mode = "remote" + (f": {remote.get('error_kind')}" if remote.get("state") == "error" else "")
        return {
            "state": daemon.get("state") or backend["state"],
            "model": daemon.get("model", ""),
            "device": daemon.get("device", ""),
            "mode": mode,
            "daemon": {k: v for k, v in daemon.items() if k not in ("type", "id")},
            "connection": backend,
            "lsp": {"version": VERSION, "pid": os.getpid(), "client": self.client_name,
                    "position_encoding": self.documents.encoding, "documents": len(self.documents),
                    "document_problems": dict(self.documents.problems),
                    "settings": self.settings.to_dict(),
                    "completions": self.completer.describe() if self.completer else {},
                    "prefetch": self.prefetcher.describe() if self.prefetcher else {},
                    "next_edit": self.next_edit.describe()},
        }

    def on_cancel_request(self, msg_id) -> None:
        cancel = self.running_commands.pop(msg_id, None)
        if cancel is not None:
            cancel()

    async def close(self) -> None:
        if self.completer is not None:
            self.completer.scheduler.clear_all()
        if self.backend is not None:
            await self.backend.close()


def config_file_settings() -> dict:
    """The `[lsp]` table of $XDG_CONFIG_HOME/tricode/config.toml (the daemon reads the rest)."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    try:
        data = tomllib.loads((base / "tricode" / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    table = data.get("lsp")
    return table if isinstance(table, dict) else {}


def plain(value):
    """pygls hands params of custom methods over as namedtuples: back to dicts and lists."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _get(params, key: str):
    params = plain(params)
    if isinstance(params, dict):
        return params.get(key)
    if isinstance(params, (list, tuple)) and params and isinstance(params[0], dict):
        return params[0].get(key)
    return getattr(params, key, None)


def _int(v) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else 0


# -- handlers ---------------------------------------------------------------------------------------------

def build(socket_path: str | None = None) -> TricodeServer:
    server = TricodeServer(socket_path=socket_path)

    @server.feature(types.INITIALIZE)
    def initialize(ls: TricodeServer, params: types.InitializeParams):
        ls.setup(params)
        if _wants_completion_fallback(ls.settings, params.capabilities):
            ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)

    @server.feature(types.INITIALIZED)
    def initialized(ls: TricodeServer, params):
        ls.backend.spawn(_warm_up(ls))

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: TricodeServer, params):
        await ls.close()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: TricodeServer, params: types.DidOpenTextDocumentParams):
        td = params.text_document
        doc = ls.documents.open(td.uri, td.text, td.version, td.language_id)
        ls.send_document(doc)
        if ls.prefetcher is not None:
            ls.prefetcher.opened(doc)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: TricodeServer, params: types.DidChangeTextDocumentParams):
        before = dict(ls.documents.problems)
        old = ls.documents.get(params.text_document.uri)
        old_text = old.text if old is not None else None
        doc = ls.documents.change(params.text_document.uri, params.text_document.version, params.content_changes)
        if doc is not None and old_text is not None:
            ls.edit_history.changed(doc.uri, old_text, doc.text, doc.version)
            ls.next_edit.changed(doc.uri, old_text, doc.text)     # an accepted next edit: prefetch the next
        for what, n in ls.documents.problems.items():
            if n > before[what]:
                ls.protocol.limited.warning(f"didChange:{what}", "didChange %s (version %s): %s (%d so far)",
                                            params.text_document.uri, params.text_document.version,
                                            what.replace("_", " "), n)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: TricodeServer, params: types.DidSaveTextDocumentParams):
        doc = ls.documents.get(params.text_document.uri)
        if doc is not None:
            ls.send_document(doc)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: TricodeServer, params: types.DidCloseTextDocumentParams):
        doc = ls.documents.close(params.text_document.uri)
        ls.edit_history.closed(params.text_document.uri)
        if ls.completer is not None:
            ls.completer.forget(params.text_document.uri)
        if ls.prefetcher is not None:
            ls.prefetcher.forget(params.text_document.uri)
        if doc is not None:
            ls.send_document(doc, closed=True)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: TricodeServer, params: types.InlineCompletionParams):
        uri = params.text_document.uri
        sel = params.context.selected_completion_info if params.context else None
        if sel is not None and not (sel.range.start.line == sel.range.end.line == params.position.line):
            sel = None
        out = await ls.run_completion(uri, params.position, sel)
        if out is None or out.empty:
            return types.InlineCompletionList(items=[])
        if sel is not None:     # the suggestion extends the selected item: replace its range with both
            item = types.InlineCompletionItem(insert_text=sel.text + out.suggestion.text,
                                              range=ls.item_range(sel.range.start, out, sel.range.end),
                                              command=ls.item_command(uri, out))
        else:
            item = types.InlineCompletionItem(insert_text=out.suggestion.text,
                                              range=ls.item_range(params.position, out),
                                              command=ls.item_command(uri, out))
        return types.InlineCompletionList(items=[item])

    async def completion(ls: TricodeServer, params: types.CompletionParams):
        uri = params.text_document.uri
        out = await ls.run_completion(uri, params.position)
        if out is None or out.empty:
            return types.CompletionList(is_incomplete=True, items=[])
        text = out.suggestion.text
        first = text.strip().split("\n")[0]
        label = first if len(first) <= 60 else first[:57] + "..."
        mode, tpf = out.info.get("mode", ""), out.info.get("tokens_per_forward")
        item = types.CompletionItem(
            label=label or text.strip()[:60], kind=types.CompletionItemKind.Snippet,
            detail=f"tricode {mode}" + (f" ({tpf:.2f} tokens/forward)" if isinstance(tpf, (int, float)) else ""),
            documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{text}\n```"),
            sort_text="0", filter_text=label, preselect=True,
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=ls.item_range(params.position, out), new_text=text),
            command=ls.item_command(uri, out))
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite], resolve_provider=True))
    def code_action(ls: TricodeServer, params: types.CodeActionParams):
        return ls.actions.list(params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    def code_action_resolve(ls: TricodeServer, action: types.CodeAction):
        return ls.actions.resolve(action)

    @server.command(REFACTOR_COMMAND)
    async def refactor_command(ls: TricodeServer, *args):
        return await ls.actions.execute(plain(list(args)), ls.protocol.msg_id)

    @server.command(ACCEPT_COMMAND)
    def accepted_command(ls: TricodeServer, *args):
        ls.feedback("accepted", plain(args[0]) if args else {})

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: TricodeServer, params: types.DidChangeConfigurationParams):
        values = unwrap(plain(params.settings))
        if values:
            ls.configure(values)
        else:
            ls.backend.spawn(ls.pull_configuration())

    @server.feature("tricode/accepted")
    def tricode_accepted(ls: TricodeServer, params):
        ls.feedback("accepted", params)

    @server.feature("tricode/rejected")
    def tricode_rejected(ls: TricodeServer, params):
        ls.feedback("rejected", params)

    @server.feature("tricode/partiallyAccepted")
    def tricode_partial(ls: TricodeServer, params):
        ls.feedback("partial", params)

    @server.feature("tricode/cursorIdle")
    def tricode_cursor_idle(ls: TricodeServer, params):
        p = plain(params)
        uri = _get(p, "textDocument")
        uri = uri.get("uri") if isinstance(uri, dict) else _get(p, "uri")
        pos = _get(p, "position")
        line = pos.get("line") if isinstance(pos, dict) else None
        doc = ls.documents.get(uri) if isinstance(uri, str) else None
        if doc is None or not isinstance(line, int) or isinstance(line, bool) or ls.prefetcher is None:
            log.info("tricode/cursorIdle ignored: wants {textDocument: {uri}, position: {line, character}} "
                     "of an open document, got %r", p)
            return
        ls.prefetcher.rested(doc, line)

    @server.feature("textDocument/copilotInlineEdit")
    async def copilot_inline_edit(ls: TricodeServer, params):
        return await ls.next_edit.suggest(plain(params))

    @server.feature("textDocument/didShowInlineEdit")
    def did_show_inline_edit(ls: TricodeServer, params):
        ls.next_edit.shown(plain(params))

    @server.feature("tricode/status")
    async def tricode_status(ls: TricodeServer, params):
        return await ls.status()

    return server


def _wants_completion_fallback(settings: Settings, caps: types.ClientCapabilities) -> bool:
    mode = settings.completion_fallback
    if mode in ("always", "never"):
        return mode == "always"
    td = caps.text_document if caps else None
    return not (td is not None and td.inline_completion is not None)


async def _warm_up(ls: TricodeServer) -> None:
    """At `initialized`: pull the editor's settings and connect (starting the daemon, loading the model)."""
    await ls.pull_configuration()
    try:
        await ls.backend.ensure()
    except DaemonUnavailable as e:
        ls.show_problem(f"the daemon is not available: {e}")


def serve_stdio(socket_path: str | None = None) -> None:
    build(socket_path).start_io()
