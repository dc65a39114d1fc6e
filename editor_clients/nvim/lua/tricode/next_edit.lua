-- Next-edit suggestions (see :help tricode-next-edit): after an edit (TextChanged/TextChangedI,
-- debounced and cancelled through tricode.requester like the ghost text) the plugin asks the server
-- `textDocument/copilotInlineEdit` where the cursor is, and draws the first edit of the answer as a
-- preview: the text it removes highlighted (TricodeNextEditDelete, struck through), the text it inserts
-- as virtual text (TricodeNextEditInsert; further lines as virtual lines), a sign on its first line, and
-- a hint at the end of the cursor line when the edit is on another line. The next change of the buffer
-- clears it. Keys: jump to it, then apply it (nvim_buf_set_text, only when the buffer is still the one it
-- was computed for), or dismiss it; after an accept the next place is asked for at once. The server
-- hears textDocument/didShowInlineEdit when one is drawn, and the edit's command when it is applied.
-- What this module does not know: how the server predicts, ghost text, which keys (keymaps.lua).
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local requester = require("tricode.requester")
local util = require("tricode.util")

local M = {}
local api = vim.api

M.ns = api.nvim_create_namespace("tricode_next_edit")
M.method = "textDocument/copilotInlineEdit"
M.stats = { requests = 0, responses = 0, errors = 0, edits = 0, empty = 0, shown = 0, accepted = 0,
            dismissed = 0, stale = 0, last_ms = nil, last_error = nil, last_answer = nil }

---@type table<integer, table>
local states = {}

local function opts()
  return config.options.next_edit or {}
end

function M.set_highlights()
  -- the removed text: DiffDelete's colours, struck through (`default`: a user's own definition wins)
  local ok, del = pcall(api.nvim_get_hl, 0, { name = "DiffDelete", link = false })
  local hl = vim.tbl_extend("force", ok and type(del) == "table" and del or {}, { strikethrough = true, default = true })
  api.nvim_set_hl(0, "TricodeNextEditDelete", hl)
  api.nvim_set_hl(0, "TricodeNextEditInsert", { link = "DiffAdd", default = true })
  api.nvim_set_hl(0, "TricodeNextEditSign", { link = "DiagnosticHint", default = true })
  api.nvim_set_hl(0, "TricodeNextEditHint", { link = "Comment", default = true })
end

local function state(bufnr)
  local st = states[bufnr]
  if not st then
    st = { bufnr = bufnr, seq = 0 }
    states[bufnr] = st
  end
  return st
end

--- Whether next edits are asked for in `bufnr`: next_edit.enabled, :TricodeToggle, vim.b.tricode_enabled.
function M.enabled(bufnr)
  local tricode = require("tricode")
  return opts().enabled ~= false and tricode.enabled and config.options.settings.enabled ~= false
    and vim.b[bufnr].tricode_enabled ~= false
end

--- Whether the server announces the request (capabilities.experimental.copilotInlineEdit).
function M.supported(client)
  local caps = client.server_capabilities or {}
  return type(caps.experimental) == "table" and caps.experimental.copilotInlineEdit == true
end

--- The document version the LSP client last sent for `bufnr` (what the server checks).
local function version(bufnr)
  local v = vim.lsp.util.buf_versions and vim.lsp.util.buf_versions[bufnr]
  return v or api.nvim_buf_get_changedtick(bufnr)
end

-- -- drawing ------------------------------------------------------------------------------------------

local function clear_marks(st)
  if api.nvim_buf_is_valid(st.bufnr) then
    api.nvim_buf_clear_namespace(st.bufnr, M.ns, 0, -1)
  end
end

--- The hint at the end of the cursor line when the edit is on another line (redrawn as the cursor moves).
local function draw_hint(st)
  local e = st.edit
  if st.hint then
    pcall(api.nvim_buf_del_extmark, st.bufnr, M.ns, st.hint)
    st.hint = nil
  end
  if not e or opts().hint == false or api.nvim_get_current_buf() ~= st.bufnr then
    return
  end
  local row = api.nvim_win_get_cursor(0)[1] - 1
  if row >= e.row0 and row <= e.row1 then
    return
  end
  local key = (opts().keymaps or {}).accept
  local text = ("  %s next edit: line %d%s"):format(e.row0 < row and "↑" or "↓", e.row0 + 1,
    (type(key) == "string" and key ~= "") and (" (" .. key .. " jumps)") or "")
  st.hint = api.nvim_buf_set_extmark(st.bufnr, M.ns, row, 0, {
    virt_text = { { text, "TricodeNextEditHint" } }, virt_text_pos = "eol", priority = 250 })
end

local function render(st)
  clear_marks(st)
  st.hint = nil
  local e = st.edit
  if not e or not api.nvim_buf_is_valid(st.bufnr) then
    return
  end
  local b = st.bufnr
  -- what is removed
  if e.row0 ~= e.row1 or e.col0 ~= e.col1 then
    api.nvim_buf_set_extmark(b, M.ns, e.row0, e.col0, { end_row = e.row1, end_col = e.col1,
      hl_group = "TricodeNextEditDelete", hl_mode = "combine", priority = 300 })
  end
  -- what is inserted: the first line right after the removed text, the others below it
  if e.text ~= "" then
    local ts = vim.bo[b].tabstop
    local lines = vim.split(e.text, "\n", { plain = true })
    local mark = { priority = 300, right_gravity = false }
    if lines[1] ~= "" then
      local start = vim.fn.strdisplaywidth(util.line(b, e.row1):sub(1, e.col1))
      mark.virt_text = { { util.expand_tabs(lines[1], start, ts), "TricodeNextEditInsert" } }
      mark.virt_text_pos = "inline"
    end
    if #lines > 1 then
      local vl = {}
      for i = 2, #lines do
        vl[#vl + 1] = { { util.expand_tabs(lines[i], 0, ts), "TricodeNextEditInsert" } }
      end
      mark.virt_lines = vl
    end
    api.nvim_buf_set_extmark(b, M.ns, e.row1, e.col1, mark)
  end
  -- where it is
  local sign = opts().sign_text
  if type(sign) == "string" and sign ~= "" then
    api.nvim_buf_set_extmark(b, M.ns, e.row0, 0, { sign_text = sign, sign_hl_group = "TricodeNextEditSign",
      priority = 300 })
  end
  draw_hint(st)
end

-- -- lifecycle ----------------------------------------------------------------------------------------

--- End the shown edit (nothing is sent: Copilot's protocol has no rejection).
local function finish(st)
  st.edit = nil
  clear_marks(st)
  st.hint = nil
end

--- The first usable edit of an answer, in buffer bytes; nil when none fits the buffer as it is.
local function edit_of(st, client, item, sent)
  local b = st.bufnr
  if type(item) ~= "table" or type(item.range) ~= "table" or type(item.text) ~= "string" then
    return nil
  end
  local doc = item.textDocument or {}
  if doc.uri ~= nil and doc.uri ~= sent.uri then
    return nil
  end
  if doc.version ~= nil and doc.version ~= sent.version then
    return nil
  end
  local s, en = item.range.start, item.range["end"]
  local n = api.nvim_buf_line_count(b)
  if type(s) ~= "table" or type(en) ~= "table" or s.line >= n or en.line >= n or en.line < s.line then
    return nil
  end
  local enc = client.offset_encoding or "utf-16"
  local col0 = util.byte_col(util.line(b, s.line), s.character, enc)
  local col1 = util.byte_col(util.line(b, en.line), en.character, enc)
  if en.line == s.line and col1 < col0 then
    return nil
  end
  local old = table.concat(api.nvim_buf_get_text(b, s.line, col0, en.line, col1, {}), "\n")
  if old == item.text then
    return nil
  end
  return { client_id = client.id, item = item, row0 = s.line, col0 = col0, row1 = en.line, col1 = col1,
           text = item.text:gsub("\r\n", "\n"), old = old, tick = sent.tick, version = sent.version, uri = sent.uri }
end

local function show(st, e)
  st.edit = e
  render(st)
  M.stats.shown = M.stats.shown + 1
  local client = vim.lsp.get_client_by_id(e.client_id)
  if client and not util.is_stopped(client) then
    util.notify(client, "textDocument/didShowInlineEdit", { item = e.item })
  end
  pcall(api.nvim_exec_autocmds, "User", { pattern = "TricodeNextEditShown", modeline = false,
    data = { bufnr = st.bufnr, row = e.row0, col = e.col0, text = e.text, old = e.old } })
end

--- Ask now where the cursor is (in the current window; `bufnr` must be its buffer).
local function request(st)
  local b = st.bufnr
  if not api.nvim_buf_is_valid(b) or api.nvim_get_current_buf() ~= b or not M.enabled(b) then
    return false
  end
  local mode = api.nvim_get_mode().mode:sub(1, 1)
  if mode ~= "n" and mode ~= "i" then
    return false
  end
  local client = lsp.client(b)
  if not client or not M.supported(client) then
    return false
  end
  local cur = api.nvim_win_get_cursor(0)
  local sent = { uri = vim.uri_from_bufnr(b), tick = api.nvim_buf_get_changedtick(b) }
  -- the client sends pending didChange before a request (changetracking.flush); then the version is current
  sent.version = version(b)
  local params = {
    textDocument = { uri = sent.uri, version = sent.version },
    position = util.position(b, cur[1] - 1, cur[2], client.offset_encoding or "utf-16"),
  }
  local ok = requester.send(st, client, M.method, params, b, function(err, result, ms)
    M.stats.responses = M.stats.responses + 1
    M.stats.last_ms = ms
    if err then
      -- ContentModified (-32801): the buffer moved on before the server saw the request; a newer one follows
      if err.code ~= -32801 then
        M.stats.errors = M.stats.errors + 1
        M.stats.last_error = err.message
      end
      return
    end
    if not api.nvim_buf_is_valid(b) or api.nvim_buf_get_changedtick(b) ~= sent.tick then
      return                                  -- the text changed meanwhile
    end
    local edits = type(result) == "table" and result.edits or {}
    local e
    for _, item in ipairs(edits) do
      e = edit_of(st, client, item, sent)
      if e then
        break
      end
    end
    M.stats.last_answer = { bufnr = b, tick = sent.tick, version = sent.version, row = cur[1] - 1, col = cur[2],
                            edits = #edits, usable = e ~= nil }
    M.stats[e and "edits" or "empty"] = M.stats[e and "edits" or "empty"] + 1
    finish(st)
    if e then
      show(st, e)
    end
  end)
  if ok then
    M.stats.requests = M.stats.requests + 1
  end
  return ok
end

local function on_change(bufnr)
  local st = state(bufnr)
  local tick = api.nvim_buf_get_changedtick(bufnr)
  if st.own_tick == tick then
    return                                    -- our own accept: the next place is already asked for
  end
  requester.cancel(st)
  finish(st)                                  -- a keystroke ends the preview
  if not M.enabled(bufnr) or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  requester.schedule(st, opts().debounce_ms or 100, function()
    request(st)
  end)
end

-- -- public -------------------------------------------------------------------------------------------

function M.attach(bufnr)
  local st = state(bufnr)
  if st.augroup then
    return
  end
  st.augroup = api.nvim_create_augroup("tricode_next_edit_" .. bufnr, { clear = true })
  api.nvim_create_autocmd({ "TextChanged", "TextChangedI", "TextChangedP" }, { group = st.augroup, buffer = bufnr,
    callback = function()
      on_change(bufnr)
    end })
  api.nvim_create_autocmd({ "CursorMoved", "CursorMovedI" }, { group = st.augroup, buffer = bufnr,
    callback = function()
      if st.edit then
        draw_hint(st)
      end
    end })
  api.nvim_create_autocmd("BufLeave", { group = st.augroup, buffer = bufnr, callback = function()
    requester.cancel(st)
  end })
  api.nvim_create_autocmd({ "BufUnload", "BufWipeout" }, { group = st.augroup, buffer = bufnr, callback = function()
    M.detach(bufnr)
  end })
end

function M.detach(bufnr)
  requester.detach(states, bufnr, finish)
end

--- The edit shown in `bufnr` ({row0, col0, row1, col1 (0-based, bytes), text, old, tick, item}), or nil.
function M.current(bufnr)
  local st = states[(bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr]
  return st and st.edit or nil
end

function M.visible(bufnr)
  return M.current(bufnr) ~= nil
end

function M.pending(bufnr)
  return requester.pending(states[(bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr])
end

--- Whether the cursor is on the edit's lines (then the accept key applies it instead of jumping).
function M.at_cursor(bufnr)
  local e = M.current(bufnr)
  if not e then
    return false
  end
  local row = api.nvim_win_get_cursor(0)[1] - 1
  return row >= e.row0 and row <= e.row1
end

--- Move the cursor to the start of the shown edit. Returns true when there was one.
function M.jump()
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  local e = st and st.edit
  if not e then
    return false
  end
  pcall(vim.cmd, "normal! m'")                -- <C-o> comes back
  api.nvim_win_set_cursor(0, { e.row0 + 1, e.col0 })
  draw_hint(st)
  return true
end

--- Apply the shown edit when the buffer is still the one it was computed for (else drop it). Returns
--- true when the buffer was changed. Afterwards the next place is asked for at once.
function M.accept()
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  local e = st and st.edit
  if not e then
    return false
  end
  requester.cancel(st)
  finish(st)
  local ok_old, got = pcall(api.nvim_buf_get_text, bufnr, e.row0, e.col0, e.row1, e.col1, {})
  if api.nvim_buf_get_changedtick(bufnr) ~= e.tick or not ok_old or table.concat(got, "\n") ~= e.old then
    M.stats.stale = M.stats.stale + 1
    vim.notify("tricode: the buffer changed since the next edit was suggested; it was dropped", vim.log.levels.INFO)
    return false
  end
  local lines = vim.split(e.text, "\n", { plain = true })
  api.nvim_buf_set_text(bufnr, e.row0, e.col0, e.row1, e.col1, lines)
  st.own_tick = api.nvim_buf_get_changedtick(bufnr)
  M.stats.accepted = M.stats.accepted + 1
  local row = e.row0 + #lines - 1
  local col = (#lines == 1 and e.col0 or 0) + #lines[#lines]
  pcall(api.nvim_win_set_cursor, 0, { row + 1, col })
  local client = vim.lsp.get_client_by_id(e.client_id)
  local cmd = e.item.command
  if client and not util.is_stopped(client) and type(cmd) == "table" and type(cmd.command) == "string" then
    -- the server's own command on the edit (Copilot's clients run it after applying)
    util.request(client, "workspace/executeCommand", { command = cmd.command, arguments = cmd.arguments },
      function() end, bufnr)
  end
  pcall(api.nvim_exec_autocmds, "User", { pattern = "TricodeNextEditAccepted", modeline = false,
    data = { bufnr = bufnr, row = e.row0, col = e.col0, text = e.text, old = e.old } })
  if opts().prefetch ~= false then
    request(st)                               -- the next place, now
  end
  return true
end

--- Jump to the edit when the cursor is not on it, else apply it (the accept key).
function M.jump_or_accept()
  if M.at_cursor() then
    return M.accept()
  end
  return M.jump()
end

function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st or not st.edit then
    return false
  end
  requester.cancel(st)
  finish(st)
  M.stats.dismissed = M.stats.dismissed + 1
  return true
end

--- Ask now (no debounce) at the cursor.
function M.trigger()
  local bufnr = api.nvim_get_current_buf()
  local st = state(bufnr)
  finish(st)
  return request(st)
end

function M.clear_all()
  for _, st in pairs(states) do
    requester.cancel(st)
    finish(st)
  end
end

return M
