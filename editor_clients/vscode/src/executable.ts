// Finding the `tricode` executable: the `tricode.path` setting, else PATH, else the usual places.
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as vscode from "vscode";

export interface Found {
  path?: string;
  tried: string[];
}

function isExecutable(file: string): boolean {
  try {
    const st = fs.statSync(file);
    if (!st.isFile()) {
      return false;
    }
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function expand(value: string): string {
  let out = value.trim();
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  if (folder) {
    out = out.replace(/\$\{workspaceFolder\}/g, folder);
  }
  out = out.replace(/\$\{userHome\}/g, os.homedir());
  if (out === "~" || out.startsWith("~/")) {
    out = path.join(os.homedir(), out.slice(1));
  }
  return out;
}

export function findTricode(): Found {
  const names = process.platform === "win32" ? ["tricode.exe", "tricode.cmd", "tricode"] : ["tricode"];
  const configured = vscode.workspace.getConfiguration("tricode").get<string>("path") ?? "";
  if (configured.trim() !== "") {
    const file = expand(configured);
    // a configured path is used as it is (a missing one gives an error that names it)
    return { path: isExecutable(file) ? file : undefined, tried: [file] };
  }
  const tried: string[] = [];
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    if (!dir) {
      continue;
    }
    for (const name of names) {
      const file = path.join(dir, name);
      tried.push(file);
      if (isExecutable(file)) {
        return { path: file, tried };
      }
    }
  }
  const extra = [path.join(os.homedir(), ".local", "bin", "tricode")];
  for (const folder of vscode.workspace.workspaceFolders ?? []) {
    extra.push(path.join(folder.uri.fsPath, ".venv", "bin", "tricode"));
  }
  for (const file of extra) {
    tried.push(file);
    if (isExecutable(file)) {
      return { path: file, tried };
    }
  }
  return { tried };
}
