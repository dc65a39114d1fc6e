-- Refactor commands: workspace/executeCommand `tricode.refactor` {action, uri, range, instruction?}.
-- The server generates, then applies the result with workspace/applyEdit (Neovim's handler edits the
-- buffer); the command answers {applied, failure_reason, action, text, mode, tokens, total_ms, ...}.
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local util = require("tricode.util")

local M = {}
local api = vim.api

M.COMMAND = "tricode.refactor"
M.actions = {
  rewrite = "Rewrite selection as instructed",
  docstring = "Add docstring",
  type_hints = "Add type hints",
  complete_body = "Complete this function body",
}

M.last = nil        -- the last result: { action, err, result, bufnr }
M.running = 0

local function say(msg, level)
  if config.options.notify then
    vim.notify(msg, level or vim.log.levels.INFO)
  end
end

--- The byte range {srow, scol, erow, ecol} (0-based, end exclusive) of a command's range: the visual
--- selection when the command came from it (characterwise or linewise), else whole lines.
function M.command_range(bufnr, opts)
  if not opts or (opts.range or 0) == 0 then
    local cur = api.nvim_win_get_cursor(0)
    return { cur[1] - 1, cur[2], cur[1] - 1, cur[2] }      -- empty: the server takes the function
  end
  local l1, l2 = opts.line1, opts.line2
  local vs, ve = vim.fn.getpos("'<"), vim.fn.getpos("'>")
  if vim.fn.visualmode() == "v" and vs[2] == l1 and ve[2] == l2 and vs[2] > 0 then
    local last = util.line(bufnr, l2 - 1)
    local ecol = math.min(ve[3], #last)                     -- '> is 1-based and inclusive
    if ecol > 0 then
      local ch = vim.fn.strpart(last, ecol - 1, 1, true)
      ecol = ecol - 1 + #ch
    end
    return { l1 - 1, math.max(vs[3] - 1, 0), l2 - 1, ecol }
  end
  return { l1 - 1, 0, l2 - 1, #util.line(bufnr, l2 - 1) }
end

--- Run `action` on a byte range of `bufnr`. opts: { range = {srow, scol, erow, ecol}, instruction,
--- on_done = function(err, result) }.
function M.run(action, opts)
  opts = opts or {}
  local bufnr = opts.bufnr or api.nvim_get_current_buf()
  local client = lsp.client(bufnr)
  if not client then
    say("tricode: no tricode server for this buffer", vim.log.levels.WARN)
    return false
  end
  local r = opts.range
  if not r then
    local cur = api.nvim_win_get_cursor(0)
    r = { cur[1] - 1, cur[2], cur[1] - 1, cur[2] }
  end
  local enc = client.offset_encoding or "utf-16"
  local arg = {
    action = action,
    uri = vim.uri_from_bufnr(bufnr),
    range = { start = util.position(bufnr, r[1], r[2], enc), ["end"] = util.position(bufnr, r[3], r[4], enc) },
  }
  if opts.instruction and opts.instruction ~= "" then
    arg.instruction = opts.instruction
  end
  local title = M.actions[action] or action
  M.running = M.running + 1
  say(("tricode: %s..."):format(title))
  local t0 = util.uv.hrtime()
  local ok = util.request(client, "workspace/executeCommand", { command = M.COMMAND, arguments = { arg } },
    function(err, result)
      M.running = M.running - 1
      M.last = { action = action, err = err, result = result, bufnr = bufnr,
                 ms = (util.uv.hrtime() - t0) / 1e6 }
      if err then
        say(("tricode: %s: %s"):format(title, err.message or vim.inspect(err)), vim.log.levels.ERROR)
      elseif type(result) == "table" and result.applied then
        say(("tricode: %s: applied (%s tokens, %s, %.1f s)"):format(title, tostring(result.tokens or "?"),
          tostring(result.mode or "?"), (tonumber(result.total_ms) or 0) / 1000))
      else
        say(("tricode: %s: not applied%s"):format(title, type(result) == "table" and result.failure_reason
          and (": " .. result.failure_reason) or ""), vim.log.levels.WARN)
      end
      if opts.on_done then
        opts.on_done(err, result)
      end
      api.nvim_exec_autocmds("User", { pattern = "TricodeRefactorDone", modeline = false,
                                        data = { action = action, err = err, result = result, bufnr = bufnr } })
    end, bufnr)
  if not ok then
    M.running = M.running - 1
    say("tricode: the server is not running", vim.log.levels.ERROR)
  end
  return ok
end

--- :[range]TricodeRefactor {instruction}
function M.command(opts)
  local bufnr = api.nvim_get_current_buf()
  local range = M.command_range(bufnr, opts)
  local instruction = vim.trim(opts.args or "")
  if instruction ~= "" then
    return M.run("rewrite", { bufnr = bufnr, range = range, instruction = instruction })
  end
  vim.ui.input({ prompt = "tricode: rewrite instruction: " }, function(input)
    if input and vim.trim(input) ~= "" then
      M.run("rewrite", { bufnr = bufnr, range = range, instruction = vim.trim(input) })
    end
  end)
end

--- :[range]TricodeAction {action} [instruction]
function M.action_command(opts)
  local bufnr = api.nvim_get_current_buf()
  local action, rest = (opts.args or ""):match("^%s*(%S+)%s*(.-)%s*$")
  if not action or not M.actions[action] then
    say("tricode: :TricodeAction needs one of: " .. table.concat(vim.tbl_keys(M.actions), ", "),
      vim.log.levels.ERROR)
    return
  end
  if action == "rewrite" then
    return M.command({ range = opts.range, line1 = opts.line1, line2 = opts.line2, args = rest })
  end
  return M.run(action, { bufnr = bufnr, range = M.command_range(bufnr, opts) })
end

function M.complete_action(arglead)
  return vim.tbl_filter(function(a)
    return vim.startswith(a, arglead)
  end, vim.tbl_keys(M.actions))
end

return M
