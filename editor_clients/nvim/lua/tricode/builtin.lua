-- Ghost text by Neovim itself (0.12+: vim.lsp.inline_completion). Neovim requests, draws and cycles;
-- the plugin accepts (all, a word or a line) and reports accept/dismiss to the server.
local lsp = require("tricode.lsp")
local suggestion = require("tricode.suggestion")
local util = require("tricode.util")

local M = {}
local api = vim.api
M.name = "builtin"

function M.available()
  local ok, ic = pcall(function()
    return vim.lsp.inline_completion
  end)
  return ok and type(ic) == "table" and type(ic.enable) == "function" and type(ic.get) == "function"
end

local attached = {}

function M.attach(bufnr)
  attached[bufnr] = true
  if require("tricode").is_enabled(bufnr) then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
end

function M.detach(bufnr)
  if attached[bufnr] then
    attached[bufnr] = nil
    if api.nvim_buf_is_valid(bufnr) then
      pcall(vim.lsp.inline_completion.enable, false, { bufnr = bufnr })
    end
  end
end

function M.attached(bufnr)
  return attached[bufnr] == true
end

--- Follow :TricodeToggle.
function M.set_enabled(bufnr, on)
  if attached[bufnr] then
    pcall(vim.lsp.inline_completion.enable, on, { bufnr = bufnr })
  end
end

local function builtin_ns()
  return api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
end

function M.visible(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local ns = builtin_ns()
  return ns ~= nil and #api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

function M.pending()
  return false
end

--- (row, col) pairs of a vim.Range (0.12) or an LSP range.
local function range_cols(bufnr, client, r)
  if not r then
    return nil
  end
  local s = r.start
  local e = r.end_ or r["end"]
  if s and s.row ~= nil then
    return s.row, s.col, e.row, e.col
  end
  if s and s.line ~= nil then
    local enc = client and client.offset_encoding or "utf-16"
    return s.line, util.byte_col(util.line(bufnr, s.line), s.character, enc),
      e.line, util.byte_col(util.line(bufnr, e.line), e.character, enc)
  end
end

--- A suggestion (tricode.suggestion) from a vim.lsp.inline_completion.Item, for the cursor now.
local function from_builtin(bufnr, item)
  local client = vim.lsp.get_client_by_id(item.client_id)
  local t = item.insert_text
  local text = type(t) == "table" and (t.value or "") or (t or "")
  local cur = api.nvim_win_get_cursor(0)
  local row, col = cur[1] - 1, cur[2]
  local line = util.line(bufnr, row)
  local srow, scol, erow, ecol = range_cols(bufnr, client, item.range)
  if not srow then
    srow, scol, erow, ecol = row, col, row, col
  end
  if srow ~= row or erow ~= row then
    return nil
  end
  local s = suggestion.build(bufnr, client, text, line, row, col, scol, ecol, item.command)
  if s then
    s.client_id = item.client_id
  end
  return s
end

--- Accept all, or the next word/line, of the suggestion Neovim shows. Returns whether one was shown.
function M.accept(kind)
  local bufnr = api.nvim_get_current_buf()
  if not M.visible(bufnr) then
    return false
  end
  return vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      local client = vim.lsp.get_client_by_id(item.client_id)
      local ours = client ~= nil and client.name == lsp.name
      local s = from_builtin(bufnr, item)
      if not s then
        return
      end
      local done = suggestion.apply(s, suggestion.part(s, ours and kind or "all"))
      if ours then
        local params = { uri = s.uri, shown = s.shown, accepted = s.accepted }
        lsp.feedback(client, done and "accepted" or "partiallyAccepted", params)
      elseif done and item.command and client then
        client:exec_cmd(item.command, { bufnr = bufnr })   -- as Neovim's own accept does
      end
    end,
  }) ~= false
end

function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  if not M.visible(bufnr) then
    return false
  end
  vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)   -- called after Neovim hid the item: only report it
      local client = vim.lsp.get_client_by_id(item.client_id)
      if client and client.name == lsp.name then
        local t = item.insert_text
        local text = type(t) == "table" and (t.value or "") or (t or "")
        lsp.feedback(client, "rejected", { uri = vim.uri_from_bufnr(bufnr), shown = util.chars(text) })
      end
    end,
  })
  return true
end

function M.cycle(count)
  if M.visible() then
    vim.lsp.inline_completion.select({ count = count })
    return true
  end
  return false
end

function M.trigger() end

function M.current()
  return nil
end

function M.clear_all() end

M.stats = {}

return M
