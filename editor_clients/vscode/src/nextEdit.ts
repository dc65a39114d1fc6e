// Next-edit suggestions: after a change, `textDocument/copilotInlineEdit` (the request of Copilot's
// language server) at the cursor, debounced (`tricode.nextEdit.debounceMs`) and cancelled by the next
// change; the first edit of the answer is drawn with decorations: the text it removes struck through on
// the diff editor's "removed" colour, the text it inserts as an `after` decoration on the "inserted"
// colour (its first line; the whole edit in the hover), a mark in the overview ruler, and a hint at the
// end of the cursor line when the edit is on another line. While one is shown the context key
// `tricode.nextEditVisible` is set: Tab (`tricode.nextEdit.accept`) jumps to it, and on it applies it
// (only when the document is still at the version it was computed for); Escape
// (`tricode.nextEdit.dismiss`) drops it. After an accept the next place is asked for at once.
// A purely additive edit at the cursor (shown there, or reached with Tab) goes through the inline
// suggestion API instead, as ghost text: the extension's inline provider (the language client's
// middleware) answers with it (`inlineItems`), so Tab and Escape are VS Code's own.
// The server hears `textDocument/didShowInlineEdit` when one is drawn and the edit's command when it
// is applied. What this module does not know: how the server predicts; the server's inline completion.
import * as vscode from "vscode";
import { ExecuteCommandRequest, LanguageClient } from "vscode-languageclient/node";

export const NEXT_EDIT_METHOD = "textDocument/copilotInlineEdit";
export const DID_SHOW_METHOD = "textDocument/didShowInlineEdit";
export const CONTEXT_KEY = "tricode.nextEditVisible";
export const INLINE_ACCEPTED_COMMAND = "tricode.nextEdit.inlineAccepted";
const CONTENT_MODIFIED = -32801;

/** One edit of the answer, as the server sends it (LSP positions). */
export interface LspInlineEdit {
  range: { start: { line: number; character: number }; end: { line: number; character: number } };
  text: string;
  textDocument?: { uri: string; version: number };
  command?: { title: string; command: string; arguments?: unknown[] };
}

interface Shown {
  editor: vscode.TextEditor;
  version: number;
  range: vscode.Range;
  old: string;
  text: string;
  item: LspInlineEdit;
}

export interface NextEditCounters {
  requests: number;
  shown: number;
  accepted: number;
  dismissed: number;
  stale: number;
  errors: number;
}

export class NextEdits implements vscode.Disposable {
  private readonly removed = vscode.window.createTextEditorDecorationType({
    textDecoration: "line-through",
    backgroundColor: new vscode.ThemeColor("diffEditor.removedTextBackground"),
    overviewRulerColor: new vscode.ThemeColor("editorOverviewRuler.modifiedForeground"),
    overviewRulerLane: vscode.OverviewRulerLane.Center,
  });
  private readonly inserted = vscode.window.createTextEditorDecorationType({
    overviewRulerColor: new vscode.ThemeColor("editorOverviewRuler.modifiedForeground"),
    overviewRulerLane: vscode.OverviewRulerLane.Center,
  });
  private readonly hint = vscode.window.createTextEditorDecorationType({});
  private readonly subs: vscode.Disposable[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  private cts: vscode.CancellationTokenSource | undefined;
  private shown: Shown | undefined;
  private inline: Shown | undefined; // an additive edit at the cursor, offered as an inline suggestion
  private ownVersion: { uri: string; version: number } | undefined; // our own accept: already asked
  readonly counters: NextEditCounters = { requests: 0, shown: 0, accepted: 0, dismissed: 0, stale: 0, errors: 0 };

  constructor(
    private readonly client: () => LanguageClient | undefined,
    private readonly wanted: (doc: vscode.TextDocument) => boolean,
    private readonly log: (msg: string) => void,
  ) {
    this.subs.push(
      vscode.workspace.onDidChangeTextDocument((e) => this.changed(e)),
      vscode.window.onDidChangeTextEditorSelection((e) => {
        if (this.shown && e.textEditor === this.shown.editor) {
          this.drawHint();
        }
      }),
      vscode.window.onDidChangeActiveTextEditor(() => this.cancel()),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration("tricode.nextEdit") || e.affectsConfiguration("tricode.enabled")) {
          if (!this.enabled()) {
            this.cancel();
            this.clear();
          }
        }
      }),
    );
  }

  private config(): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration("tricode");
  }

  enabled(): boolean {
    return this.config().get<boolean>("enabled", true) && this.config().get<boolean>("nextEdit.enabled", true);
  }

  /** The edit shown (for commands and tests). */
  current(): { uri: string; line: number; character: number; old: string; text: string } | undefined {
    const s = this.shown;
    return s && { uri: s.editor.document.uri.toString(), line: s.range.start.line, character: s.range.start.character,
                  old: s.old, text: s.text };
  }

  // -- trigger ------------------------------------------------------------------------------------------

  private changed(e: vscode.TextDocumentChangeEvent): void {
    if (e.contentChanges.length === 0) {
      return;
    }
    const uri = e.document.uri.toString();
    if (this.ownVersion && this.ownVersion.uri === uri && this.ownVersion.version === e.document.version) {
      return; // the change our accept made: the next place is already asked for
    }
    if (this.shown && this.shown.editor.document === e.document) {
      this.clear(); // a keystroke ends the preview
    }
    if (this.inline && this.inline.editor.document === e.document) {
      this.inline = undefined;
    }
    const editor = vscode.window.activeTextEditor;
    if (editor === undefined || editor.document !== e.document) {
      return;
    }
    this.cancel();
    if (!this.enabled() || !this.wanted(e.document)) {
      return;
    }
    const ms = this.config().get<number>("nextEdit.debounceMs", 100);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.request(editor);
    }, ms);
  }

  /** Stop the debounce and cancel the request in flight. */
  cancel(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.cts !== undefined) {
      this.cts.cancel();
      this.cts.dispose();
      this.cts = undefined;
    }
  }

  /** Ask now at the cursor of `editor`. */
  async request(editor: vscode.TextEditor): Promise<void> {
    const c = this.client();
    if (c === undefined || !c.isRunning() || editor.document.isClosed || !this.enabled()) {
      return;
    }
    const caps = c.initializeResult?.capabilities.experimental as Record<string, unknown> | undefined;
    if (!caps || caps["copilotInlineEdit"] !== true) {
      return;
    }
    this.cancel();
    const cts = new vscode.CancellationTokenSource();
    this.cts = cts;
    const doc = editor.document;
    const version = doc.version;
    const pos = editor.selection.active;
    const params = {
      textDocument: { uri: c.code2ProtocolConverter.asUri(doc.uri), version },
      position: { line: pos.line, character: pos.character },
    };
    this.counters.requests++;
    let result: { edits?: LspInlineEdit[] } | null;
    try {
      result = await c.sendRequest<{ edits?: LspInlineEdit[] } | null>(NEXT_EDIT_METHOD, params, cts.token);
    } catch (e) {
      const code = (e as { code?: number }).code;
      if (!cts.token.isCancellationRequested && code !== CONTENT_MODIFIED) {
        this.counters.errors++;
        this.log(`${NEXT_EDIT_METHOD}: ${e instanceof Error ? e.message : String(e)}`);
      }
      return;
    } finally {
      if (this.cts === cts) {
        this.cts = undefined;
      }
      cts.dispose();
    }
    if (cts.token.isCancellationRequested || doc.version !== version || doc.isClosed) {
      return; // the text moved on meanwhile
    }
    for (const item of result?.edits ?? []) {
      const s = this.usable(editor, item, version);
      if (s !== undefined) {
        this.show(s);
        return;
      }
    }
  }

  private usable(editor: vscode.TextEditor, item: LspInlineEdit, version: number): Shown | undefined {
    const doc = editor.document;
    if (!item || typeof item.text !== "string" || !item.range) {
      return undefined;
    }
    if (item.textDocument && (item.textDocument.version !== version ||
        vscode.Uri.parse(item.textDocument.uri).toString() !== doc.uri.toString())) {
      return undefined;
    }
    const { start, end } = item.range;
    const range = new vscode.Range(start.line, start.character, end.line, end.character);
    if (doc.validateRange(range).isEqual(range) === false) {
      return undefined;
    }
    const old = doc.getText(range);
    if (old === item.text) {
      return undefined;
    }
    return { editor, version, range, old, text: item.text.replace(/\r\n/g, "\n"), item };
  }

  // -- drawing ------------------------------------------------------------------------------------------

  private show(s: Shown): void {
    this.clear();
    this.inline = undefined;
    if (!this.offerInline(s)) {
      this.draw(s);
    }
    this.notifyShown(s);
  }

  /** The decorations of `s` (and the context key). */
  private draw(s: Shown): void {
    this.shown = s;
    const lines = s.text.split("\n");
    const hover = new vscode.MarkdownString();
    hover.appendMarkdown("**tricode: next edit** — `Tab` jumps to it, then applies it; `Escape` drops it\n\n");
    hover.appendCodeblock(
      [...s.old.split("\n").map((l) => "- " + l), ...lines.map((l) => "+ " + l)].join("\n"), "diff");
    const rm: vscode.DecorationOptions[] = s.range.isEmpty ? [] : [{ range: s.range, hoverMessage: hover }];
    s.editor.setDecorations(this.removed, rm);
    const shownText = lines[0] + (lines.length > 1 ? ` ⏎ … (+${lines.length - 1} lines)` : "");
    s.editor.setDecorations(this.inserted, s.text === "" ? [] : [{
      range: new vscode.Range(s.range.end, s.range.end),
      hoverMessage: hover,
      renderOptions: {
        after: {
          contentText: shownText,
          backgroundColor: new vscode.ThemeColor("diffEditor.insertedTextBackground"),
          border: "1px solid",
          borderColor: new vscode.ThemeColor("diffEditor.insertedLineBackground"),
        },
      },
    }]);
    this.drawHint();
    void vscode.commands.executeCommand("setContext", CONTEXT_KEY, true);
  }

  private notifyShown(s: Shown): void {
    this.counters.shown++;
    const c = this.client();
    if (c !== undefined && c.isRunning()) {
      c.sendNotification(DID_SHOW_METHOD, { item: s.item }).catch((e) => this.log(`${DID_SHOW_METHOD}: ${e}`));
    }
  }

  /** An edit that only inserts, at the cursor: offered as ghost text (when inline suggestions are on). */
  private offerInline(s: Shown): boolean {
    const inlineOn = vscode.workspace.getConfiguration("editor", s.editor.document).get<boolean>("inlineSuggest.enabled", true);
    if (!inlineOn || !s.range.isEmpty || s.text === "" || !s.range.start.isEqual(s.editor.selection.active) ||
        !s.editor.selection.isEmpty || vscode.window.activeTextEditor !== s.editor) {
      return false;
    }
    this.inline = s;
    void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
    return true;
  }

  /** For the inline completion provider: the additive next edit at `position`, if there is one. */
  inlineItems(document: vscode.TextDocument, position: vscode.Position): vscode.InlineCompletionItem[] | undefined {
    const s = this.inline;
    if (s === undefined || s.editor.document !== document || document.version !== s.version ||
        !s.range.start.isEqual(position)) {
      return undefined;
    }
    const item = new vscode.InlineCompletionItem(s.text, new vscode.Range(position, position));
    item.command = { title: "tricode: next edit accepted", command: INLINE_ACCEPTED_COMMAND };
    return [item];
  }

  /** VS Code inserted the inline next edit (Tab): the server's command, then the next place. */
  inlineAccepted(): void {
    const s = this.inline;
    this.inline = undefined;
    if (s === undefined) {
      return;
    }
    this.counters.accepted++;
    this.runCommand(s);
    if (this.config().get<boolean>("nextEdit.prefetch", true) && vscode.window.activeTextEditor === s.editor) {
      void this.request(s.editor);
    }
  }

  /** Escape on the inline next edit. */
  dismissInline(): boolean {
    if (this.inline === undefined) {
      return false;
    }
    this.inline = undefined;
    this.counters.dismissed++;
    return true;
  }

  private runCommand(s: Shown): void {
    const c = this.client();
    const cmd = s.item.command;
    if (c !== undefined && c.isRunning() && cmd && typeof cmd.command === "string") {
      // the server's own command on the edit (Copilot's clients run it after applying)
      c.sendRequest(ExecuteCommandRequest.type, { command: cmd.command, arguments: cmd.arguments ?? [] }).then(
        undefined, (e) => this.log(`${cmd.command}: ${e}`));
    }
  }

  /** "↓ next edit: line N (Tab)" at the end of the cursor line when the edit is on another line. */
  private drawHint(): void {
    const s = this.shown;
    if (s === undefined) {
      return;
    }
    const line = s.editor.selection.active.line;
    if (line >= s.range.start.line && line <= s.range.end.line) {
      s.editor.setDecorations(this.hint, []);
      return;
    }
    const eol = s.editor.document.lineAt(line).range.end;
    s.editor.setDecorations(this.hint, [{
      range: new vscode.Range(eol, eol),
      renderOptions: {
        after: {
          contentText: `  ${s.range.start.line < line ? "↑" : "↓"} next edit: line ${s.range.start.line + 1} (Tab)`,
          color: new vscode.ThemeColor("editorCodeLens.foreground"),
          fontStyle: "italic",
        },
      },
    }]);
  }

  private clear(): void {
    const s = this.shown;
    this.shown = undefined;
    if (s !== undefined) {
      for (const d of [this.removed, this.inserted, this.hint]) {
        s.editor.setDecorations(d, []);
      }
      void vscode.commands.executeCommand("setContext", CONTEXT_KEY, false);
    }
  }

  // -- commands -------------------------------------------------------------------------------------------

  /** Tab: jump to the edit when the cursor is not on its lines, else apply it. */
  async jumpOrAccept(): Promise<boolean> {
    const s = this.shown;
    if (s === undefined) {
      return false;
    }
    const line = s.editor.selection.active.line;
    if (line >= s.range.start.line && line <= s.range.end.line) {
      return this.accept();
    }
    return this.jump();
  }

  jump(): boolean {
    const s = this.shown;
    if (s === undefined) {
      return false;
    }
    s.editor.selection = new vscode.Selection(s.range.start, s.range.start);
    s.editor.revealRange(s.range, vscode.TextEditorRevealType.InCenterIfOutsideViewport);
    if (s.range.isEmpty && s.text !== "") {
      // an insertion, now at the cursor: from here on it is ghost text (Tab accepts, Escape drops)
      this.clear();
      if (!this.offerInline(s)) {
        this.draw(s);
      }
      return true;
    }
    this.drawHint();
    return true;
  }

  /** Apply the edit when the document is still at its version (else drop it); then ask for the next. */
  async accept(): Promise<boolean> {
    const s = this.shown;
    if (s === undefined) {
      return false;
    }
    this.cancel();
    this.clear();
    const doc = s.editor.document;
    if (doc.version !== s.version || doc.getText(s.range) !== s.old) {
      this.counters.stale++;
      void vscode.window.setStatusBarMessage("tricode: the document changed; the next edit was dropped", 3000);
      return false;
    }
    const expected = doc.version + 1;
    this.ownVersion = { uri: doc.uri.toString(), version: expected };
    const ok = await s.editor.edit((b) => b.replace(s.range, s.text));
    if (!ok) {
      this.ownVersion = undefined;
      return false;
    }
    this.counters.accepted++;
    const lines = s.text.split("\n");
    const endLine = s.range.start.line + lines.length - 1;
    const endChar = (lines.length === 1 ? s.range.start.character : 0) + lines[lines.length - 1].length;
    const end = new vscode.Position(endLine, endChar);
    s.editor.selection = new vscode.Selection(end, end);
    this.runCommand(s);
    if (this.config().get<boolean>("nextEdit.prefetch", true)) {
      void this.request(s.editor); // the next place, now
    }
    return true;
  }

  dismiss(): boolean {
    if (this.shown === undefined) {
      return false;
    }
    this.cancel();
    this.clear();
    this.counters.dismissed++;
    return true;
  }

  dispose(): void {
    this.cancel();
    this.clear();
    this.inline = undefined;
    for (const d of [this.removed, this.inserted, this.hint, ...this.subs]) {
      d.dispose();
    }
  }
}
