// Refactor commands: `workspace/executeCommand` `tricode.refactor` {action, uri, range, instruction?}.
// The server reports cancellable $/progress while generating and applies the result itself with
// workspace/applyEdit; it answers {applied, failure_reason, ...} or an error.
import * as vscode from "vscode";
import { ExecuteCommandRequest, LanguageClient, ResponseError } from "vscode-languageclient/node";

import { documentSelector } from "./settings";

export const REFACTOR_COMMAND = "tricode.refactor";
const REQUEST_CANCELLED = -32800;

export type RefactorAction = "docstring" | "type_hints" | "rewrite" | "complete_body";

export const REFACTORS: { command: string; action: RefactorAction; title: string }[] = [
  { command: "tricode.addDocstring", action: "docstring", title: "Add docstring" },
  { command: "tricode.addTypeHints", action: "type_hints", title: "Add type hints" },
  { command: "tricode.rewriteSelection", action: "rewrite", title: "Rewrite selection as instructed" },
  { command: "tricode.completeBody", action: "complete_body", title: "Complete function body" },
];

export async function askInstruction(): Promise<string | undefined> {
  const value = await vscode.window.showInputBox({
    title: "tricode: Rewrite selection as instructed",
    prompt: "How should the selection (or the enclosing function) be rewritten?",
    placeHolder: "e.g. use a list comprehension",
    ignoreFocusOut: true,
  });
  const trimmed = value?.trim();
  return trimmed ? trimmed : undefined;
}

export interface RefactorResult {
  applied?: boolean;
  failure_reason?: string | null;
  action?: string;
  mode?: string;
  tokens?: number;
  tokens_per_forward?: number;
  total_ms?: number;
}

/** Shows the outcome of a refactor (the answer or the error) and logs it. */
export function report(result: unknown, error: unknown, log: (msg: string) => void): void {
  if (error !== undefined) {
    if (error instanceof ResponseError && error.code === REQUEST_CANCELLED) {
      log("refactor cancelled");
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    log(`refactor failed: ${message}`);
    void vscode.window.showErrorMessage(message.startsWith("tricode") ? message : `tricode: ${message}`);
    return;
  }
  const r = (result ?? {}) as RefactorResult;
  log(`refactor ${r.action ?? ""}: ${JSON.stringify({ ...r, text: undefined })}`);
  if (r.applied === false) {
    void vscode.window.showWarningMessage(`tricode: the edit was not applied${r.failure_reason ? `: ${r.failure_reason}` : ""}`);
  }
}

export async function runRefactor(
  client: LanguageClient | undefined,
  action: RefactorAction,
  log: (msg: string) => void,
): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (editor === undefined) {
    void vscode.window.showInformationMessage("tricode: open a file first");
    return;
  }
  const doc = editor.document;
  if (vscode.languages.match(documentSelector(), doc) === 0) {
    void vscode.window.showWarningMessage(
      `tricode: not started for ${doc.languageId} files; add "${doc.languageId}" to the tricode.languages setting`,
    );
    return;
  }
  if (client === undefined || !client.isRunning()) {
    void vscode.window.showErrorMessage("tricode: the language server is not running (tricode: Show status)");
    return;
  }
  let instruction: string | undefined;
  if (action === "rewrite") {
    instruction = await askInstruction();
    if (instruction === undefined) {
      return;
    }
  }
  const args: Record<string, unknown> = {
    action,
    uri: client.code2ProtocolConverter.asUri(doc.uri),
    range: client.code2ProtocolConverter.asRange(editor.selection),
  };
  if (instruction !== undefined) {
    args.instruction = instruction;
  }
  log(`refactor ${action} at ${JSON.stringify(args.range)}`);
  try {
    const result = await client.sendRequest(ExecuteCommandRequest.type, { command: REFACTOR_COMMAND, arguments: [args] });
    report(result, undefined, log);
  } catch (e) {
    report(undefined, e, log);
  }
}
