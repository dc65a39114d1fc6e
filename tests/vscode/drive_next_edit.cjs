// Drives next-edit suggestions in code-server (headless Chromium, playwright-core), as a person: opens
// the file, waits for "tricode: ready", turns `print name` into `print(name)` with real keys (End,
// Backspace, typing), waits for the preview of the same edit on the next line, types the second edit
// over it, waits for the preview on the third line (the removed text struck through, the new text as an
// `after` decoration, the hint at the cursor line), takes a screenshot, presses Tab (the cursor goes
// there) and Tab (the edit is applied), waits for the prefetched preview on the fourth line, presses
// Escape (it goes), saves with Ctrl+S. Then, in a second file, an edit that only inserts
// (`log.warn(` -> `log.warning(`): its preview on the next line is an `after` decoration; Tab takes the
// cursor there, where it becomes ghost text (the inline suggestion API); Tab inserts it; the prefetched
// preview of the line after it is dismissed with Escape; Ctrl+S.
//
// Usage: node drive_next_edit.cjs CONFIG.json   (written by tests/test_vscode_next_edit.py)
// CONFIG: {url, folder, file, out_dir, playwright_core, chromium, ready_timeout_s, edit_timeout_s}
// Prints one JSON line: {ok, steps: {...}, saved, timings, error?}.
"use strict";

const fs = require("fs");
const path = require("path");
const { sleep, launch, openFile, waitReady, statusText, ghostText, savedText } = require("./workbench.cjs");

const cfg = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const t0 = Date.now();
const timings = {};
function log(msg) {
  process.stderr.write(`[drive-ne ${((Date.now() - t0) / 1000).toFixed(1)}s] ${msg}\n`);
}
function mark(name) {
  timings[name] = (Date.now() - t0) / 1000;
  log(`${name} at ${timings[name].toFixed(1)} s`);
}

/** The decorations drawn in the editor: `after` contents (inserted text, hints) and the text of
 * struck-through spans (removed text), with the line each is on. */
async function preview(page) {
  return page.evaluate(() => {
    const editor = document.querySelector(".monaco-editor.focused") || document.querySelector(".monaco-editor");
    const out = { after: [], struck: [] };
    if (!editor) return out;
    for (const line of editor.querySelectorAll(".view-lines .view-line")) {
      const top = parseFloat(line.style.top || "0");
      const text = (line.textContent || "").replace(/\u00a0/g, " ");
      for (const span of line.querySelectorAll("span")) {
        const after = getComputedStyle(span, "::after").content;
        if (after && after !== "none" && after !== "normal" && after !== '""') {
          out.after.push({ text: after.replace(/^"|"$/g, "").replace(/\\"/g, '"'), line: text, top });
        }
        if (span.children.length === 0 && getComputedStyle(span).textDecorationLine.includes("line-through")) {
          out.struck.push({ text: (span.textContent || "").replace(/\u00a0/g, " "), line: text, top });
        }
      }
    }
    return out;
  });
}

/** Waits until `cond(preview)` holds; the preview. */
async function waitPreview(page, what, cond, timeoutS) {
  const deadline = Date.now() + timeoutS * 1000;
  for (;;) {
    const p = await preview(page);
    if (cond(p)) return p;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; drawn: ${JSON.stringify(p)}`);
    await sleep(150);
  }
}

const inserted = (p, text) => p.after.some((a) => a.text === text);
const struck = (p, text) => p.struck.some((s) => s.text === text);

/** "Ln 4, Col 10" of the status bar, as [line, column]. */
async function cursorPos(page) {
  const t = ((await page.locator(".statusbar-item", { hasText: /Ln \d+, Col \d+/ }).first().textContent()) || "");
  const m = /Ln (\d+), Col (\d+)/.exec(t);
  return m ? [Number(m[1]), Number(m[2])] : null;
}

/** On the line holding `anchor`: End, Backspace over `drop`, then type `typed`. */
async function retype(page, anchor, drop, typed) {
  await page.locator(".monaco-editor .view-line", { hasText: anchor }).first().click();
  await page.keyboard.press("End");
  for (let i = 0; i < drop.length; i++) await page.keyboard.press("Backspace", { delay: 40 });
  await page.keyboard.type(typed, { delay: 60 });
}

async function main() {
  const { context, page, profile } = await launch(cfg);
  const result = { ok: false, steps: {}, saved: "", timings };
  const file = path.join(cfg.folder, cfg.file);
  try {
    await page.goto(`${cfg.url}/?folder=${encodeURIComponent(cfg.folder)}`, { waitUntil: "domcontentloaded" });
    await page.locator(".monaco-workbench").waitFor({ timeout: 120_000 });
    await openFile(page, cfg.file, "print name", log);
    mark("editor");
    result.status_text = await waitReady(page, cfg.ready_timeout_s);
    mark("ready");

    // 1. the first edit; the same edit is proposed on the next line
    await retype(page, "print name", " name", "(name)");
    mark("typed_first");
    let p = await waitPreview(page, "the preview of (total)", (x) => inserted(x, "(total)") && struck(x, " total"),
      cfg.edit_timeout_s);
    result.steps.first = p;
    mark("preview_total");

    // 2. the second edit types over it
    await retype(page, "print total", " total", "(total)");
    mark("typed_second");
    p = await waitPreview(page, "the preview of (items)", (x) => inserted(x, "(items)") && struck(x, " items"),
      cfg.edit_timeout_s);
    result.steps.second = p;
    result.steps.gone_total = !inserted(p, "(total)");
    mark("preview_items");
    await sleep(300);
    await page.screenshot({ path: path.join(cfg.out_dir, "vscode_next_edit.png") });

    // 3. Tab goes to it, Tab applies it
    result.steps.cursor_before = await cursorPos(page);
    await page.keyboard.press("Tab");
    await sleep(400);
    result.steps.cursor_jump = await cursorPos(page);
    result.steps.after_jump = await preview(page);
    await page.keyboard.press("Tab");
    mark("accepted");

    // 4. the prefetched next place, then Escape
    p = await waitPreview(page, "the prefetched preview of (count)", (x) => inserted(x, "(count)") && struck(x, " count"),
      cfg.edit_timeout_s);
    result.steps.prefetched = p;
    mark("preview_count");
    await page.keyboard.press("Escape");
    await sleep(800);
    result.steps.after_escape = await preview(page);
    mark("dismissed");

    // 5. save
    const before = fs.readFileSync(file, "utf8");
    await page.keyboard.press("Control+S");
    result.saved = await savedText(file, before, "the file on disk did not change after Ctrl+S");
    mark("saved");

    // 6. an insertion: decoration away from the cursor, ghost text at it
    if (cfg.file2) {
      const file2 = path.join(cfg.folder, cfg.file2);
      await openFile(page, cfg.file2, "log.warn('a')", log);
      await page.locator(".monaco-editor .view-line", { hasText: "log.warn('a')" }).first().click();
      await page.keyboard.press("End");
      for (let i = 0; i < "('a')".length; i++) await page.keyboard.press("ArrowLeft");
      await page.keyboard.type("ing", { delay: 60 });
      mark("typed_insertion");
      p = await waitPreview(page, "the preview of the insertion on the next line",
        (x) => x.after.some((a) => a.text === "ing" && a.line.startsWith("log.warn('b')")), cfg.edit_timeout_s);
      result.steps.insertion = p;
      await page.keyboard.press("Tab");
      const gdeadline = Date.now() + cfg.edit_timeout_s * 1000;
      let ghost = "";
      while ((ghost = await ghostText(page)) === "") {
        if (Date.now() > gdeadline) throw new Error("Tab did not turn the insertion into ghost text");
        await sleep(100);
      }
      result.steps.insertion_ghost = ghost;
      result.steps.insertion_cursor = await cursorPos(page);
      result.steps.insertion_decorations = await preview(page);
      await page.screenshot({ path: path.join(cfg.out_dir, "vscode_next_edit_inline.png") });
      mark("insertion_ghost");
      await page.keyboard.press("Tab");
      p = await waitPreview(page, "the prefetched insertion on the line after",
        (x) => x.after.some((a) => a.text === "ing" && a.line.startsWith("log.warn('c')")), cfg.edit_timeout_s);
      result.steps.insertion_prefetched = p;
      mark("insertion_prefetched");
      await page.keyboard.press("Escape");
      await sleep(800);
      result.steps.insertion_after_escape = await preview(page);
      const before2 = fs.readFileSync(file2, "utf8");
      await page.keyboard.press("Control+S");
      result.saved2 = await savedText(file2, before2, "the second file did not change on disk after Ctrl+S");
      mark("saved2");
    }
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
    try {
      result.status_text = result.status_text || (await statusText(page));
      await page.screenshot({ path: path.join(cfg.out_dir, "vscode_next_edit_failure.png") });
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
