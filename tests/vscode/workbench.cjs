// What the code-server drivers share (drive.cjs: ghost text and refactors; drive_next_edit.cjs: next
// edits): the Command Palette, the tricode status bar item, notifications, starting Chromium on the
// workspace and opening a file from the explorer.
"use strict";

const fs = require("fs");
const path = require("path");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Text of the inline ghost text on the cursor line (and of the lines below it, if any). */
async function ghostText(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".monaco-editor.focused") || document.querySelector(".monaco-editor");
    if (!editor) return "";
    const inline = Array.from(editor.querySelectorAll(".ghost-text-decoration, .ghost-text-decoration-preview"))
      .map((e) => e.textContent || "")
      .join("");
    const below = Array.from(editor.querySelectorAll(".ghost-text .view-line"))
      .map((e) => e.textContent || "")
      .join("\n");
    const text = below ? `${inline}\n${below}` : inline;
    return text.replace(/\u00a0/g, " ");
  });
}

/** Runs a command from the Command Palette (F1) by its title. */
async function runCommand(page, title) {
  await page.keyboard.press("F1");
  await page.locator(".quick-input-widget input").waitFor({ timeout: 15_000 });
  await page.keyboard.type(title, { delay: 20 });
  await page.locator(".quick-input-list .monaco-list-row", { hasText: title }).first().waitFor({ timeout: 15_000 });
  await page.keyboard.press("Enter");
}

/** Asks for an inline suggestion now (editor.action.inlineSuggest.trigger, an "invoked" request; it
 * has no default key binding in VS Code 1.139). */
async function triggerInline(page) {
  await runCommand(page, "Trigger Inline Suggestion");
}

async function statusText(page) {
  const items = page.locator(".statusbar-item", { hasText: "tricode" });
  if ((await items.count()) === 0) return "";
  return ((await items.first().textContent()) || "").replace(/\u00a0/g, " ").trim();
}

async function notifications(page) {
  return page.evaluate(() =>
    Array.from(document.querySelectorAll(".notifications-toasts .notification-list-item-message, .notification-toast"))
      .map((e) => (e.textContent || "").trim())
      .filter(Boolean),
  );
}

/** Chromium on code-server's workbench with `folder` open; {context, page, profile}. */
async function launch(cfg) {
  const { chromium } = require(cfg.playwright_core);
  fs.mkdirSync(cfg.out_dir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(cfg.out_dir, "chromium-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: cfg.chromium,
    headless: true,
    viewport: { width: 1280, height: 720 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  return { context, page, profile };
}

/** Opens `file` from the explorer (Quick Open as the fallback); waits for a line holding `anchor`. */
async function openFile(page, file, anchor, log) {
  const row = page.locator(".explorer-folders-view .monaco-list-row", { hasText: file }).first();
  try {
    await row.waitFor({ timeout: 30_000 });
    await row.click();
  } catch (e) {
    log(`explorer: ${e.message.split("\n")[0]}; using Quick Open`);
    await page.keyboard.press("Control+P");
    await page.keyboard.type(file, { delay: 30 });
    await page.keyboard.press("Enter");
  }
  const line = page.locator(".monaco-editor .view-line", { hasText: anchor }).first();
  await line.waitFor({ timeout: 60_000 });
  return line;
}

/** Waits until the status bar item says "tricode: ready"; its text. */
async function waitReady(page, timeoutS) {
  const deadline = Date.now() + timeoutS * 1000;
  let st = "";
  for (;;) {
    st = await statusText(page);
    if (/tricode: ready/.test(st)) return st;
    if (Date.now() > deadline) {
      throw new Error(`the status bar never said "tricode: ready" (last: ${JSON.stringify(st)})`);
    }
    await sleep(500);
  }
}

/** The file's text once a save has changed it and the write is complete: two reads 200 ms apart that
 * agree and differ from `before` (a read in the middle of the editor's write can see an empty file). */
async function savedText(file, before, failure) {
  const deadline = Date.now() + 30_000;
  let last = null;
  for (;;) {
    const now = fs.readFileSync(file, "utf8");
    if (now !== before && now === last) return now;
    last = now;
    if (Date.now() > deadline) throw new Error(failure);
    await sleep(200);
  }
}

module.exports = { sleep, runCommand, triggerInline, statusText, notifications, launch, openFile, waitReady, ghostText,
  savedText };
