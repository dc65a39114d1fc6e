-- Buffer-local keys: the ghost text's (insert mode, `keymaps`) and the next edit's (`next_edit.keymaps`,
-- normal and insert mode). A key acts while what it is for is visible; otherwise it does what it did
-- before (the previous mapping of the key, or the key itself). When two actions share a key in a mode
-- (<Tab>: accept the ghost text, or jump to / apply the next edit), the first that acts wins.
local config = require("tricode.config")

local M = {}
local api = vim.api

-- In the order in which actions that share a key are tried.
M.list = {
  { name = "accept", desc = "accept all of the suggestion", modes = { "i" } },
  { name = "accept_word", desc = "accept the next word of the suggestion", modes = { "i" } },
  { name = "accept_line", desc = "accept the next line of the suggestion", modes = { "i" } },
  { name = "next", desc = "show the next suggestion (or ask for one)", modes = { "i" } },
  { name = "prev", desc = "show the previous suggestion", modes = { "i" } },
  { name = "dismiss", desc = "dismiss the suggestion", modes = { "i" } },
  { name = "next_edit_accept", key = "accept", next_edit = true, modes = { "n", "i" },
    desc = "jump to the next edit, or apply it when the cursor is on it" },
  { name = "next_edit_dismiss", key = "dismiss", next_edit = true, modes = { "n" }, desc = "dismiss the next edit" },
}
M.actions = {}
for _, a in ipairs(M.list) do
  M.actions[a.name] = a.desc
end

local function lhs_of(a)
  if a.next_edit then
    local ne = config.options.next_edit or {}
    return ne.enabled ~= false and (ne.keymaps or {})[a.key] or nil
  end
  return (config.options.keymaps or {})[a.name]
end

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

local mapped = {}   -- bufnr -> { [mode .. lhs] = { mode, lhs, prev } }

function M.attach(bufnr)
  mapped[bufnr] = mapped[bufnr] or {}
  -- mode .. lhs -> the actions on that key, in M.list's order
  local keys, order = {}, {}
  for _, a in ipairs(M.list) do
    local lhs = lhs_of(a)
    if type(lhs) == "string" and lhs ~= "" then
      for _, mode in ipairs(a.modes) do
        local k = mode .. lhs
        if not keys[k] then
          keys[k] = { mode = mode, lhs = lhs, actions = {} }
          order[#order + 1] = k
        end
        table.insert(keys[k].actions, a)
      end
    end
  end
  for _, k in ipairs(order) do
    local m = keys[k]
    if mapped[bufnr][k] == nil then
      local prev = vim.fn.maparg(m.lhs, m.mode, false, true)
      if type(prev) == "table" and prev.desc and vim.startswith(prev.desc, "tricode: ") then
        prev = {}
      end
      mapped[bufnr][k] = { mode = m.mode, lhs = m.lhs, prev = prev }
      local descs = {}
      for _, a in ipairs(m.actions) do
        descs[#descs + 1] = a.desc
      end
      vim.keymap.set(m.mode, m.lhs, function()
        local tricode = require("tricode")
        for _, a in ipairs(m.actions) do
          if tricode.handles_key(bufnr, a.name) then
            return termcodes(("<Cmd>lua require('tricode')._key(%q)<CR>"):format(a.name))
          end
        end
        return fallback(prev, m.lhs)
      end, { buffer = bufnr, expr = true, replace_keycodes = false, silent = true,
             desc = "tricode: " .. table.concat(descs, "; or ") })
    end
  end
end

function M.detach(bufnr)
  local m = mapped[bufnr]
  mapped[bufnr] = nil
  if not m or not api.nvim_buf_is_valid(bufnr) then
    return
  end
  for _, k in pairs(m) do
    pcall(vim.keymap.del, k.mode, k.lhs, { buffer = bufnr })
    if type(k.prev) == "table" and k.prev.buffer == 1 then
      pcall(vim.fn.mapset, k.mode, false, k.prev)    -- restore a buffer-local mapping we shadowed
    end
  end
end

return M
