// The `tricode.*` settings: which of them go to the server, and how.
//
// The server keys are the same as in lsp/SETTINGS.md. Only the values that the user actually set (in
// user, workspace or folder settings) are sent, so that the `[lsp]` table of the daemon's config.toml
// keeps working for everything else. A key that was sent before and is no longer set is sent once more
// with its default value, so that removing a setting takes effect without a restart.
import * as vscode from "vscode";

export const SECTION = "tricode";

/** Keys that `tricode lsp` understands (lsp/settings.py). */
export const SERVER_KEYS = [
  "enabled",
  "inline_mode",
  "refactor_mode",
  "disabled_languages",
  "max_lines",
  "max_tokens",
  "refactor_max_tokens",
  "deadline_ms",
  "debounce_ms",
  "max_file_bytes",
  "respect_gitignore",
  "completion_fallback",
  "next_edit_prefetch",
] as const;

/** Keys of the extension itself; changing one of them restarts the server. */
export const RESTART_KEYS = ["path", "serverArgs", "languages", "logLevel"] as const;

export type ServerSettings = Record<string, unknown>;

function isSet<T>(info: { globalValue?: T; workspaceValue?: T; workspaceFolderValue?: T } | undefined): boolean {
  return (
    info !== undefined &&
    (info.globalValue !== undefined || info.workspaceValue !== undefined || info.workspaceFolderValue !== undefined)
  );
}

export class SettingsSync {
  private sent = new Set<string>();

  /** The server settings that the user set (what goes into initializationOptions). */
  explicit(scope?: vscode.ConfigurationScope): ServerSettings {
    const cfg = vscode.workspace.getConfiguration(SECTION, scope);
    const out: ServerSettings = {};
    for (const key of SERVER_KEYS) {
      if (isSet(cfg.inspect(key))) {
        out[key] = cfg.get(key);
      }
    }
    return out;
  }

  /** For initialize: remember what was sent. */
  initial(): ServerSettings {
    const values = this.explicit();
    this.sent = new Set(Object.keys(values));
    return values;
  }

  /** For didChangeConfiguration: the set values, plus defaults for keys that were set before and are not now. */
  changed(): ServerSettings {
    const cfg = vscode.workspace.getConfiguration(SECTION);
    const values = this.explicit();
    for (const key of this.sent) {
      if (!(key in values)) {
        values[key] = cfg.inspect(key)?.defaultValue;
      }
    }
    this.sent = new Set(Object.keys(values));
    return values;
  }

  /** True when the change concerns the server's own keys. */
  static affectsServer(e: vscode.ConfigurationChangeEvent): boolean {
    return SERVER_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
  }

  static affectsRestart(e: vscode.ConfigurationChangeEvent): boolean {
    return RESTART_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`));
  }
}

export function languages(): string[] {
  const value = vscode.workspace.getConfiguration(SECTION).get<unknown>("languages");
  if (Array.isArray(value)) {
    const langs = value.filter((v): v is string => typeof v === "string" && v.trim() !== "").map((v) => v.trim());
    if (langs.length > 0) {
      return langs;
    }
  }
  return ["python"];
}

export function documentSelector(): { scheme: string; language: string }[] {
  const out: { scheme: string; language: string }[] = [];
  for (const language of languages()) {
    out.push({ scheme: "file", language }, { scheme: "untitled", language });
  }
  return out;
}
