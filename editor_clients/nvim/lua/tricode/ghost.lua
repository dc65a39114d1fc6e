-- Ghost text drawn by the plugin with extmarks (Neovim 0.10 and 0.11, or ghost_text.implementation =
-- "extmark"): textDocument/inlineCompletion requested after a debounce, the previous request cancelled
-- on every keystroke, the first line as inline virtual text, the others as virtual lines.
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local requester = require("tricode.requester")
local suggestion = require("tricode.suggestion")
local util = require("tricode.util")

local M = {}
local api = vim.api

M.ns = api.nvim_create_namespace("tricode")
M.name = "extmark"

local AUTOMATIC, INVOKED = 2, 1         -- lsp.InlineCompletionTriggerKind

---@type table<integer, table>
local states = {}

local function state(bufnr)
  local st = states[bufnr]
  if not st then
    st = { bufnr = bufnr, seq = 0 }
    states[bufnr] = st
  end
  return st
end

local function snapshot(bufnr)
  local cur = api.nvim_win_get_cursor(0)
  return { tick = api.nvim_buf_get_changedtick(bufnr), row = cur[1] - 1, col = cur[2] }
end

local function same(a, b)
  return a and b and a.tick == b.tick and a.row == b.row and a.col == b.col
end

local function enabled(bufnr)
  return require("tricode").is_enabled(bufnr)
end

local function pum_blocks()
  return config.options.ghost_text.hide_during_completion and vim.fn.pumvisible() == 1
end

-- -- drawing ------------------------------------------------------------------------------------------

local function clear(st)
  if api.nvim_buf_is_valid(st.bufnr) then
    api.nvim_buf_clear_namespace(st.bufnr, M.ns, 0, -1)
  end
  st.extmark = nil
end

local function render(st)
  clear(st)
  local s = st.sugg
  if not s or s.text == "" or not api.nvim_buf_is_valid(st.bufnr) then
    return
  end
  local hl = config.options.ghost_text.hl_group
  local ts = vim.bo[st.bufnr].tabstop
  local line = util.line(st.bufnr, s.row)
  local rest = line:sub(s.col + 1)
  local lines = vim.split(s.text, "\n", { plain = true })
  local first = lines[1]
  local pos = "inline"
  if s.replace ~= "" then
    if #lines == 1 and vim.endswith(first, s.replace) then
      first = first:sub(1, #first - #s.replace)  -- the closing text already there completes it
    elseif s.replace == rest then
      pos = "overlay"                            -- draw over the closing text that it replaces
      local pad = vim.fn.strdisplaywidth(s.replace) - vim.fn.strdisplaywidth(first)
      if pad > 0 then
        first = first .. string.rep(" ", pad)
      end
    end
  end
  local opts = { hl_mode = "combine", priority = 200, right_gravity = true }
  if first ~= "" then
    local start = vim.fn.strdisplaywidth(line:sub(1, s.col))
    opts.virt_text = { { util.expand_tabs(first, start, ts), hl } }
    opts.virt_text_pos = pos
  end
  if #lines > 1 then
    local vl = {}
    for i = 2, #lines do
      vl[#vl + 1] = { { util.expand_tabs(lines[i], 0, ts), hl } }
    end
    opts.virt_lines = vl
  end
  if opts.virt_text or opts.virt_lines then
    st.extmark = api.nvim_buf_set_extmark(st.bufnr, M.ns, s.row, s.col, opts)
  end
end

-- -- lifecycle of a suggestion ------------------------------------------------------------------------

--- End the current suggestion. how: "accepted" | "dismissed" | nil (typed over, cursor moved, left
--- insert mode). Feedback: accepted -> tricode/accepted; something accepted with accept word/line ->
--- tricode/partiallyAccepted; dismissed -> tricode/rejected; otherwise nothing.
local function finish(st, how)
  local s = st.sugg
  st.sugg, st.items, st.index = nil, nil, nil
  clear(st)
  if not s then
    return
  end
  local client = vim.lsp.get_client_by_id(s.client_id)
  local params = { uri = s.uri, shown = s.shown }
  if how == "accepted" then
    params.accepted = s.shown
    lsp.feedback(client, "accepted", params)
  elseif s.accepted > 0 then
    params.accepted = s.accepted
    lsp.feedback(client, "partiallyAccepted", params)
  elseif how == "dismissed" then
    lsp.feedback(client, "rejected", params)
  end
end

local function cancel(st)
  requester.cancel(st)                        -- answers to older requests are ignored
end

local function show(st, items, index)
  local cur = snapshot(st.bufnr)
  local list = {}
  for _, it in ipairs(items) do
    local s = suggestion.from_item(st.bufnr, it.client, it.item, cur.row, cur.col)
    if s then
      list[#list + 1] = s
    end
  end
  if #list == 0 then
    finish(st)
    return
  end
  st.items = list
  st.index = ((index - 1) % #list) + 1
  st.sugg = vim.deepcopy(list[st.index])
  st.last = cur
  render(st)
end

local function request(st, kind)
  local bufnr = st.bufnr
  if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr or not util.in_insert_mode()
    or not enabled(bufnr) or pum_blocks() then
    return
  end
  local client = lsp.client(bufnr)
  if not client then
    return
  end
  local snap = snapshot(bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding or "utf-16")
  params.context = { triggerKind = kind }
  local sent = requester.send(st, client, "textDocument/inlineCompletion", params, bufnr, function(err, result, ms)
    M.stats.responses = M.stats.responses + 1
    M.stats.last_ms = ms
    if err then
      M.stats.errors = M.stats.errors + 1
      M.stats.last_error = err.message
      return
    end
    if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr or not util.in_insert_mode()
      or not same(snap, snapshot(bufnr)) or pum_blocks() then
      return                                  -- the text or the cursor moved on meanwhile
    end
    local raw = result and (result.items or result) or {}
    local items = {}
    for _, item in ipairs(raw) do
      items[#items + 1] = { client = client, item = item }
    end
    M.stats.items = #items
    M.stats.last_answer = { bufnr = bufnr, tick = snap.tick, row = snap.row, col = snap.col, items = #items }
    finish(st)
    show(st, items, 1)
  end)
  if sent then
    M.stats.requests = M.stats.requests + 1
  end
end

local function schedule(st, kind, delay)
  requester.cancel(st)
  if not enabled(st.bufnr) then
    return
  end
  requester.schedule(st, delay or config.options.ghost_text.debounce_ms, function()
    request(st, kind)
  end)
end

--- After a change: when the typed text is the start of the suggestion, keep the rest of it.
local function typed_through(st, snap)
  local s = st.sugg
  if snap.row < s.row or (snap.row == s.row and snap.col <= s.col) then
    return false
  end
  local ok, got = pcall(api.nvim_buf_get_text, st.bufnr, s.row, s.col, snap.row, snap.col, {})
  if not ok then
    return false
  end
  local typed = table.concat(got, "\n")
  if typed == "" or #typed >= #s.text or s.text:sub(1, #typed) ~= typed then
    return false
  end
  s.text = s.text:sub(#typed + 1)
  s.row, s.col = snap.row, snap.col
  if s.text == s.replace then
    return false
  end
  st.items = { s }
  st.index = 1
  return true
end

local function on_change(bufnr)
  local st = state(bufnr)
  if api.nvim_get_current_buf() ~= bufnr or not util.in_insert_mode() then
    return
  end
  local snap = snapshot(bufnr)
  if same(snap, st.last) then
    return
  end
  local prev = st.last
  st.last = snap
  if st.sugg then
    if prev and snap.tick ~= prev.tick and typed_through(st, snap) then
      render(st)
      return
    end
    finish(st)
  end
  if st.suppressed and prev and snap.tick == prev.tick then
    return                                    -- dismissed: no new request until the text changes
  end
  st.suppressed = nil
  schedule(st, AUTOMATIC)
end

-- -- public -------------------------------------------------------------------------------------------

M.stats = { requests = 0, responses = 0, errors = 0, items = 0, last_ms = nil, last_error = nil }

function M.attach(bufnr)
  local st = state(bufnr)
  if st.augroup then
    return
  end
  st.augroup = api.nvim_create_augroup("tricode_ghost_" .. bufnr, { clear = true })
  api.nvim_create_autocmd("InsertEnter", {
    group = st.augroup, buffer = bufnr,
    callback = function()
      st.last = snapshot(bufnr)
      st.suppressed = nil
      schedule(st, AUTOMATIC)
    end,
  })
  api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI", "TextChangedP" }, {
    group = st.augroup, buffer = bufnr,
    callback = function()
      on_change(bufnr)
    end,
  })
  api.nvim_create_autocmd("CompleteChanged", {
    group = st.augroup, buffer = bufnr,
    callback = function()
      if st.sugg and pum_blocks() then
        finish(st)
      end
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = st.augroup, buffer = bufnr,
    callback = function()
      cancel(st)
      finish(st)
      st.last = nil
    end,
  })
  api.nvim_create_autocmd({ "BufUnload", "BufWipeout" }, {
    group = st.augroup, buffer = bufnr,
    callback = function()
      M.detach(bufnr)
    end,
  })
  if api.nvim_get_current_buf() == bufnr and util.in_insert_mode() then
    st.last = snapshot(bufnr)
    schedule(st, AUTOMATIC)
  end
end

function M.detach(bufnr)
  requester.detach(states, bufnr, finish)
end

function M.attached(bufnr)
  return states[bufnr] ~= nil and states[bufnr].augroup ~= nil
end

--- The suggestion shown in `bufnr` (nil when none).
function M.current(bufnr)
  local st = states[bufnr or api.nvim_get_current_buf()]
  return st and st.sugg and st.sugg.text ~= "" and st.sugg or nil
end

function M.visible(bufnr)
  return M.current(bufnr) ~= nil
end

function M.pending(bufnr)
  return requester.pending(states[bufnr or api.nvim_get_current_buf()])
end

--- Accept all of the suggestion, or its next word or line. Returns true when something was inserted.
function M.accept(kind)
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  local s = st and st.sugg
  if not s or s.text == "" then
    return false
  end
  cancel(st)
  local part = suggestion.part(s, kind or "all")
  local done = suggestion.apply(s, part)
  -- the TextChangedI/CursorMovedI that follow see the new anchor: nothing to redo
  st.last = snapshot(bufnr)
  if done then
    finish(st, "accepted")
    schedule(st, AUTOMATIC)     -- ask for what comes next
  else
    st.items, st.index = { s }, 1
    render(st)
  end
  return true
end

function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  local st = states[bufnr]
  if not st then
    return false
  end
  local had = st.sugg ~= nil
  cancel(st)
  finish(st, "dismissed")
  st.suppressed = true
  st.last = snapshot(bufnr)
  return had
end

--- Show the next (count 1) or previous (count -1) suggestion; request one when none is shown.
function M.cycle(count)
  local bufnr = api.nvim_get_current_buf()
  local st = state(bufnr)
  if st.sugg and st.items and #st.items > 1 then
    local s = st.sugg
    st.index = ((st.index - 1 + count) % #st.items) + 1
    st.sugg = vim.deepcopy(st.items[st.index])
    st.sugg.accepted = s.accepted
    render(st)
    return true
  end
  if not st.sugg then
    st.suppressed = nil
    request(st, INVOKED)
    return true
  end
  return false
end

--- Ask now (no debounce), as if invoked by the user.
function M.trigger()
  local st = state(api.nvim_get_current_buf())
  st.suppressed = nil
  request(st, INVOKED)
end

function M.clear_all()
  for _, st in pairs(states) do
    cancel(st)
    finish(st)
  end
end

return M
