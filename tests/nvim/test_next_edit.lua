-- Next-edit suggestions end to end in a real headless Neovim, against a real `tricode lsp` (which
-- starts a daemon of its own on the embedded model; the next edit itself comes from the server's
-- pattern predictor). Run from the repository root:
--
--   nvim --headless --clean -c "luafile tests/nvim/test_next_edit.lua"
--
-- With real keys: `c$(name)<Esc>` turns `print name` into `print(name)`; the preview of the same edit
-- appears on the next line and is typed over (cancelled by the keystroke) by the second edit; then the
-- preview for the third line: its removed text highlighted, its new text as virtual text, a sign, a
-- hint at the cursor line; <Tab> jumps to it, <Tab> applies it; the next place comes without a key
-- (prefetch) and <Esc> dismisses it; a preview whose buffer changed before the accept is dropped.
-- Environment: as tests/nvim/test_inline.lua (TRICODE_NVIM_TRICODE, TRICODE_SOCKET, XDG_*, ...).
local api = vim.api
local here = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h")
local H = dofile(here .. "/harness.lua")
local log, check, wait_for, sleep, type_keys, chars = H.log, H.check, H.wait_for, H.sleep, H.type_keys, H.chars

local repo = vim.fn.fnamemodify(here, ":h:h")
local plugin = repo .. "/editor_clients/nvim"
local T = H.tricode_env(repo)

local SAMPLE = {
  "def report(name, total, items, count):",
  "    print name",
  "    print total",
  "    print items",
  "    print count",
  "    return total",
}

--- The next-edit extmarks of `bufnr`, by kind: del, ins, sign, hint.
local function marks(bufnr)
  local ns = api.nvim_get_namespaces()["tricode_next_edit"]
  local out = { n = 0 }
  for _, m in ipairs(api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })) do
    local d = m[4]
    out.n = out.n + 1
    local text = {}
    for _, chunk in ipairs(d.virt_text or {}) do
      text[#text + 1] = chunk[1]
    end
    local item = { row = m[2], col = m[3], end_row = d.end_row, end_col = d.end_col, hl = d.hl_group,
                   text = table.concat(text), pos = d.virt_text_pos,
                   vhl = d.virt_text and d.virt_text[1] and d.virt_text[1][2], sign = d.sign_text }
    if d.hl_group == "TricodeNextEditDelete" then
      out.del = item
    elseif d.sign_text then
      out.sign = item
    elseif d.virt_text_pos == "inline" or d.virt_lines then
      out.ins = item
    elseif d.virt_text_pos == "eol" then
      out.hint = item
    end
  end
  return out
end

local function status()
  local res
  require("tricode").status(function(err, r)
    res = (not err) and r or { error = tostring(err and err.message) }
  end)
  return wait_for("tricode/status", 20, function()
    return res
  end, 20)
end

H.run(function()
  log("nvim %s, tricode %s, socket %s", tostring(vim.version()), T.tricode, T.env.TRICODE_SOCKET)
  check(vim.fn.executable(T.tricode) == 1, "tricode is not executable: %s", T.tricode)
  vim.opt.runtimepath:prepend(plugin)
  vim.cmd("runtime! plugin/tricode.lua")
  local tricode = require("tricode")
  local ne = require("tricode.next_edit")
  tricode.setup({
    cmd = { T.tricode, "lsp", "--log-level", "info", "--log-file", T.lsp_log },
    cmd_env = T.env,
    filetypes = { "python" },
    ghost_text = { enabled = false },          -- this test is about the next edit only
    prefetch_idle_ms = 0,
    next_edit = { debounce_ms = 150 },
  })
  for _, c in ipairs({ "TricodeNextEdit", "TricodeNextEditAccept", "TricodeNextEditJump", "TricodeNextEditDismiss" }) do
    check(vim.fn.exists(":" .. c) == 2, ":%s is missing", c)
  end
  local tags = plugin .. "/doc/tags"
  local had_tags = vim.fn.filereadable(tags) == 1
  vim.cmd("helptags " .. vim.fn.fnameescape(plugin .. "/doc"))
  local help_ok = pcall(vim.cmd, "help tricode-next-edit")
  if not had_tags then
    vim.fn.delete(tags)
  end
  check(help_ok, ":help tricode-next-edit failed")
  vim.cmd("helpclose")
  log("OK setup: commands and :help tricode-next-edit")

  local file = T.workdir .. "/report.py"
  vim.fn.writefile(SAMPLE, file)
  vim.cmd("edit " .. vim.fn.fnameescape(file))
  local b = api.nvim_get_current_buf()
  local client = wait_for("the tricode client", 60, function()
    local c = vim.lsp.get_clients({ bufnr = b, name = "tricode" })[1]
    return c and c.initialized and c
  end)
  check(ne.supported(client), "the server does not announce experimental.copilotInlineEdit: %s",
    vim.inspect(client.server_capabilities.experimental))
  log("OK client %d, experimental.copilotInlineEdit announced", client.id)

  -- 1. the first edit, with real keys; its pattern is proposed on the next line
  api.nvim_win_set_cursor(0, { 2, 0 })
  type_keys({ "^", "e", "l", "c", "$" }, 30)
  type_keys(chars("(name)"), 30)
  type_keys({ "<Esc>" }, 30)
  check(H.line(b, 1) == "    print(name)", "line 2 is %q", H.line(b, 1))
  local e1 = wait_for("the preview on line 3", 60, function()
    local e = ne.current(b)
    return e and e.row0 == 2 and e
  end)
  check(e1.text == "(total)" and e1.old == " total", "first preview: %q for %q", e1.text, e1.old)
  log("OK after one edit: preview on line 3, %q for %q (%.0f ms)", e1.text, e1.old, ne.stats.last_ms or -1)

  -- 2. the second edit types over it: the keystroke ends the preview at once
  api.nvim_win_set_cursor(0, { 3, 0 })
  check(ne.current(b) ~= nil, "moving the cursor ended the preview")
  type_keys({ "^", "e", "l", "c" }, 30)
  type_keys({ "$" }, 20)
  check(ne.current(b) == nil and marks(b).n == 0, "the preview is still there after a change")
  log("OK the next keystroke ended the preview (extmarks cleared)")
  type_keys(chars("(total)"), 30)
  type_keys({ "<Esc>" }, 30)
  check(H.line(b, 2) == "    print(total)", "line 3 is %q", H.line(b, 2))

  -- 3. the preview of the third line, drawn away from the cursor (line 3)
  local e = wait_for("the preview on line 4", 60, function()
    local x = ne.current(b)
    return x and x.row0 == 3 and x
  end)
  local m = marks(b)
  check(e.text == "(items)" and e.old == " items", "preview %q for %q", e.text, e.old)
  check(m.del and m.del.row == 3 and m.del.col == 9 and m.del.end_row == 3 and m.del.end_col == 15,
    "the removed text is not marked at 3:9-3:15: %s", vim.inspect(m.del))
  check(m.ins and m.ins.row == 3 and m.ins.col == 15 and m.ins.text == "(items)" and m.ins.pos == "inline"
    and m.ins.vhl == "TricodeNextEditInsert", "the new text: %s", vim.inspect(m.ins))
  check(m.sign and m.sign.row == 3 and vim.trim(m.sign.sign) == "»", "the sign: %s", vim.inspect(m.sign))
  check(m.hint and m.hint.row == 2 and m.hint.text:find("next edit: line 4", 1, true), "the hint: %s",
    vim.inspect(m.hint))
  local hl = api.nvim_get_hl(0, { name = "TricodeNextEditDelete" })
  check(hl.strikethrough == true, "TricodeNextEditDelete is not struck through: %s", vim.inspect(hl))
  log("OK preview on line 4: %q struck through at 3:9-3:15, %q inline, sign %q, hint %q", e.old, m.ins.text,
    vim.trim(m.sign.sign), vim.trim(m.hint.text))
  local shown = wait_for("didShowInlineEdit at the server", 20, function()
    local st = status()
    local n = ((st.lsp or {}).next_edit or {}).shown or 0
    return n >= 2 and st.lsp.next_edit
  end, 200)
  log("OK the server counted %d shown (didShowInlineEdit), %d requests, %d edits", shown.shown, shown.requests,
    shown.edits)

  -- 4. <Tab> jumps to it, <Tab> applies it
  type_keys({ "<Tab>" }, 50)
  local cur = api.nvim_win_get_cursor(0)
  check(cur[1] == 4 and cur[2] == 9, "after the first <Tab> the cursor is at %d:%d", cur[1], cur[2])
  check(ne.current(b) ~= nil and marks(b).hint == nil, "the jump ended the preview or left the hint")
  check(H.line(b, 3) == "    print items", "the jump changed the line: %q", H.line(b, 3))
  log("OK <Tab> jumped to line 4")
  local tick = api.nvim_buf_get_changedtick(b)
  type_keys({ "<Tab>" }, 50)
  check(H.line(b, 3) == "    print(items)", "after <Tab> line 4 is %q", H.line(b, 3))
  check(api.nvim_get_mode().mode == "n", "mode %s after accept", api.nvim_get_mode().mode)
  check(table.concat(api.nvim_buf_get_lines(b, 0, -1, false), "\n") == table.concat({ SAMPLE[1], "    print(name)",
    "    print(total)", "    print(items)", SAMPLE[5], SAMPLE[6] }, "\n"), "the buffer changed elsewhere")
  check(ne.stats.accepted == 1, "accepted %d", ne.stats.accepted)
  log("OK <Tab> applied it: line 4 is %q", H.line(b, 3))

  -- 5. the next place is asked for at once (no key pressed since), then dismissed with <Esc>
  local tick2 = api.nvim_buf_get_changedtick(b)
  check(tick2 == tick + 1, "the accept was not one change (%d -> %d)", tick, tick2)
  local e5 = wait_for("the prefetched preview on line 5", 60, function()
    local x = ne.current(b)
    return x and x.row0 == 4 and x
  end)
  check(api.nvim_buf_get_changedtick(b) == tick2 and e5.text == "(count)", "prefetched %q", e5.text)
  log("OK prefetched after the accept: %q on line 5", e5.text)
  type_keys({ "<Esc>" }, 50)
  check(ne.current(b) == nil and marks(b).n == 0, "<Esc> did not dismiss the preview")
  sleep(600)
  check(ne.current(b) == nil and H.line(b, 4) == "    print count", "after dismiss: %s, line 5 %q",
    vim.inspect(ne.current(b)), H.line(b, 4))
  log("OK <Esc> dismissed it; nothing came back without a change")

  -- 6. stale: the buffer changes between the preview and the accept -> nothing is applied
  api.nvim_win_set_cursor(0, { 5, 0 })
  vim.cmd("TricodeNextEdit")
  local e6 = wait_for("the preview asked for with :TricodeNextEdit", 60, function()
    return ne.current(b)
  end)
  check(e6.row0 == 4 and e6.text == "(count)", ":TricodeNextEdit gave %s", vim.inspect(e6))
  local stale0 = ne.stats.stale
  -- one Lua call: the change and the accept before any autocommand runs
  api.nvim_buf_set_lines(b, 0, 0, false, { "# header" })
  local applied = ne.accept()
  check(not applied and ne.stats.stale == stale0 + 1, "a stale edit was applied (%s)", tostring(applied))
  check(H.line(b, 5) == "    print count" and H.line(b, 0) == "# header", "after the stale accept: %q",
    H.line(b, 5))
  check(marks(b).n == 0, "the stale preview is still drawn")
  log("OK a preview whose buffer changed is dropped, not applied")

  local st = status()
  log("server next_edit: %s; client: %s", vim.inspect((st.lsp or {}).next_edit, { newline = " ", indent = "" }),
    vim.inspect({ requests = ne.stats.requests, responses = ne.stats.responses, errors = ne.stats.errors,
                  shown = ne.stats.shown, accepted = ne.stats.accepted }, { newline = " ", indent = "" }))
  check(ne.stats.errors == 0, "request errors: %s", tostring(ne.stats.last_error))
end, { timeout_s = 240 })
