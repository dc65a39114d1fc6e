// Prefetch: when the cursor comes to rest at a new line (no selection change for
// `tricode.prefetchIdleMs`), send the `tricode/cursorIdle` notification, so that the daemon prefills
// the prompt of a completion there before the first keystroke (lsp/prefetch.py). A rest on the line
// already sent (same document version) is not sent again.
import * as vscode from "vscode";

export type Notify = (method: string, params: Record<string, unknown>) => void;

export class CursorIdle implements vscode.Disposable {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private last = "";
  private readonly sub: vscode.Disposable;

  constructor(
    private readonly notify: Notify,
    private readonly idleMs: () => number,
    private readonly wanted: (doc: vscode.TextDocument) => boolean,
  ) {
    this.sub = vscode.window.onDidChangeTextEditorSelection((e) => this.moved(e.textEditor));
  }

  private moved(editor: vscode.TextEditor): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const ms = this.idleMs();
    if (ms <= 0 || !this.wanted(editor.document)) {
      return;
    }
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (vscode.window.activeTextEditor !== editor) {
        return;
      }
      const pos = editor.selection.active;
      const key = `${editor.document.uri.toString()}:${editor.document.version}:${pos.line}`;
      if (key === this.last) {
        return;
      }
      this.last = key;
      this.notify("tricode/cursorIdle", {
        textDocument: { uri: editor.document.uri.toString() },
        position: { line: pos.line, character: pos.character },
      });
    }, ms);
  }

  dispose(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
    }
    this.sub.dispose();
  }
}
