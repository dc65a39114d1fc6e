// tricode for VS Code: a thin client over `tricode lsp`.
//
// The server does the work (inline completion, refactors, the daemon). This extension starts it for
// the configured languages, registers the LSP 3.18 inline completion feature of vscode-languageclient
// (a proposed feature in 9.x), passes the `tricode.*` settings, reports accept/reject feedback, and
// shows the daemon's state in the status bar, and previews next-edit suggestions (nextEdit.ts).
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  InlineCompletionItem,
  InlineCompletionList,
  InlineCompletionRequest,
  LanguageClient,
  LanguageClientOptions,
  Middleware,
  ServerOptions,
  State,
  TransportKind,
} from "vscode-languageclient/node";

import { findTricode } from "./executable";
import { FeedbackTracker, INLINE_ACCEPTED } from "./feedback";
import { askInstruction, REFACTOR_COMMAND, REFACTORS, report, runRefactor } from "./refactor";
import { INLINE_ACCEPTED_COMMAND, NextEdits } from "./nextEdit";
import { CursorIdle } from "./prefetch";
import { documentSelector, SECTION, SettingsSync } from "./settings";
import { describe, Phase, StatusItem, TricodeStatus } from "./status";

const ACCEPT_COMMAND = "tricode.accepted";

let client: LanguageClient | undefined;
let phase: Phase = "idle";
let output: vscode.OutputChannel;
let status: StatusItem;
let tracker: FeedbackTracker;
let nextEdits: NextEdits | undefined;
const settings = new SettingsSync();
let restarting: Promise<void> = Promise.resolve();

function log(message: string): void {
  output.appendLine(`[${new Date().toISOString().slice(11, 23)}] ${message}`);
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function debug(): boolean {
  return config().get<string>("logLevel") === "debug";
}

// -- the language client ----------------------------------------------------------------------------------

function middleware(): Middleware {
  return {
    provideInlineCompletionItems: async (document, position, context, token) => {
      // a next edit that only inserts at the cursor is offered as ghost text (nextEdit.ts)
      const additive = nextEdits?.inlineItems(document, position);
      if (additive !== undefined) {
        return additive;
      }
      tracker.beforeRequest(document, position);
      const result = await requestInline(document, position, context, token);
      const items = result ? (Array.isArray(result) ? result : result.items) : [];
      if (debug()) {
        const how = context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? "invoked" : "automatic";
        log(`inline ${how} at ${position.line}:${position.character}: ${items.length} item(s)` +
            (token.isCancellationRequested ? " (cancelled)" : ""));
      }
      if (items.length && !token.isCancellationRequested) {
        tracker.shown(document, position, items);
      }
      return result;
    },
    executeCommand: async (command, args, next) => {
      // code actions run `tricode.refactor` through here: ask for the instruction of a rewrite
      if (command === REFACTOR_COMMAND) {
        const a = args[0] && typeof args[0] === "object" ? { ...(args[0] as Record<string, unknown>) } : {};
        if (a.action === "rewrite" && !a.instruction && typeof args[1] !== "string") {
          const instruction = await askInstruction();
          if (instruction === undefined) {
            return undefined;
          }
          a.instruction = instruction;
        }
        try {
          const result = await next(command, [a]);
          report(result, undefined, log);
          return result;
        } catch (e) {
          report(undefined, e, log);
          return undefined;
        }
      }
      return next(command, args);
    },
    workspace: {
      // the server pulls the `tricode` section: answer with the server keys the user set
      configuration: async (params, token, next) => {
        const result = await next(params, token);
        if (!Array.isArray(result)) {
          return result;
        }
        return params.items.map((item, i) => (item.section === SECTION ? settings.explicit() : result[i]));
      },
    },
  };
}

// LSP 3.18 InlineCompletionTriggerKind. vscode-languageclient 9 speaks the 3.17 proposal of inline
// completion, where these were 0 and 1; tricode lsp (lsprotocol, LSP 3.18) rejects a 0.
const LSP_TRIGGER_INVOKED = 1;
const LSP_TRIGGER_AUTOMATIC = 2;

/**
 * textDocument/inlineCompletion, sent through the client. vscode-languageclient 9.0.1 would send VS
 * Code's trigger kind as it is (Invoke=0, Automatic=1: the 3.17 proposal's numbers, where LSP 3.18 has
 * Invoked=1, Automatic=2) and `selectedCompletionInfo.range` as a vscode.Range (which serializes as an
 * array): the server would take every automatic request for an invoked one and reject invoked requests
 * ("Trigger Inline Suggestion") and requests made while the completion widget is open. So the
 * middleware builds the LSP 3.18 params itself and converts the answer with the client's converter.
 */
async function requestInline(
  document: vscode.TextDocument,
  position: vscode.Position,
  context: vscode.InlineCompletionContext,
  token: vscode.CancellationToken,
): Promise<vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined> {
  const c = client;
  if (c === undefined || !c.isRunning()) {
    return null;
  }
  const c2p = c.code2ProtocolConverter;
  const selected = context.selectedCompletionInfo;
  const params = {
    textDocument: c2p.asTextDocumentIdentifier(document),
    position: c2p.asPosition(position),
    context: {
      triggerKind:
        context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke ? LSP_TRIGGER_INVOKED : LSP_TRIGGER_AUTOMATIC,
      selectedCompletionInfo: selected ? { range: c2p.asRange(selected.range), text: selected.text } : undefined,
    },
  };
  try {
    const result = await c.sendRequest<InlineCompletionList | InlineCompletionItem[] | null>(
      InlineCompletionRequest.method,
      params,
      token,
    );
    if (token.isCancellationRequested) {
      return null;
    }
    return await c.protocol2CodeConverter.asInlineCompletionResult(result, token);
  } catch (error) {
    return c.handleFailedRequest(InlineCompletionRequest.type, token, error, null);
  }
}

function createClient(exe: string): LanguageClient {
  const level = config().get<string>("logLevel") ?? "info";
  const extra = (config().get<unknown[]>("serverArgs") ?? []).filter((a): a is string => typeof a === "string");
  const serverOptions: ServerOptions = {
    command: exe,
    args: ["lsp", "--log-level", level, ...extra],
    transport: TransportKind.stdio,
    options: { env: { ...process.env } },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: documentSelector(),
    outputChannel: output,
    initializationOptions: settings.initial(),
    middleware: middleware(),
    markdown: { isTrusted: false },
  };
  const c = new LanguageClient("tricode", "tricode", serverOptions, clientOptions);
  // textDocument/inlineCompletion (LSP 3.18) is a proposed feature in vscode-languageclient 9
  c.registerProposedFeatures();
  c.onDidChangeState((e) => {
    if (e.newState === State.Running) {
      phase = "running";
    } else if (e.newState === State.Starting) {
      phase = "starting";
    } else if (phase !== "failed") {
      phase = "stopped";
    }
    status.refresh();
  });
  return c;
}

// When tricode is not found, look again a few times: settings can arrive after activation (remote
// windows, settings sync), and the user may be installing tricode right now.
const RETRY_MS = [1000, 2000, 4000, 8000, 15000, 30000];
let retryTimer: NodeJS.Timeout | undefined;
let retries = 0;

function cancelRetry(): void {
  if (retryTimer !== undefined) {
    clearTimeout(retryTimer);
    retryTimer = undefined;
  }
}

async function startClient(): Promise<void> {
  cancelRetry();
  const found = findTricode();
  if (found.path === undefined) {
    phase = "not-found";
    status.refresh();
    const configured = config().get<string>("path");
    const msg = configured
      ? `tricode: tricode.path ${found.tried[0]} is not an executable file.`
      : "tricode: the tricode executable was not found on PATH. Install tricode or set tricode.path.";
    if (retries === 0) {
      log(msg + (found.tried.length ? ` Tried: ${found.tried.join(", ")}` : ""));
    }
    if (retries === 2) {
      // still missing after a few seconds: tell the user (once)
      void vscode.window.showErrorMessage(msg, "Open Settings").then((choice) => {
        if (choice) {
          void vscode.commands.executeCommand("workbench.action.openSettings", "tricode.path");
        }
      });
    }
    if (retries < RETRY_MS.length) {
      retryTimer = setTimeout(() => void restart(), RETRY_MS[retries++]);
    }
    return;
  }
  if (retries > 0) {
    log(`found ${found.path} after ${retries} retries`);
  }
  retries = 0;
  log(`starting ${found.path} lsp for ${documentSelector().map((s) => `${s.scheme}:${s.language}`).join(", ")}`);
  const c = createClient(found.path);
  client = c;
  phase = "starting";
  status.refresh();
  try {
    await c.start();
    phase = "running";
    log("tricode lsp is running");
  } catch (e) {
    phase = "failed";
    const message = e instanceof Error ? e.message : String(e);
    log(`tricode lsp failed to start: ${message}`);
    void vscode.window.showErrorMessage(`tricode: the language server failed to start: ${message}`, "Show Log").then(
      (choice) => choice && output.show(),
    );
  }
  status.refresh();
}

async function stopClient(): Promise<void> {
  cancelRetry();
  const c = client;
  client = undefined;
  if (c !== undefined) {
    try {
      await c.stop(5000);
    } catch (e) {
      log(`stopping the language server: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  phase = "stopped";
}

/** True when `doc` (or, without one, any open document) is one the server is started for. */
function wanted(doc?: vscode.TextDocument): boolean {
  const selector = documentSelector();
  return (doc ? [doc] : vscode.workspace.textDocuments).some((d) => vscode.languages.match(selector, d) > 0);
}

/** (Re)starts the server when a document of a configured language is open; otherwise it waits (idle). */
function restart(): Promise<void> {
  restarting = restarting.then(async () => {
    await stopClient();
    if (wanted()) {
      await startClient();
    } else {
      phase = "idle";
      status.refresh();
    }
  });
  return restarting;
}

/** The first document of a configured language starts the server (and so the daemon). */
function startIfWanted(doc: vscode.TextDocument): void {
  if (client === undefined && retryTimer === undefined && (phase === "idle" || phase === "stopped") && wanted(doc)) {
    void restart();
  }
}

async function fetchStatus(): Promise<TricodeStatus | undefined> {
  const c = client;
  if (c === undefined || !c.isRunning()) {
    return undefined;
  }
  const timeout = new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 5000));
  return Promise.race([c.sendRequest<TricodeStatus>("tricode/status", {}), timeout]);
}

// -- feedback ---------------------------------------------------------------------------------------------

function sendFeedback(method: string, params: Record<string, unknown>): void {
  const c = client;
  if (c !== undefined && c.isRunning()) {
    c.sendNotification(method, params).catch((e) => log(`${method}: ${e}`));
  }
}

function makeTracker(): FeedbackTracker {
  return new FeedbackTracker(
    {
      accepted: (info) => {
        const c = client;
        if (c !== undefined && c.isRunning()) {
          // the server's own command on the item: it records the accept with the item's statistics
          c.sendRequest(ExecuteCommandRequest.type, { command: ACCEPT_COMMAND, arguments: [info] }).then(
            () => status.refresh(),
            (e) => log(`${ACCEPT_COMMAND}: ${e}`),
          );
        }
        log(`suggestion accepted (${info["shown"] ?? "?"} characters, ${info["mode"] ?? ""})`);
      },
      partial: (uri, shown, accepted) => sendFeedback("tricode/partiallyAccepted", { uri, shown, accepted }),
      rejected: (uri, shown) => sendFeedback("tricode/rejected", { uri, shown }),
    },
    (m) => debug() && log(m),
  );
}

/** Runs VS Code's accept-word/line and reports how much of our suggestion it inserted. */
async function acceptPart(command: string): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  const before = editor?.document.getText().length ?? 0;
  const version = editor?.document.version;
  await vscode.commands.executeCommand(command);
  if (editor !== undefined && editor.document.version !== version) {
    tracker.partiallyAccepted(editor.document, editor.document.getText().length - before);
  }
}

// -- commands ---------------------------------------------------------------------------------------------

async function showStatus(): Promise<void> {
  const st = await fetchStatus().catch(() => undefined);
  const lines: string[] = [];
  if (phase !== "running" || st === undefined) {
    lines.push(`language server: ${phase}`);
  } else {
    lines.push(...describe(st));
  }
  const c = tracker.counters;
  lines.push(`this window: ${c.shown} shown, ${c.accepted} accepted, ${c.partial} partial, ${c.rejected} rejected`);
  log("status:\n  " + lines.join("\n  ") + (st ? "\n" + JSON.stringify(st, null, 2) : ""));
  const actions = ["Show Log", "Restart", config().get<boolean>("enabled", true) ? "Disable" : "Enable"];
  const head = st ? `tricode: ${st.state ?? "?"} · ${st.mode ?? ""}` : `tricode: ${phase}`;
  const choice = await vscode.window.showInformationMessage(`${head} — ${lines.slice(1).join("; ")}`, ...actions);
  if (choice === "Show Log") {
    output.show(true);
  } else if (choice === "Restart") {
    retries = 0;
    await restart();
  } else if (choice === "Disable" || choice === "Enable") {
    await toggle();
  }
}

async function toggle(): Promise<void> {
  const enabled = config().get<boolean>("enabled", true);
  await config().update("enabled", !enabled, vscode.ConfigurationTarget.Global);
  void vscode.window.setStatusBarMessage(`tricode: inline completion ${enabled ? "off" : "on"}`, 3000);
}

// -- activation -------------------------------------------------------------------------------------------

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("tricode");
  tracker = makeTracker();
  status = new StatusItem(
    fetchStatus,
    () => phase,
    () => config().get<boolean>("enabled", true),
    () => config().get<number>("statusPollSeconds", 5),
  );
  context.subscriptions.push(output, status);
  context.subscriptions.push(
    new CursorIdle(
      sendFeedback,
      () => (config().get<boolean>("enabled", true) ? config().get<number>("prefetchIdleMs", 300) : 0),
      (doc) => wanted(doc),
    ),
  );

  const ne = new NextEdits(() => client, (doc) => wanted(doc), log);
  nextEdits = ne;
  context.subscriptions.push(
    ne,
    vscode.commands.registerCommand(INLINE_ACCEPTED_COMMAND, () => ne.inlineAccepted()),
    vscode.commands.registerCommand("tricode.nextEdit.accept", () => ne.jumpOrAccept()),
    vscode.commands.registerCommand("tricode.nextEdit.apply", () => ne.accept()),
    vscode.commands.registerCommand("tricode.nextEdit.jump", () => ne.jump()),
    vscode.commands.registerCommand("tricode.nextEdit.dismiss", () => ne.dismiss()),
    vscode.commands.registerCommand("tricode.nextEdit.trigger", () => {
      const editor = vscode.window.activeTextEditor;
      return editor ? ne.request(editor) : undefined;
    }),
    vscode.commands.registerCommand("tricode.nextEdit.current", () => ne.current()),
  );

  for (const r of REFACTORS) {
    context.subscriptions.push(
      vscode.commands.registerCommand(r.command, () => restarting.then(() => runRefactor(client, r.action, log))),
    );
  }
  context.subscriptions.push(
    vscode.commands.registerCommand("tricode.status", showStatus),
    vscode.commands.registerCommand("tricode.toggle", toggle),
    vscode.commands.registerCommand("tricode.restart", () => {
      retries = 0;
      return restart();
    }),
    vscode.commands.registerCommand("tricode.showLog", () => output.show(true)),
    vscode.commands.registerCommand(INLINE_ACCEPTED, (id: number, info: Record<string, unknown>) =>
      tracker.accepted(id, info ?? {}),
    ),
    vscode.commands.registerCommand("tricode.dismissSuggestion", async () => {
      const editor = vscode.window.activeTextEditor;
      await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
      if (nextEdits?.dismissInline()) {
        return; // it was the additive next edit, not a completion
      }
      if (editor !== undefined) {
        tracker.dismissed(editor.document);
      }
    }),
    vscode.commands.registerCommand("tricode.acceptNextWord", () => acceptPart("editor.action.inlineSuggest.acceptNextWord")),
    vscode.commands.registerCommand("tricode.acceptNextLine", () => acceptPart("editor.action.inlineSuggest.acceptNextLine")),
    vscode.workspace.onDidOpenTextDocument(startIfWanted),
    vscode.workspace.onDidCloseTextDocument((doc) => tracker.forget(doc)),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) {
        return;
      }
      if (SettingsSync.affectsRestart(e)) {
        log("settings changed: restarting the language server");
        retries = 0;
        await restart();
        return;
      }
      if (SettingsSync.affectsServer(e) && client !== undefined && client.isRunning()) {
        const values = settings.changed();
        log(`settings: ${JSON.stringify(values)}`);
        await client.sendNotification(DidChangeConfigurationNotification.type, { settings: { [SECTION]: values } });
      }
      status.refresh();
    }),
  );

  status.start();
  await restart();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}
