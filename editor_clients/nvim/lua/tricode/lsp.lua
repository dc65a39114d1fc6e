-- Starting `tricode lsp` and talking to it: one client per root directory.
local config = require("tricode.config")
local util = require("tricode.util")

local M = {}
M.name = "tricode"

local warned_missing = false

--- The server command: opts.cmd (a list, a path to the tricode executable, or a function as
--- vim.lsp.start takes it: an in-process server), else `tricode lsp` with tricode found on $PATH.
function M.cmd()
  local cmd = config.options.cmd
  if type(cmd) == "function" then
    return cmd
  end
  if type(cmd) == "string" then
    cmd = { cmd, "lsp" }
  end
  if type(cmd) == "table" and #cmd > 0 then
    return vim.deepcopy(cmd)
  end
  local exe = vim.fn.exepath("tricode")
  if exe == "" then
    return nil
  end
  return { exe, "lsp" }
end

function M.capabilities()
  local caps = vim.lsp.protocol.make_client_capabilities()
  caps.textDocument = caps.textDocument or {}
  -- LSP 3.18: Neovim 0.12 announces it itself; before that the plugin renders the items.
  caps.textDocument.inlineCompletion = caps.textDocument.inlineCompletion or { dynamicRegistration = false }
  caps.experimental = caps.experimental or {}
  return caps
end

--- The configuration handed to vim.lsp.start (without root_dir).
function M.base_config()
  local o = config.options
  return {
    name = M.name,
    cmd = M.cmd(),
    cmd_env = o.cmd_env,
    filetypes = o.filetypes,
    root_markers = o.root_markers,
    init_options = vim.deepcopy(o.settings),
    settings = { tricode = vim.deepcopy(o.settings) },
    capabilities = M.capabilities(),
  }
end

--- Register the configuration as vim.lsp.config("tricode") (0.11+), so that users may also extend it
--- there (vim.lsp.config("tricode", {...})) or use vim.lsp.enable("tricode").
function M.register()
  if vim.lsp.config == nil or type(vim.lsp.config) ~= "table" and type(vim.lsp.config) ~= "function" then
    return
  end
  local ok, err = pcall(vim.lsp.config, M.name, M.base_config())
  if not ok then
    vim.notify("tricode: vim.lsp.config failed: " .. tostring(err), vim.log.levels.WARN)
  end
end

local function resolved_config()
  local cfg = M.base_config()
  if vim.lsp.config ~= nil then
    local ok, r = pcall(function()
      return vim.lsp.config[M.name]
    end)
    if ok and type(r) == "table" then
      -- the user's own vim.lsp.config("tricode", ...) (and "*") on top of ours
      cfg = vim.tbl_deep_extend("force", cfg, r)
    end
  end
  return cfg
end

function M.root_dir(bufnr)
  local markers = config.options.root_markers
  local root
  if vim.fs.root then
    root = vim.fs.root(bufnr, markers)
  else
    local name = vim.api.nvim_buf_get_name(bufnr)
    local found = vim.fs.find(markers, { path = vim.fs.dirname(name), upward = true })[1]
    root = found and vim.fs.dirname(found)
  end
  if not root then
    local name = vim.api.nvim_buf_get_name(bufnr)
    root = name ~= "" and vim.fs.dirname(name) or vim.fn.getcwd()
  end
  return root
end

--- Whether the buffer should get the server: a file of a configured filetype.
function M.wanted(bufnr)
  if not vim.api.nvim_buf_is_valid(bufnr) or vim.bo[bufnr].buftype ~= "" then
    return false
  end
  if vim.api.nvim_buf_get_name(bufnr) == "" then
    return false
  end
  return vim.tbl_contains(config.options.filetypes, vim.bo[bufnr].filetype)
end

--- Start (or reuse) the client for `bufnr`; returns the client id.
function M.start(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if not M.wanted(bufnr) then
    return nil
  end
  local cfg = resolved_config()
  if not cfg.cmd then
    if not warned_missing then
      warned_missing = true
      vim.notify("tricode: `tricode` is not on $PATH; install it or set cmd in require('tricode').setup()",
        vim.log.levels.WARN)
    end
    return nil
  end
  cfg.root_dir = M.root_dir(bufnr)
  cfg.filetypes, cfg.root_markers = nil, nil
  return vim.lsp.start(cfg, { bufnr = bufnr })
end

--- The tricode client attached to `bufnr` (any tricode client when `bufnr` is nil).
function M.client(bufnr)
  local filter = { name = M.name }
  if bufnr ~= nil then
    filter.bufnr = bufnr == 0 and vim.api.nvim_get_current_buf() or bufnr
  end
  for _, c in ipairs(util.get_clients(filter)) do
    if not util.is_stopped(c) then
      return c
    end
  end
end

--- Send feedback: event = "accepted" | "rejected" | "partiallyAccepted".
function M.feedback(client, event, params)
  if client and not util.is_stopped(client) then
    util.notify(client, "tricode/" .. event, params)
  end
  M.last_feedback = { event = event, params = params }
end

--- Push the current settings to running clients (after setup() is called again).
function M.push_settings()
  for _, c in ipairs(util.get_clients({ name = M.name })) do
    c.settings = { tricode = vim.deepcopy(config.options.settings) }
    util.notify(c, "workspace/didChangeConfiguration", { settings = c.settings })
  end
end

return M
