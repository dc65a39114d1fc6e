// The status bar item: daemon state and inline mode, from `tricode/status` (polled; every second
// while the model loads).
import * as vscode from "vscode";

export interface TricodeStatus {
  state?: string;
  model?: string;
  device?: string;
  mode?: string;
  daemon?: Record<string, unknown>;
  connection?: { state?: string; pid?: number; restarts?: number; error?: string; socket?: string };
  lsp?: {
    version?: string;
    settings?: Record<string, unknown>;
    completions?: Record<string, unknown> & { last?: Record<string, unknown> };
  };
}

export type Phase = "idle" | "starting" | "running" | "stopped" | "not-found" | "failed";

export function describe(status: TricodeStatus): string[] {
  const lines: string[] = [];
  const daemon = status.daemon ?? {};
  lines.push(`state: ${status.state ?? "?"}`);
  if (status.model) {
    lines.push(`model: ${status.model}`);
  }
  if (status.device) {
    lines.push(`device: ${status.device}` + (daemon["dtype"] ? ` ${daemon["dtype"]}` : ""));
  }
  if (status.state !== "ready" && daemon["stage"]) {
    lines.push(`stage: ${daemon["stage"]}`);
  }
  const modes = (daemon["modes"] ?? {}) as Record<string, unknown>;
  lines.push(`inline mode: ${status.mode ?? "?"}` + (modes["refactor"] ? `, refactor mode: ${modes["refactor"]}` : ""));
  const fb = daemon["feedback"] as Record<string, unknown> | undefined;
  if (fb && typeof fb === "object") {
    const parts = ["accepted", "partial", "rejected"]
      .filter((k) => typeof fb[k] === "number")
      .map((k) => `${fb[k]} ${k}`);
    const rate = daemon["acceptance_rate"];
    if (parts.length) {
      lines.push(`feedback: ${parts.join(", ")}` + (typeof rate === "number" ? ` (acceptance ${Math.round(rate * 100)}%)` : ""));
    }
  }
  const c = status.lsp?.completions;
  if (c) {
    const parts = ["requests", "suggestions", "cache_hits", "gated", "errors"]
      .filter((k) => typeof c[k] === "number")
      .map((k) => `${c[k]} ${k.replace("_", " ")}`);
    if (parts.length) {
      lines.push(`completions: ${parts.join(", ")}`);
    }
    const last = c.last;
    if (last && typeof last === "object") {
      const ms = last["total_ms"] ?? last["latency_ms"];
      const tpf = last["tokens_per_forward"];
      const bits: string[] = [];
      if (typeof ms === "number") {
        bits.push(`${Math.round(ms)} ms`);
      }
      if (typeof tpf === "number") {
        bits.push(`${tpf.toFixed(2)} tokens/forward`);
      }
      if (bits.length) {
        lines.push(`last completion: ${bits.join(", ")}`);
      }
    }
  }
  const conn = status.connection;
  if (conn?.error) {
    lines.push(`connection: ${conn.state ?? ""} ${conn.error}`.trim());
  }
  if (conn?.socket) {
    lines.push(`socket: ${conn.socket}`);
  }
  return lines;
}

export class StatusItem implements vscode.Disposable {
  readonly item: vscode.StatusBarItem;
  last: TricodeStatus | undefined;
  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  constructor(
    private readonly fetch: () => Promise<TricodeStatus | undefined>,
    private readonly phase: () => Phase,
    private readonly enabled: () => boolean,
    private readonly pollSeconds: () => number,
  ) {
    this.item = vscode.window.createStatusBarItem("tricode.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "tricode";
    this.item.command = "tricode.status";
    this.render(undefined);
    this.item.show();
  }

  start(): void {
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  /** Poll now (after a restart, a toggle, an accepted suggestion). */
  refresh(): void {
    this.schedule(0);
  }

  private async tick(): Promise<void> {
    if (this.busy) {
      return;
    }
    this.busy = true;
    let status: TricodeStatus | undefined;
    try {
      status = this.phase() === "running" ? await this.fetch() : undefined;
    } catch {
      status = undefined;
    } finally {
      this.busy = false;
    }
    this.last = status;
    this.render(status);
    const settled = status?.state === "ready" || status?.state === "failed";
    this.schedule(settled ? Math.max(1, this.pollSeconds()) * 1000 : 1000);
  }

  render(status: TricodeStatus | undefined): void {
    const phase = this.phase();
    let text: string;
    let tooltip: string;
    let error = false;
    if (phase === "not-found") {
      text = "$(error) tricode: not found";
      tooltip = "The tricode executable was not found: set tricode.path";
      error = true;
    } else if (phase === "failed") {
      text = "$(error) tricode: server failed";
      tooltip = "tricode lsp could not be started; see the tricode output channel";
      error = true;
    } else if (phase === "idle") {
      text = "$(circle-outline) tricode: idle";
      tooltip = "tricode lsp starts with the first file of a language in tricode.languages";
    } else if (phase === "stopped") {
      text = "$(circle-slash) tricode: stopped";
      tooltip = "The tricode language server is not running";
    } else if (phase === "starting" || status === undefined) {
      text = "$(sync~spin) tricode: starting";
      tooltip = "Starting tricode lsp";
    } else {
      const state = status.state ?? "unknown";
      const mode = status.mode ?? "";
      if (state === "ready") {
        text = this.enabled() ? `$(check) tricode: ready · ${mode}` : `$(circle-slash) tricode: off · ${mode}`;
      } else if (state === "loading" || state === "connecting" || state === "starting") {
        const progress = status.daemon?.["progress"];
        const pct = typeof progress === "number" && progress > 0 ? ` ${Math.round(progress * 100)}%` : "";
        text = `$(sync~spin) tricode: ${state}${pct}`;
      } else {
        text = `$(error) tricode: ${state}`;
        error = true;
      }
      tooltip = describe(status).join("\n") + "\n\nClick for details";
    }
    this.item.text = text;
    this.item.tooltip = tooltip;
    this.item.backgroundColor = error ? new vscode.ThemeColor("statusBarItem.errorBackground") : undefined;
  }

  dispose(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
    }
    this.item.dispose();
  }
}
