-- :checkhealth tricode
local M = {}

function M.check()
  local health = vim.health
  local config = require("tricode.config")
  local lsp = require("tricode.lsp")
  local tricode = require("tricode")
  health.start("tricode")
  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim 0.10 or newer is needed")
  end
  if tricode.did_setup then
    health.ok("setup() was called")
  else
    health.warn("setup() was not called", { 'add require("tricode").setup() to your config' })
  end
  local cmd = lsp.cmd()
  if not cmd then
    health.error("`tricode` is not on $PATH", { "install tricode (make install in its repository)",
      "or set cmd = { '/path/to/.venv/bin/tricode', 'lsp' } in setup()" })
  elseif type(cmd) == "function" then
    health.ok("server command: a Lua function (in-process server)")
  elseif vim.fn.executable(cmd[1]) == 1 then
    health.ok("server command: " .. table.concat(cmd, " "))
  else
    health.error("server command is not executable: " .. tostring(cmd[1]))
  end
  local engine = tricode.engine()
  health.info(("ghost text: %s (%s)"):format(tricode.is_enabled(0) and "on" or "off",
    engine.name == "builtin" and "vim.lsp.inline_completion" or "extmarks drawn by the plugin"))
  local ne = config.options.next_edit or {}
  health.info(("next edits: %s (debounce %s ms, keys: accept %s, dismiss %s)"):format(
    ne.enabled ~= false and "on" or "off", tostring(ne.debounce_ms), tostring((ne.keymaps or {}).accept),
    tostring((ne.keymaps or {}).dismiss)))
  health.info("filetypes: " .. table.concat(config.options.filetypes, ", "))
  local clients = require("tricode.util").get_clients({ name = lsp.name })
  if #clients == 0 then
    health.info("no tricode server is running (open a file of a configured filetype)")
  end
  for _, c in ipairs(clients) do
    health.info(("client %d: root %s, position encoding %s"):format(c.id, tostring(c.root_dir or c.config.root_dir),
      tostring(c.offset_encoding)))
    if not require("tricode.next_edit").supported(c) then
      health.warn(("client %d: the server does not announce experimental.copilotInlineEdit: no next edits"):format(c.id),
        { "update tricode (next-edit suggestions need a newer `tricode lsp`)" })
    end
    local st = require("tricode.status").cache[c.id]
    if st and st.result then
      health.ok(("daemon %s: model %s on %s"):format(tostring(st.result.state), tostring(st.result.model),
        tostring(st.result.device)))
    end
  end
end

return M
