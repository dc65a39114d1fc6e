-- End-to-end test of the Neovim client in a real headless Neovim, against a real `tricode lsp` and
-- daemon on a real model. Run from anywhere:
--
--   nvim --headless --clean -c "luafile tests/nvim/test_inline.lua"
--
-- (not `nvim -l`: insert mode never starts there). It types into a Python buffer, waits for the ghost
-- text, accepts a word and then the rest with <Tab>, dismisses another suggestion with <C-]>, checks
-- the feedback the daemon counted, <Tab> falling through, the statusline and :TricodeStatus, then runs
-- :TricodeRefactor and :TricodeAction docstring on ranges and checks the buffer against the edit the
-- server reports. Exit code 0 when everything passed; one "TRICODE-NVIM:" line per step.
--
-- Environment (all optional):
--   TRICODE_NVIM_TRICODE   the tricode executable (default: <repo>/.venv/bin/tricode)
--   TRICODE_NVIM_WORKDIR   where the Python files are written (default: under a new /tmp folder)
--   TRICODE_SOCKET, XDG_RUNTIME_DIR, XDG_STATE_HOME, XDG_CONFIG_HOME
--                          the daemon's private socket and folders; when TRICODE_SOCKET is not set the
--                          script makes its own under /tmp, so it never talks to the user's daemon
--   TRICODE_MODEL          the model (default: the embedded one)
--   TRICODE_NVIM_TIMEOUT_S overall limit (default 240)
--   TRICODE_NVIM_RESULT    also append the log lines to this file
-- The daemon that the server starts is stopped at the end (`tricode daemon stop`), pass or fail.

local api = vim.api
local here = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h")
local H = dofile(here .. "/harness.lua")
local log, check, wait_for, sleep, type_keys, chars = H.log, H.check, H.wait_for, H.sleep, H.type_keys, H.chars

local repo = vim.fn.fnamemodify(here, ":h:h")
local plugin = repo .. "/editor_clients/nvim"
-- a private socket, XDG dirs and workdir; the daemon stopped and the server's log shown on failure
local T = H.tricode_env(repo)
local tricode_exe, env, workdir, lsp_log = T.tricode, T.env, T.workdir, T.lsp_log

-- -- helpers ---------------------------------------------------------------------------------------------

local function status()
  local res
  require("tricode").status(function(err, r)
    res = (not err) and r or { state = "error: " .. tostring(err and err.message) }
  end)
  return wait_for("tricode/status", 20, function()
    return res
  end, 20)
end

local function feedback()
  local fb = (status().daemon or {}).feedback or {}
  return { accepted = fb.accepted or 0, partial = fb.partial or 0, rejected = fb.rejected or 0 }
end

local function buf_text(bufnr)
  return table.concat(api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n")
end

--- Run an Ex command that starts a refactor; the TricodeRefactorDone data.
local function refactor(cmd)
  local done
  local id = api.nvim_create_autocmd("User", { pattern = "TricodeRefactorDone", once = true, callback = function(a)
    done = a.data
  end })
  vim.cmd(cmd)
  wait_for("the refactor (" .. cmd .. ")", 180, function()
    return done
  end, 100)
  pcall(api.nvim_del_autocmd, id)
  return done
end

-- -- the test ------------------------------------------------------------------------------------------

local SAMPLE = {
  "import os",
  "",
  "",
  "def add(a, b):",
  "    return a + b",
}
-- Places to type at (appended to the buffer; the last line is where the keys go) and the keys. The
-- steps that need a suggestion take the next place where the model suggests something.
local PROMPTS = {
  { lines = { "", "", "def read_file(path):", "    with open(path) as f:", "        " }, typed = "return f." },
  { lines = { "", "", "def join(folder, name):", "    return " }, typed = "os.path.jo" },
  { lines = { "", "", "def is_even(n):", "    return n % " }, typed = "2 ==" },
  { lines = { "", "", "for i in range(10):", "    print(" }, typed = "i" },
}
local next_prompt = 1

H.run(function()
  log("nvim %s, plugin %s", tostring(vim.version()), plugin)
  log("tricode %s, socket %s, model %s", tricode_exe, env.TRICODE_SOCKET, env.TRICODE_MODEL or "(embedded)")
  check(vim.fn.executable(tricode_exe) == 1, "tricode is not executable: %s", tricode_exe)

  vim.opt.runtimepath:prepend(plugin)
  vim.cmd("runtime! plugin/tricode.lua")
  local tricode = require("tricode")
  local opts = {
    cmd = { tricode_exe, "lsp", "--log-level", "info", "--log-file", lsp_log },
    cmd_env = env,
    filetypes = { "python" },
    -- a long deadline and a small budget: the same suggestion however busy the CPU is
    settings = { debounce_ms = 0, deadline_ms = 60000, max_tokens = 16, max_lines = 3 },
    -- the plugin's own renderer on every Neovim version (0.12's built-in one draws elsewhere)
    ghost_text = { implementation = "extmark", debounce_ms = 40 },
  }
  tricode.setup(opts)
  tricode.setup(opts)           -- idempotent
  check(#api.nvim_get_autocmds({ group = "tricode", event = "FileType" }) == 1, "setup() twice: FileType autocmds")
  for _, c in ipairs({ "TricodeRefactor", "TricodeAction", "TricodeStatus", "TricodeToggle" }) do
    check(vim.fn.exists(":" .. c) == 2, ":%s is missing", c)
  end
  log("OK setup (ghost text: %s)", tricode.engine().name)

  local tags = plugin .. "/doc/tags"
  local had_tags = vim.fn.filereadable(tags) == 1
  vim.cmd("helptags " .. vim.fn.fnameescape(plugin .. "/doc"))
  local help_ok = pcall(vim.cmd, "help tricode")
  if not had_tags then
    vim.fn.delete(tags)            -- leave the checkout as it was
  end
  check(help_ok, ":help tricode failed")
  vim.cmd("helpclose")
  log("OK :help tricode")

  local file = workdir .. "/sample.py"
  vim.fn.writefile(SAMPLE, file)
  vim.cmd("edit " .. vim.fn.fnameescape(file))
  local bufnr = api.nvim_get_current_buf()
  check(vim.bo.filetype == "python", "filetype %s", vim.bo.filetype)
  local client = wait_for("the tricode client", 30, function()
    local c = vim.lsp.get_clients({ bufnr = bufnr, name = "tricode" })[1]
    return c and c.initialized and c
  end)
  log("OK client %d attached (root %s, position encoding %s)", client.id, tostring(client.root_dir),
    client.offset_encoding)

  -- one client per root: a second file in the same folder reuses it
  vim.fn.writefile({ "x = 1" }, workdir .. "/other.py")
  vim.cmd("edit " .. vim.fn.fnameescape(workdir .. "/other.py"))
  local other = api.nvim_get_current_buf()
  wait_for("the client on the second buffer", 10, function()
    return vim.lsp.buf_is_attached(other, client.id)
  end)
  check(#vim.lsp.get_clients({ name = "tricode" }) == 1, "a second client was started for the same root")
  vim.cmd("buffer " .. bufnr)
  log("OK one client for both files of the root")

  local last_state
  local st = wait_for("the daemon to be ready", 180, function()
    local s = status()
    if s.state ~= last_state then
      last_state = s.state
      log("daemon state: %s", tostring(s.state))
    end
    return s.state == "ready" and s
  end, 500)
  log("OK daemon ready: model %s on %s, inline mode %s", tostring(st.model), tostring(st.device), tostring(st.mode))
  local fb0 = feedback()

  -- type into a function body, one key at a time (each keystroke cancels the previous request)
  local function type_until_ghost(what)
    while next_prompt <= #PROMPTS do
      local p = PROMPTS[next_prompt]
      next_prompt = next_prompt + 1
      api.nvim_buf_set_lines(bufnr, -1, -1, false, p.lines)
      local row = api.nvim_buf_line_count(bufnr)
      api.nvim_win_set_cursor(0, { row, 0 })
      api.nvim_input("A")
      H.wait_mode("i")
      type_keys(chars(p.typed), 25)
      local line = H.line(bufnr, row - 1)
      check(line == p.lines[#p.lines] .. p.typed, "typed line is %q", line)
      log("typed %q", line)
      local got = wait_for(what, 90, function()
        local g = H.ghost(bufnr)
        if g then
          return { ghost = g }
        end
        local a = tricode.engine().stats.last_answer
        local cur = api.nvim_win_get_cursor(0)
        if a and a.tick == api.nvim_buf_get_changedtick(bufnr) and a.row == cur[1] - 1 and a.col == cur[2] then
          return { empty = true }          -- the server answered here without a suggestion
        end
      end)
      if got.ghost then
        return got.ghost, row, line
      end
      log("no suggestion after %q; the next place", line)
      type_keys({ "<Esc>" }, 50)
      H.wait_mode("n")
    end
    error("no suggestion at any of the places typed at", 0)
  end

  local ghost, row, line = type_until_ghost("ghost text")
  local last = row
  local sugg = tricode.current_suggestion(bufnr)
  check(sugg ~= nil, "an extmark but no suggestion")
  check(vim.trim(ghost.text) ~= "", "the ghost text is empty")
  check(ghost.row == last - 1 and ghost.col == #line, "ghost text at %d:%d, the cursor is at %d:%d", ghost.row,
    ghost.col, last - 1, #line)
  check(ghost.count == 1, "%d extmarks", ghost.count)
  check(ghost.hl == "TricodeSuggestion", "highlight %s", tostring(ghost.hl))
  log("OK ghost text %q (%s) %.2f s after the last key", ghost.text, tostring(ghost.pos),
    (tricode.engine().stats.last_ms or 0) / 1000)
  local full = sugg.text
  if sugg.replace == "" then
    check(ghost.text == full, "drawn %q, suggestion %q", ghost.text, full)
  end

  -- accept one word (when there is more than one), then the rest with <Tab>
  local expected = line .. full
  local word = require("tricode.suggestion").next_word(full)
  if word ~= full then
    type_keys({ "<M-Right>" }, 50)
    local now = H.line(bufnr, last - 1)
    check(now == line .. word, "after accept word the line is %q, expected %q", now, line .. word)
    local g2 = H.ghost(bufnr)
    check(g2 and g2.text == full:sub(#word + 1), "after accept word the ghost text is %q, expected %q",
      g2 and g2.text or "(none)", full:sub(#word + 1))
    log("OK accept word %q, ghost text now %q", word, g2.text)
  end
  type_keys({ "<Tab>" }, 50)
  local after = table.concat(api.nvim_buf_get_lines(bufnr, last - 1, -1, false), "\n")
  check(vim.startswith(after, expected), "after <Tab> the text is %q, expected %q", after, expected)
  local cur = api.nvim_win_get_cursor(0)
  local exp_lines = vim.split(expected, "\n", { plain = true })
  check(cur[1] == last + #exp_lines - 1 and cur[2] == #exp_lines[#exp_lines], "cursor at %d:%d after accept",
    cur[1], cur[2])
  check(api.nvim_get_mode().mode == "i", "not in insert mode after accept")
  log("OK <Tab> accepted the suggestion: %q", after)
  local fb1 = wait_for("the accepted feedback", 10, function()
    local fb = feedback()
    return fb.accepted == fb0.accepted + 1 and fb
  end, 200)
  log("OK the daemon counted it: %d accepted, %d partial, %d rejected", fb1.accepted, fb1.partial, fb1.rejected)

  type_keys({ "<Esc>" }, 50)
  H.wait_mode("n")
  check(H.ghost(bufnr) == nil, "ghost text left after <Esc>")
  log("OK <Esc> cleared the ghost text")

  -- another suggestion, dismissed with <C-]>
  local g = type_until_ghost("the second ghost text")
  type_keys({ "<C-]>" }, 50)
  check(H.ghost(bufnr) == nil, "the ghost text is still there after dismiss")
  wait_for("the rejected feedback", 10, function()
    return feedback().rejected == fb1.rejected + 1
  end, 200)
  sleep(300)
  check(H.ghost(bufnr) == nil, "a new suggestion came back without a keystroke")
  log("OK <C-]> dismissed %q and the daemon counted it", g.text)
  type_keys({ "<Esc>" }, 50)
  H.wait_mode("n")

  -- <Tab> without a suggestion is a plain <Tab>; :TricodeToggle turns ghost text off and on
  api.nvim_buf_set_lines(bufnr, -1, -1, false, { "" })
  api.nvim_win_set_cursor(0, { api.nvim_buf_line_count(bufnr), 0 })
  vim.bo[bufnr].expandtab = false
  vim.bo[bufnr].softtabstop = 0
  vim.cmd("TricodeToggle")
  check(not tricode.enabled and tricode.statusline() == "tricode off", "toggle off: statusline %q",
    tricode.statusline())
  local requests = tricode.engine().stats.requests
  api.nvim_input("A")
  type_keys({ "<Tab>" }, 200)
  local tabbed = H.line(bufnr, api.nvim_buf_line_count(bufnr) - 1)
  check(tabbed == "\t", "<Tab> without a suggestion gave %q", tabbed)
  check(H.ghost(bufnr) == nil and tricode.engine().stats.requests == requests, "requests while toggled off")
  type_keys({ "<Esc>" }, 50)
  vim.cmd("TricodeToggle")
  check(tricode.enabled, "toggle on")
  api.nvim_buf_set_lines(bufnr, -2, -1, false, {})
  log("OK <Tab> falls through without a suggestion; :TricodeToggle off and on")

  -- the statusline and :TricodeStatus
  local sl = wait_for("the statusline", 10, function()
    local s = tricode.statusline()
    return s:match("^tricode %a") and s
  end)
  local ok, err = pcall(vim.cmd, "TricodeStatus")
  check(ok, ":TricodeStatus: %s", tostring(err))
  log("OK statusline %q, :TricodeStatus", sl)

  -- Refactors: the server applies the model's answer with workspace/applyEdit, or declines an
  -- unusable answer (then nothing may change). At least one of the two must change the buffer.
  local applied = 0

  -- :TricodeRefactor on a range (lines 4-5: the function add): a replacement
  local before = buf_text(bufnr)
  local before_lines = api.nvim_buf_get_lines(bufnr, 0, -1, false)
  local done = refactor("4,5TricodeRefactor rename the function to add_numbers")
  if done.err then
    check(tostring(done.err.message):match("not usable"), "refactor error: %s", tostring(done.err.message))
    check(buf_text(bufnr) == before, "the buffer changed although the refactor failed")
    log("OK :4,5TricodeRefactor: the server declined (%s), the buffer is unchanged", done.err.message)
  else
    local r = done.result
    check(type(r) == "table" and r.applied == true, "refactor not applied: %s", vim.inspect(r))
    local want = { unpack(before_lines, 1, 3) }
    vim.list_extend(want, vim.split(r.text, "\n", { plain = true }))
    vim.list_extend(want, { unpack(before_lines, 6) })
    local got = buf_text(bufnr)
    check(got == table.concat(want, "\n"), "after the refactor the buffer is\n%s\nexpected\n%s", got,
      table.concat(want, "\n"))
    check(got ~= before, "the refactor changed nothing")
    log("OK :4,5TricodeRefactor applied (%s, %s tokens, %.1f s): lines 4-5 are now %q", tostring(r.mode),
      tostring(r.tokens), (tonumber(r.total_ms) or 0) / 1000, r.text)
    applied = applied + 1
    vim.cmd("silent undo")
    check(buf_text(bufnr) == before, "undo did not restore the buffer")
  end

  -- :TricodeAction docstring on the function add: an insertion
  before = buf_text(bufnr)
  done = refactor("4TricodeAction docstring")
  if done.err then
    check(tostring(done.err.message):match("not usable"), "docstring error: %s", tostring(done.err.message))
    check(buf_text(bufnr) == before, "the buffer changed although the docstring failed")
    log("OK :4TricodeAction docstring: the server declined (%s), the buffer is unchanged", done.err.message)
  else
    local r = done.result
    check(type(r) == "table" and r.applied == true, "docstring not applied: %s", vim.inspect(r))
    local got = buf_text(bufnr)
    local s, e = got:find(r.text, 1, true)
    check(s ~= nil, "the buffer does not hold the docstring %q", r.text)
    check(got:sub(1, s - 1) .. got:sub(e + 1) == before, "the buffer changed elsewhere:\n%s", got)
    check(H.line(bufnr, 4):match('^    """'), "line 5 is %q", H.line(bufnr, 4))
    log("OK :4TricodeAction docstring inserted %q", r.text)
    applied = applied + 1
  end
  check(applied > 0, "neither refactor was applied")
  log("OK refactors: %d of 2 applied", applied)

  local s2 = status()
  local comp = (s2.lsp or {}).completions or {}
  log("server: %s inline requests, %s suggestions, %s cancelled; client: %d requests, %d answers",
    tostring(comp.requests), tostring(comp.suggestions), tostring(comp.cancelled),
    tricode.engine().stats.requests, tricode.engine().stats.responses)
end, { timeout_s = 240 })
