-- tricode: the user commands exist as soon as the plugin is on 'runtimepath' (so that plugin managers
-- can load it lazily on them); the server starts once require("tricode").setup() has been called.
if vim.g.loaded_tricode or vim.fn.has("nvim-0.10") == 0 then
  return
end
vim.g.loaded_tricode = true
require("tricode").create_commands()
