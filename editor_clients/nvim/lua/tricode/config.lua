-- Defaults and the merged configuration of the tricode plugin (see :help tricode-config).
local M = {}

M.defaults = {
  -- The language server command. nil: `tricode lsp` with `tricode` found on $PATH.
  cmd = nil,
  -- Extra environment for the server (and the daemon it starts), e.g. { TRICODE_MODEL = "/path" }.
  cmd_env = nil,
  -- Filetypes that get the server.
  filetypes = {
    "python", "lua", "javascript", "javascriptreact", "typescript", "typescriptreact", "rust", "go",
    "c", "cpp", "java", "sh", "bash", "zsh", "ruby", "php", "kotlin", "scala", "swift", "cs", "toml",
    "yaml", "json", "html", "css", "sql", "vim", "make", "cmake",
  },
  -- One server per root directory: the closest parent that holds one of these (else the file's folder).
  root_markers = { ".git", "pyproject.toml", "setup.py", "setup.cfg", "package.json", "Cargo.toml", "go.mod",
                   "Makefile", ".hg" },
  -- Server settings (lsp/SETTINGS.md): sent as initializationOptions and as the `tricode` section
  -- of workspace/configuration and workspace/didChangeConfiguration.
  settings = {},
  ghost_text = {
    enabled = true,
    -- "auto": Neovim's own vim.lsp.inline_completion when it exists (0.12+), else the plugin's extmarks.
    -- "builtin" or "extmark" force one of them.
    implementation = "auto",
    debounce_ms = 75,          -- wait this long after the last keystroke before asking (extmark renderer)
    hl_group = "TricodeSuggestion",
    hide_during_completion = true, -- no request and no ghost text while the popup menu is visible
  },
  -- Insert-mode keys; false (or "") turns one off. accept falls through to the key's previous meaning
  -- when no suggestion is visible; the others only act while one is.
  keymaps = {
    accept = "<Tab>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
  -- Next-edit suggestions (:help tricode-next-edit): after an edit, the server's prediction of the next
  -- change near the cursor (textDocument/copilotInlineEdit), drawn as a preview.
  next_edit = {
    enabled = true,
    debounce_ms = 100,         -- wait this long after the last change before asking
    prefetch = true,           -- after an accept, ask for the next place at once
    sign_text = "»",           -- in the sign column of the edit's first line; "" for none
    hint = true,               -- "↓ next edit: line N" at the end of the cursor line when the edit is elsewhere
    -- Keys (false or "" turns one off). accept (normal and insert mode): jump to the edit when the
    -- cursor is not on its lines, else apply it; in insert mode ghost text comes first. dismiss: normal
    -- mode. Both fall through to the key's previous meaning when no next edit is shown.
    keymaps = {
      accept = "<Tab>",
      dismiss = "<Esc>",
    },
  },
  -- Prefetch: when the cursor rests this long (ms) on a new line, the daemon prepares a completion
  -- there (the tricode/cursorIdle notification); 0 turns it off.
  prefetch_idle_ms = 300,
  -- The statusline refreshes the server's tricode/status at most this often (ms).
  status_interval_ms = 5000,
  -- Echo refactor progress and results.
  notify = true,
}

M.options = vim.deepcopy(M.defaults)

local function check(opts)
  local ok, err = pcall(function()
    local v = vim.validate
    if vim.fn.has("nvim-0.11") == 1 then
      v("cmd", opts.cmd, { "table", "string", "function" }, true)
      v("cmd_env", opts.cmd_env, "table", true)
      v("filetypes", opts.filetypes, "table")
      v("root_markers", opts.root_markers, "table")
      v("settings", opts.settings, "table")
      v("ghost_text", opts.ghost_text, "table")
      v("keymaps", opts.keymaps, { "table", "boolean" })
      v("next_edit", opts.next_edit, "table")
    else
      v({ cmd = { opts.cmd, { "table", "string", "function" }, true }, cmd_env = { opts.cmd_env, "table", true },
          filetypes = { opts.filetypes, "table" }, root_markers = { opts.root_markers, "table" },
          settings = { opts.settings, "table" }, ghost_text = { opts.ghost_text, "table" },
          keymaps = { opts.keymaps, { "table", "boolean" } }, next_edit = { opts.next_edit, "table" } })
    end
  end)
  if not ok then
    vim.notify("tricode: invalid setup() option: " .. tostring(err), vim.log.levels.ERROR)
    return false
  end
  local impl = opts.ghost_text.implementation
  if impl ~= "auto" and impl ~= "builtin" and impl ~= "extmark" then
    vim.notify("tricode: ghost_text.implementation must be auto, builtin or extmark; using auto",
      vim.log.levels.WARN)
    opts.ghost_text.implementation = "auto"
  end
  return true
end

local function is_list(t)
  return type(t) == "table" and (vim.islist or vim.tbl_islist)(t) and next(t) ~= nil
end

--- Deep merge (like vim.tbl_deep_extend("force", ...)) that replaces lists as a whole on every
--- Neovim version (0.10's tbl_deep_extend merges lists by index).
function M.deep_merge(base, over)
  for k, v in pairs(over) do
    if type(v) == "table" and not is_list(v) and type(base[k]) == "table" and not is_list(base[k]) then
      base[k] = M.deep_merge(base[k], v)
    else
      base[k] = vim.deepcopy(v)
    end
  end
  return base
end

--- The defaults with `opts` deep-merged over them (lists are replaced, not merged). Each call starts
--- from the defaults, so calling setup() again with the same options changes nothing.
function M.merge(opts)
  local merged = M.deep_merge(vim.deepcopy(M.defaults), opts or {})
  if merged.keymaps == false then
    merged.keymaps = {}
  end
  if type(merged.next_edit) == "table" and merged.next_edit.keymaps == false then
    merged.next_edit.keymaps = {}
  end
  if check(merged) then
    M.options = merged
  end
  return M.options
end

function M.reset()
  M.options = vim.deepcopy(M.defaults)
end

return M
