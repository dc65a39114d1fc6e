// Drives code-server (VS Code in the browser) in headless Chromium with playwright-core, as a person:
// open the workspace, open the Python file, wait for the tricode status bar item to say "ready",
// put the cursor at the end of a line, press Enter, type, wait for the ghost text, take a screenshot,
// accept it with Tab, save with Ctrl+S, and wait for the saved file on disk to change.
//
// Usage: node drive.cjs CONFIG.json     (written by tests/test_vscode.py)
// CONFIG: {url, folder, file, anchor, typed, out_dir, playwright_core, chromium, ready_timeout_s,
//          ghost_timeout_s}
// Prints one JSON line on stdout: {ok, ghost, status_text, saved, timings, error?}.
"use strict";

const fs = require("fs");
const path = require("path");

const { sleep, runCommand, triggerInline, statusText, notifications, launch, openFile, waitReady, ghostText, savedText } =
  require("./workbench.cjs");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));

const t0 = Date.now();
const timings = {};
function mark(name) {
  timings[name] = (Date.now() - t0) / 1000;
  log(`${name} at ${timings[name].toFixed(1)} s`);
}
function log(msg) {
  process.stderr.write(`[drive ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
}


/** Runs a refactor command from the Command Palette with the cursor on `refactor.anchor`, waits for
 * the edit (or a tricode notification), saves, and records the saved file. */
async function refactor(page, r, result) {
  const file = path.join(cfg.folder, cfg.file);
  const before = fs.readFileSync(file, "utf8");
  const line = page.locator(".monaco-editor .view-line", { hasText: r.anchor }).first();
  await line.click();
  await page.keyboard.press("End");
  await page.keyboard.press("Escape"); // hide a suggestion that the click may have triggered
  await runCommand(page, r.command_title);
  mark("refactor_started");
  const deadline = Date.now() + r.timeout_s * 1000;
  const rr = { notifications: [] };
  for (;;) {
    const dirty = await page.locator(".tab.dirty", { hasText: cfg.file }).count();
    if (dirty > 0) {
      rr.applied = true;
      break;
    }
    const notes = (await notifications(page)).filter((n) => /tricode/i.test(n) && !/tricode: (Add|Rewrite|Complete)/.test(n));
    if (notes.length) {
      rr.notifications = notes;
      rr.applied = false;
      break;
    }
    if (Date.now() > deadline) throw new Error(`the refactor "${r.command_title}" did not finish in ${r.timeout_s} s`);
    await sleep(250);
  }
  mark("refactor_done");
  await page.screenshot({ path: path.join(cfg.out_dir, "vscode_refactor.png") });
  if (rr.applied) {
    await page.keyboard.press("Control+S");
    rr.saved = await savedText(file, before, "the refactored file was not saved");
  }
  result.refactor = rr;
}

/** "tricode: Show status" (a notification with the state), then "tricode: Toggle inline completion"
 * (the setting changes, the status bar says "off", the server hears didChangeConfiguration). */
async function commands(page, result) {
  await runCommand(page, "tricode: Show status");
  const deadline = Date.now() + 20_000;
  for (;;) {
    const notes = (await notifications(page)).filter((n) => /^tricode: /.test(n));
    if (notes.length) {
      result.status_notification = notes[notes.length - 1];
      break;
    }
    if (Date.now() > deadline) throw new Error("tricode: Show status showed no notification");
    await sleep(200);
  }
  mark("status_shown");
  await runCommand(page, "tricode: Toggle inline completion");
  const offDeadline = Date.now() + 20_000;
  for (;;) {
    const st = await statusText(page);
    if (/tricode: off/.test(st)) {
      result.status_off = st;
      break;
    }
    if (Date.now() > offDeadline) throw new Error(`the status bar did not say "tricode: off" (${st})`);
    await sleep(200);
  }
  mark("toggled");
  await page.screenshot({ path: path.join(cfg.out_dir, "vscode_status.png") });
}

async function main() {
  const { context, page, profile } = await launch(cfg);
  const consoleErrors = [];
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text().slice(0, 300));
  });
  const result = { ok: false, ghost: "", status_text: "", saved: "", timings, console_errors: consoleErrors };
  try {
    await page.goto(`${cfg.url}/?folder=${encodeURIComponent(cfg.folder)}`, { waitUntil: "domcontentloaded" });
    await page.locator(".monaco-workbench").waitFor({ timeout: 120_000 });
    mark("workbench");

    const line = await openFile(page, cfg.file, cfg.anchor, log);
    mark("editor");

    // the language server starts with the Python file; the daemon then loads the model
    const st = await waitReady(page, cfg.ready_timeout_s);
    result.status_text = st;
    mark("ready");

    // cursor at the end of the anchor line, a new line, then type
    await line.click();
    await page.keyboard.press("End");
    await page.keyboard.press("Enter");
    if (cfg.typed) await page.keyboard.type(cfg.typed, { delay: 60 });
    mark("typed");

    // the ghost text: the suggestion is requested on typing; ask again now and then
    const ghostDeadline = Date.now() + cfg.ghost_timeout_s * 1000;
    let ghost = "";
    let lastTrigger = Date.now();
    for (;;) {
      ghost = await ghostText(page);
      if (ghost.trim() !== "") {
        await sleep(400); // let it settle (a newer suggestion may replace the first)
        const again = await ghostText(page);
        if (again === ghost) break;
        continue;
      }
      if (Date.now() > ghostDeadline) {
        throw new Error("no ghost text appeared");
      }
      if (Date.now() - lastTrigger > 15_000) {
        log("no ghost text yet: Trigger Inline Suggestion");
        await triggerInline(page);
        lastTrigger = Date.now();
      }
      await sleep(250);
    }
    result.ghost = ghost;
    mark("ghost");
    log(`ghost text: ${JSON.stringify(ghost)}`);
    await page.screenshot({ path: path.join(cfg.out_dir, "vscode_ghost_text.png") });

    if (cfg.dismiss_first) {
      // Escape dismisses it (reported as rejected); "Trigger Inline Suggestion" asks again (an invoked
      // request, a cache hit in the server), then Tab below
      await page.keyboard.press("Escape");
      const hideDeadline = Date.now() + 10_000;
      while ((await ghostText(page)) !== "") {
        if (Date.now() > hideDeadline) throw new Error("Escape did not hide the ghost text");
        await sleep(100);
      }
      mark("dismissed");
      await triggerInline(page);
      const againDeadline = Date.now() + 60_000;
      let again = "";
      while ((again = await ghostText(page)) === "") {
        if (Date.now() > againDeadline) throw new Error("Trigger Inline Suggestion did not bring the ghost text back");
        await sleep(100);
      }
      result.ghost_again = again;
      mark("shown_again");
    }
    if (cfg.accept_word_first) {
      // Ctrl+Right accepts the next word (reported as a partial accept); Tab below takes the rest
      const full = await ghostText(page);
      await page.keyboard.press("Control+ArrowRight");
      const wordDeadline = Date.now() + 10_000;
      let rest = full;
      while ((rest = await ghostText(page)) === full) {
        if (Date.now() > wordDeadline) throw new Error("Ctrl+Right did not accept a word of the suggestion");
        await sleep(100);
      }
      result.ghost_rest = rest;
      mark("word_accepted");
    }
    const accepted_by_words = cfg.accept_word_first && result.ghost_rest === "";

    // accept with Tab, save with Ctrl+S, and wait for the file on disk
    const file = path.join(cfg.folder, cfg.file);
    const before = fs.readFileSync(file, "utf8");
    if (!accepted_by_words) {
      await page.keyboard.press("Tab");
      await sleep(300);
    }
    await page.keyboard.press("Control+S");
    result.saved = await savedText(file, before, "the file on disk did not change after Tab and Ctrl+S");
    mark("saved");
    await sleep(1500); // the accept command reaches the server; the status bar polls again
    result.status_after = await statusText(page);
    await page.screenshot({ path: path.join(cfg.out_dir, "vscode_after_accept.png") });
    if (cfg.refactor) {
      await refactor(page, cfg.refactor, result);
    }
    if (cfg.check_commands) {
      await commands(page, result);
    }
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
    try {
      result.status_text = result.status_text || (await statusText(page));
      result.notifications = await notifications(page);
      await page.screenshot({ path: path.join(cfg.out_dir, "vscode_failure.png") });
    } catch (e2) {
      log(`collecting failure details: ${e2}`);
    }
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(profile, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(result.ok ? 0 : 1);
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e), timings }) + "\n");
  process.exit(1);
});
