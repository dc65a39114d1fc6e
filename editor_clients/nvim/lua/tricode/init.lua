-- tricode for Neovim: a thin client over `tricode lsp` (see :help tricode).
--
--   require("tricode").setup(opts)   start the server for the configured filetypes, ghost text, keys
--   :TricodeRefactor {instruction}   rewrite the range (or the function at the cursor) as instructed
--   :TricodeAction {action}          docstring | type_hints | complete_body | rewrite
--   :TricodeStatus[!]                daemon and server state
--   :TricodeToggle                   ghost text (and next edits) on/off
--   :TricodeNextEdit / :TricodeNextEditAccept / :TricodeNextEditJump / :TricodeNextEditDismiss
--                                    ask for / apply / go to / drop the next-edit suggestion
--   require("tricode").statusline()  a statusline component
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local util = require("tricode.util")

local M = {}
local api = vim.api

M.version = "0.1.0"
M.enabled = true          -- :TricodeToggle
M.did_setup = false

local augroup

-- -- engines ------------------------------------------------------------------------------------------

--- The ghost text implementation in use: tricode.builtin (Neovim 0.12+) or tricode.ghost (extmarks).
function M.engine()
  local impl = config.options.ghost_text.implementation
  local builtin = require("tricode.builtin")
  if impl ~= "extmark" and builtin.available() then
    return builtin
  end
  if impl == "builtin" and not M._warned_builtin then
    M._warned_builtin = true
    vim.notify("tricode: vim.lsp.inline_completion needs Neovim 0.12; drawing ghost text with extmarks",
      vim.log.levels.WARN)
  end
  return require("tricode.ghost")
end

function M.is_enabled(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  return M.enabled and config.options.ghost_text.enabled ~= false and config.options.settings.enabled ~= false
    and vim.b[bufnr].tricode_enabled ~= false
end

--- Whether a key of keymaps.lua acts now (else it falls through to its previous meaning).
function M.handles_key(bufnr, action)
  if action == "next_edit_accept" or action == "next_edit_dismiss" then
    return require("tricode.next_edit").visible(bufnr)
  end
  local engine = M.engine()
  if engine.visible(bufnr) then
    return true
  end
  return (action == "next" or action == "prev") and engine.name == "extmark" and M.is_enabled(bufnr)
end

function M._key(action)
  if action == "next_edit_accept" then
    return require("tricode.next_edit").jump_or_accept()
  elseif action == "next_edit_dismiss" then
    return require("tricode.next_edit").dismiss()
  end
  local engine = M.engine()
  if action == "accept" then
    return engine.accept("all")
  elseif action == "accept_word" then
    return engine.accept("word")
  elseif action == "accept_line" then
    return engine.accept("line")
  elseif action == "next" then
    return engine.cycle(1)
  elseif action == "prev" then
    return engine.cycle(-1)
  elseif action == "dismiss" then
    return engine.dismiss()
  end
end

--- Public actions (usable in your own mappings: vim.keymap.set("i", "<C-l>", require("tricode").accept)).
function M.accept()
  return M._key("accept")
end

function M.accept_word()
  return M._key("accept_word")
end

function M.accept_line()
  return M._key("accept_line")
end

function M.next()
  return M._key("next")
end

function M.prev()
  return M._key("prev")
end

function M.dismiss()
  return M._key("dismiss")
end

function M.visible(bufnr)
  return M.engine().visible(bufnr or api.nvim_get_current_buf())
end

--- The suggestion shown by the extmark renderer ({text, row, col, ...}), nil otherwise.
function M.current_suggestion(bufnr)
  return M.engine().current(bufnr)
end

-- -- enable / disable -----------------------------------------------------------------------------------

function M.set_enabled(on)
  M.enabled = on
  local engine = M.engine()
  if not on then
    engine.clear_all()
    require("tricode.next_edit").clear_all()
  end
  for _, c in ipairs(util.get_clients({ name = lsp.name })) do
    for bufnr in pairs(c.attached_buffers or {}) do
      if engine.set_enabled then
        engine.set_enabled(bufnr, M.is_enabled(bufnr))
      end
    end
  end
  pcall(vim.cmd.redrawstatus)
end

function M.toggle()
  M.set_enabled(not M.enabled)
  vim.notify("tricode: ghost text " .. (M.enabled and "on" or "off"))
  return M.enabled
end

-- -- status -----------------------------------------------------------------------------------------------

function M.statusline()
  local ok, text = pcall(require("tricode.status").statusline)
  return ok and text or ""
end

--- tricode/status of the buffer's server; cb(err, result).
function M.status(cb, bufnr)
  local client = lsp.client(bufnr or 0) or lsp.client()
  if not client then
    cb({ message = "no tricode server is running" }, nil)
    return
  end
  require("tricode.status").request(client, cb)
end

-- -- refactors -----------------------------------------------------------------------------------------

--- Run a refactor: action = "rewrite" | "docstring" | "type_hints" | "complete_body";
--- opts = { range = {srow, scol, erow, ecol} (0-based bytes), instruction, on_done = fn(err, result) }.
function M.refactor(action, opts)
  return require("tricode.refactor").run(action, opts)
end

-- -- set-up ------------------------------------------------------------------------------------------

local function on_attach(args)
  local client = vim.lsp.get_client_by_id(args.data and args.data.client_id or -1)
  if not client or client.name ~= lsp.name then
    return
  end
  local bufnr = args.buf
  if config.options.ghost_text.enabled ~= false then
    M.engine().attach(bufnr)
  end
  if config.options.next_edit.enabled ~= false then
    require("tricode.next_edit").attach(bufnr)
  end
  require("tricode.keymaps").attach(bufnr)
  require("tricode.prefetch").attach(bufnr)
  require("tricode.status").request(client)
end

local function on_detach(args)
  local client = vim.lsp.get_client_by_id(args.data and args.data.client_id or -1)
  if client and client.name ~= lsp.name then
    return
  end
  local bufnr = args.buf
  vim.schedule(function()
    if lsp.client(bufnr) then
      return                          -- another tricode client still serves the buffer
    end
    M.engine().detach(bufnr)
    require("tricode.next_edit").detach(bufnr)
    require("tricode.keymaps").detach(bufnr)
    require("tricode.prefetch").detach(bufnr)
  end)
end

function M.create_commands()
  api.nvim_create_user_command("TricodeRefactor", function(o)
    require("tricode.refactor").command(o)
  end, { nargs = "*", range = true, desc = "tricode: rewrite the range (or the function at the cursor) as instructed" })
  api.nvim_create_user_command("TricodeAction", function(o)
    require("tricode.refactor").action_command(o)
  end, { nargs = "+", range = true, desc = "tricode: run a refactor action on the range",
         complete = function(lead, line)
           local after = line:match("TricodeAction!?%s+(.*)$")
           if after and not after:find("%s") then
             return require("tricode.refactor").complete_action(lead)
           end
           return {}
         end })
  api.nvim_create_user_command("TricodeStatus", function(o)
    require("tricode.status").show(o.bang)
  end, { bang = true, nargs = 0, desc = "tricode: show the daemon and server state" })
  api.nvim_create_user_command("TricodeToggle", function()
    M.toggle()
  end, { nargs = 0, desc = "tricode: ghost text on/off" })
  local ne = function(f, what)
    return function()
      if not require("tricode.next_edit")[f]() then
        vim.notify("tricode: " .. what, vim.log.levels.INFO)
      end
    end
  end
  api.nvim_create_user_command("TricodeNextEdit", ne("trigger", "no tricode server for this buffer"),
    { nargs = 0, desc = "tricode: ask for the next edit at the cursor now" })
  api.nvim_create_user_command("TricodeNextEditAccept", ne("accept", "no next edit to apply"),
    { nargs = 0, desc = "tricode: apply the next edit shown" })
  api.nvim_create_user_command("TricodeNextEditJump", ne("jump", "no next edit shown"),
    { nargs = 0, desc = "tricode: move the cursor to the next edit shown" })
  api.nvim_create_user_command("TricodeNextEditDismiss", ne("dismiss", "no next edit shown"),
    { nargs = 0, desc = "tricode: drop the next edit shown" })
end

--- Set up the plugin. Safe to call again: the options are the defaults with `opts` deep-merged over
--- them, autocommands are replaced, running servers get the new settings.
function M.setup(opts)
  config.merge(opts)
  if vim.fn.has("nvim-0.10") == 0 then
    vim.notify("tricode: needs Neovim 0.10 or newer", vim.log.levels.ERROR)
    return M
  end
  api.nvim_set_hl(0, "TricodeSuggestion", { link = "Comment", default = true })
  require("tricode.next_edit").set_highlights()
  M.create_commands()
  lsp.register()
  augroup = api.nvim_create_augroup("tricode", { clear = true })
  api.nvim_create_autocmd("FileType", {
    group = augroup,
    pattern = config.options.filetypes,
    callback = function(args)
      lsp.start(args.buf)
    end,
  })
  api.nvim_create_autocmd("LspAttach", { group = augroup, callback = on_attach })
  api.nvim_create_autocmd("LspDetach", { group = augroup, callback = on_detach })
  api.nvim_create_autocmd("LspProgress", { group = augroup, callback = function(args)
    require("tricode.status").on_progress(args)
  end })
  api.nvim_create_autocmd("ColorScheme", { group = augroup, callback = function()
    api.nvim_set_hl(0, "TricodeSuggestion", { link = "Comment", default = true })
    require("tricode.next_edit").set_highlights()
  end })
  if M.did_setup then
    lsp.push_settings()
  end
  M.did_setup = true
  -- buffers that are already open
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) and lsp.wanted(bufnr) then
      lsp.start(bufnr)
    end
  end
  return M
end

return M
