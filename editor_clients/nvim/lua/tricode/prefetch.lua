-- Prefetch: when the cursor comes to rest at a new line (no CursorMoved/CursorMovedI for
-- `prefetch_idle_ms`), send the `tricode/cursorIdle` notification, so that the daemon prefills the
-- prompt of a completion there before the first keystroke (lsp/prefetch.py). One timer per buffer;
-- a rest on the line already sent is not sent again.
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local util = require("tricode.util")

local M = {}
local api = vim.api
local state = {}          -- bufnr -> { timer, augroup, last = "line:changedtick" }

local function send(bufnr)
  local st = state[bufnr]
  if not st or not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local client = lsp.client(bufnr)
  if not client or not require("tricode").is_enabled(bufnr) then
    return
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local key = row .. ":" .. api.nvim_buf_get_changedtick(bufnr)
  if st.last == key then
    return
  end
  st.last = key
  util.notify(client, "tricode/cursorIdle", {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = row - 1, character = col },
  })
end

function M.attach(bufnr)
  local idle = config.options.prefetch_idle_ms or 0
  if idle <= 0 or state[bufnr] then
    return
  end
  local st = { timer = util.uv.new_timer(), augroup = api.nvim_create_augroup("tricode_prefetch_" .. bufnr, {}) }
  state[bufnr] = st
  api.nvim_create_autocmd({ "CursorMoved", "CursorMovedI", "BufEnter" }, {
    group = st.augroup,
    buffer = bufnr,
    callback = function()
      st.timer:stop()
      st.timer:start(idle, 0, vim.schedule_wrap(function()
        send(bufnr)
      end))
    end,
  })
end

function M.detach(bufnr)
  local st = state[bufnr]
  if not st then
    return
  end
  state[bufnr] = nil
  st.timer:stop()
  if not st.timer:is_closing() then
    st.timer:close()
  end
  pcall(api.nvim_del_augroup_by_id, st.augroup)
end

return M
