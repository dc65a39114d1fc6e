// Accept / reject / partial-accept feedback for inline suggestions.
//
// VS Code tells a stable-API extension only about full accepts (it runs the item's command). So:
//  - accepted:  every item gets our command `tricode.inlineAccepted`, which forwards the server's own
//               `tricode.accepted` command (workspace/executeCommand, with the item's statistics);
//  - partial:   Ctrl+Right while a suggestion is visible runs `tricode.acceptNextWord` (and a key of the
//               user's choice `tricode.acceptNextLine`), which run VS Code's accept-word/line and count
//               what they inserted;
//  - rejected:  Escape while a suggestion is visible (`tricode.dismissSuggestion`), or a new request
//               where the text typed since the suggestion was shown does not match it.
//
// One suggestion gives one report: a suggestion accepted word by word and then with Tab is one
// `accepted`; one accepted in part and then dismissed or typed over is one `tricode/partiallyAccepted`;
// one dismissed or typed over is one `tricode/rejected`. Typing along with a suggestion (and the
// shorter suggestion VS Code then asks for) continues the same suggestion.
import * as vscode from "vscode";

export const INLINE_ACCEPTED = "tricode.inlineAccepted";

/** One suggestion as first shown, shared by its continuations. */
interface Origin {
  shown: number; // characters first shown
  accepted: number; // characters accepted so far by accept-word/line
  settled: boolean;
}

interface Shown {
  id: number;
  uri: string;
  line: number;
  character: number; // where the suggestion starts (the cursor when it was requested)
  text: string;
  origin: Origin;
}

export interface FeedbackSink {
  accepted(info: Record<string, unknown>): void;
  partial(uri: string, shown: number, accepted: number): void;
  rejected(uri: string, shown: number): void;
}

export interface Counters {
  shown: number;
  accepted: number;
  partial: number;
  rejected: number;
}

export class FeedbackTracker {
  private pending = new Map<string, Shown>(); // by document uri: the suggestion on screen
  private byId = new Map<number, Shown>(); // by item id: what an accept command refers to
  private continuing = new Map<string, Origin>(); // by document uri: a request that continues a suggestion
  private nextId = 1;
  readonly counters: Counters = { shown: 0, accepted: 0, partial: 0, rejected: 0 };

  constructor(private readonly sink: FeedbackSink, private readonly log: (msg: string) => void) {}

  /** Before a new request at `position`: settle the suggestion shown earlier in this document, unless
   * the text typed since then (by hand or by accept-word) is the start of it. */
  beforeRequest(document: vscode.TextDocument, position: vscode.Position): void {
    const uri = document.uri.toString();
    this.continuing.delete(uri);
    const old = this.pending.get(uri);
    if (old === undefined || old.origin.settled) {
      return;
    }
    if (position.line === old.line && position.character >= old.character && old.line < document.lineCount) {
      const typed = document.lineAt(old.line).text.slice(old.character, position.character);
      if (old.text.startsWith(typed)) {
        this.continuing.set(uri, old.origin);
        return;
      }
    }
    this.pending.delete(uri);
    this.settle(old, "typed over");
  }

  /** The items that VS Code is about to show: give them our command, remember the first one. */
  shown(document: vscode.TextDocument, position: vscode.Position, items: vscode.InlineCompletionItem[]): void {
    const uri = document.uri.toString();
    const continued = this.continuing.get(uri);
    this.continuing.delete(uri);
    let first: Shown | undefined;
    for (const item of items) {
      const text = typeof item.insertText === "string" ? item.insertText : item.insertText.value;
      const original = item.command;
      const info: Record<string, unknown> =
        original?.command === "tricode.accepted" && original.arguments?.[0] && typeof original.arguments[0] === "object"
          ? { ...(original.arguments[0] as Record<string, unknown>) }
          : { uri, shown: text.length };
      // with a range that starts before the cursor, insertText also covers text already there
      const start = item.range?.start ?? position;
      const before = start.line === position.line ? Math.max(0, position.character - start.character) : 0;
      const visible = text.slice(Math.min(before, text.length));
      const entry: Shown = {
        id: this.nextId++,
        uri,
        line: position.line,
        character: position.character,
        text: visible,
        origin: continued ?? { shown: visible.length, accepted: 0, settled: false },
      };
      item.command = { title: "tricode: accepted", command: INLINE_ACCEPTED, arguments: [entry.id, info] };
      first ??= entry;
      this.byId.set(entry.id, entry);
    }
    while (this.byId.size > 64) {
      this.byId.delete(this.byId.keys().next().value as number);
    }
    if (first !== undefined) {
      this.pending.set(uri, first);
      if (continued === undefined) {
        this.counters.shown++;
      }
    }
  }

  /** VS Code ran the command of an item after inserting (the rest of) it. */
  accepted(id: number, info: Record<string, unknown>): void {
    const entry = this.byId.get(id);
    if (entry !== undefined) {
      this.byId.delete(id);
      if (this.pending.get(entry.uri)?.origin === entry.origin) {
        this.pending.delete(entry.uri);
      }
      if (entry.origin.settled) {
        return;
      }
      entry.origin.settled = true;
      // the whole suggestion as first shown was accepted, whether in one go or word by word then Tab
      info = { ...info, shown: entry.origin.shown, accepted: entry.origin.shown };
    }
    this.counters.accepted++;
    this.sink.accepted(info);
  }

  /** Accept-word / accept-line inserted `chars` characters of the suggestion in `document`. */
  partiallyAccepted(document: vscode.TextDocument, chars: number): void {
    const entry = this.pending.get(document.uri.toString());
    if (entry === undefined || entry.origin.settled || chars <= 0) {
      return;
    }
    const origin = entry.origin;
    origin.accepted = Math.min(origin.shown, origin.accepted + chars);
    if (origin.accepted >= origin.shown) {
      // accepted to the end word by word: VS Code runs no command for that
      this.pending.delete(entry.uri);
      origin.settled = true;
      this.counters.accepted++;
      this.sink.accepted({ uri: entry.uri, shown: origin.shown, accepted: origin.shown });
    }
  }

  /** Escape while the suggestion was visible. */
  dismissed(document: vscode.TextDocument): void {
    const uri = document.uri.toString();
    const entry = this.pending.get(uri);
    if (entry !== undefined) {
      this.pending.delete(uri);
      this.settle(entry, "dismissed");
    }
  }

  forget(document: vscode.TextDocument): void {
    const uri = document.uri.toString();
    this.pending.delete(uri);
    this.continuing.delete(uri);
  }

  private settle(entry: Shown, why: string): void {
    const origin = entry.origin;
    if (origin.settled) {
      return;
    }
    origin.settled = true;
    if (origin.accepted > 0) {
      this.counters.partial++;
      this.log(`suggestion partially accepted (${origin.accepted}/${origin.shown}), then ${why}`);
      this.sink.partial(entry.uri, origin.shown, origin.accepted);
    } else {
      this.counters.rejected++;
      this.log(`suggestion ${why}: ${JSON.stringify(entry.text.slice(0, 60))}`);
      this.sink.rejected(entry.uri, origin.shown);
    }
  }
}
