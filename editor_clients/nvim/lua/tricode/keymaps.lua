-- Buffer-local insert-mode keys. A key acts while a suggestion is visible; otherwise it does what it
-- did before (the previous mapping of the key, or the key itself).
local config = require("tricode.config")

local M = {}
local api = vim.api

M.actions = {
  accept = "accept all of the suggestion",
  accept_word = "accept the next word of the suggestion",
  accept_line = "accept the next line of the suggestion",
  next = "show the next suggestion (or ask for one)",
  prev = "show the previous suggestion",
  dismiss = "dismiss the suggestion",
}

-- fallbacks that have to run as <Cmd> (callbacks that are not <expr>, recursive mappings)
local runners = {}

local function termcodes(s)
  return api.nvim_replace_termcodes(s, true, true, true)
end

--- What the key did before: returned from the <expr> mapping.
local function fallback(prev, lhs)
  if not prev or vim.tbl_isempty(prev) then
    return termcodes(lhs)
  end
  if prev.callback then
    if prev.expr == 1 then
      local keys = prev.callback() or ""
      return prev.replace_keycodes == 1 and termcodes(keys) or keys
    end
    runners[#runners + 1] = prev.callback
    return termcodes(("<Cmd>lua require('tricode.keymaps')._run(%d)<CR>"):format(#runners))
  end
  local rhs = prev.rhs or ""
  if prev.expr == 1 then
    local ok, keys = pcall(api.nvim_eval, rhs)
    return ok and type(keys) == "string" and keys or ""
  end
  if prev.noremap == 1 then
    return termcodes(rhs)
  end
  runners[#runners + 1] = function()
    api.nvim_feedkeys(termcodes(rhs), "mi", false)
  end
  return termcodes(("<Cmd>lua require('tricode.keymaps')._run(%d)<CR>"):format(#runners))
end

function M._run(i)
  local f = runners[i]
  runners[i] = nil
  if f then
    f()
  end
end

local mapped = {}   -- bufnr -> { lhs = previous mapping }

function M.attach(bufnr)
  local keys = config.options.keymaps or {}
  mapped[bufnr] = mapped[bufnr] or {}
  for action, desc in pairs(M.actions) do
    local lhs = keys[action]
    if type(lhs) == "string" and lhs ~= "" and mapped[bufnr][lhs] == nil then
      local prev = vim.fn.maparg(lhs, "i", false, true)
      if type(prev) == "table" and prev.desc and vim.startswith(prev.desc, "tricode: ") then
        prev = {}
      end
      mapped[bufnr][lhs] = prev
      vim.keymap.set("i", lhs, function()
        local tricode = require("tricode")
        if tricode.handles_key(bufnr, action) then
          return termcodes(("<Cmd>lua require('tricode')._key(%q)<CR>"):format(action))
        end
        return fallback(prev, lhs)
      end, { buffer = bufnr, expr = true, replace_keycodes = false, silent = true, desc = "tricode: " .. desc })
    end
  end
end

function M.detach(bufnr)
  local m = mapped[bufnr]
  mapped[bufnr] = nil
  if not m or not api.nvim_buf_is_valid(bufnr) then
    return
  end
  for lhs, prev in pairs(m) do
    pcall(vim.keymap.del, "i", lhs, { buffer = bufnr })
    if type(prev) == "table" and prev.buffer == 1 then
      pcall(vim.fn.mapset, "i", false, prev)         -- restore a buffer-local mapping we shadowed
    end
  end
end

return M
