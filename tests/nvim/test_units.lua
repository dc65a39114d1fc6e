-- The Neovim client against a scripted in-process language server (no daemon, no model): what it
-- draws, what each key inserts, what it sends. Run from anywhere:
--
--   nvim --headless --clean -c "luafile tests/nvim/test_units.lua"
--
-- The fake server negotiates UTF-16 positions and the buffers hold non-ASCII text, so position
-- conversions are exercised. Exit code 0 when everything passed; one "TRICODE-NVIM:" line per step.
local api = vim.api
local here = vim.fn.fnamemodify(debug.getinfo(1, "S").source:sub(2), ":p:h")
local H = dofile(here .. "/harness.lua")
local log, check, wait_for, sleep, type_keys, chars = H.log, H.check, H.wait_for, H.sleep, H.type_keys, H.chars
local plugin = vim.fn.fnamemodify(here, ":h:h") .. "/editor_clients/nvim"

-- -- the fake server ----------------------------------------------------------------------------------

local Fake = {
  encoding = "utf-16",
  items = {},            -- list of InlineCompletionItem, or function(params) -> result
  next_edit = nil,       -- the edit answered to textDocument/copilotInlineEdit (nil: none)
  delay_ms = 0,          -- answer inline requests after this long
  refactor_text = "",
  requests = {},         -- { id, method, params }
  notifications = {},    -- { method, params }
  cancelled = {},        -- request id -> true
}

local function fake_server(dispatchers)
  local closing = false
  local next_id = 0
  local srv = {}

  function srv.request(method, params, callback, notify_reply_callback)
    next_id = next_id + 1
    local id = next_id
    Fake.requests[#Fake.requests + 1] = { id = id, method = method, params = params }
    local function reply(err, result)
      if Fake.cancelled[id] then
        err, result = { code = -32800, message = "cancelled" }, nil
      end
      callback(err, result)
      if notify_reply_callback then
        notify_reply_callback(id)
      end
    end
    if method == "initialize" then
      vim.schedule(function()
        reply(nil, {
          capabilities = {
            positionEncoding = Fake.encoding,
            textDocumentSync = { openClose = true, change = 2 },
            inlineCompletionProvider = true,
            experimental = { copilotInlineEdit = true },
            executeCommandProvider = { commands = { "tricode.refactor", "tricode.accepted" } },
          },
          serverInfo = { name = "fake tricode" },
        })
      end)
    elseif method == "textDocument/inlineCompletion" then
      local result = type(Fake.items) == "function" and Fake.items(params) or { items = Fake.items }
      vim.defer_fn(function()
        reply(nil, result)
      end, Fake.delay_ms)
    elseif method == "textDocument/copilotInlineEdit" then
      local e = Fake.next_edit
      if e then
        e = vim.deepcopy(e)
        e.textDocument = params.textDocument
      end
      vim.schedule(function()
        reply(nil, { edits = { e } })
      end)
    elseif method == "workspace/executeCommand" and params.command == "tricode.accepted" then
      vim.schedule(function()
        reply(nil, nil)
      end)
    elseif method == "tricode/status" then
      vim.schedule(function()
        reply(nil, { state = "ready", mode = "spec", model = "fake", device = "cpu",
                     daemon = { feedback = {} }, connection = {}, lsp = { completions = {} } })
      end)
    elseif method == "workspace/executeCommand" then
      vim.schedule(function()
        local a = params.arguments[1]
        local edit = { changes = { [a.uri] = { { range = a.range, newText = Fake.refactor_text } } } }
        local res = dispatchers.server_request("workspace/applyEdit", { edit = edit, label = "fake" })
        reply(nil, { applied = res and res.applied, text = Fake.refactor_text, action = a.action })
      end)
    elseif method == "shutdown" then
      vim.schedule(function()
        reply(nil, nil)
      end)
    else
      vim.schedule(function()
        reply({ code = -32601, message = "no " .. method }, nil)
      end)
    end
    return true, id
  end

  function srv.notify(method, params)
    if method == "$/cancelRequest" then
      Fake.cancelled[params.id] = true
    end
    Fake.notifications[#Fake.notifications + 1] = { method = method, params = params }
    if method == "exit" then
      closing = true
      vim.schedule(function()
        dispatchers.on_exit(0, 15)
      end)
    end
    return true
  end

  function srv.is_closing()
    return closing
  end

  function srv.terminate()
    closing = true
  end

  return srv
end

local function count(method)
  local n = 0
  for _, r in ipairs(Fake.requests) do
    if r.method == method then
      n = n + 1
    end
  end
  return n
end

local function inline_requests()
  return count("textDocument/inlineCompletion")
end

--- The tricode/* feedback notifications sent since index `from` (not the prefetch's cursorIdle).
local function feedback_since(from)
  local out = {}
  for i = from + 1, #Fake.notifications do
    local n = Fake.notifications[i]
    if vim.startswith(n.method, "tricode/") and n.method ~= "tricode/cursorIdle" then
      out[#out + 1] = n
    end
  end
  return out
end

-- -- the test ------------------------------------------------------------------------------------------

H.run(function()
  log("nvim %s, plugin %s", tostring(vim.version()), plugin)
  local tmp = vim.fn.tempname()
  vim.fn.mkdir(tmp, "p")
  vim.opt.runtimepath:prepend(plugin)
  vim.cmd("runtime! plugin/tricode.lua")
  check(vim.fn.exists(":TricodeStatus") == 2, "plugin/tricode.lua did not define the commands")

  -- a mapping of <Tab> that exists before the plugin: <Tab> falls through to it
  vim.keymap.set("i", "<Tab>", function()
    return "PREV"
  end, { expr = true })

  local tricode = require("tricode")
  local opts = {
    cmd = fake_server,
    filetypes = { "python" },
    ghost_text = { implementation = "extmark", debounce_ms = 10 },
    notify = false,
  }
  tricode.setup(opts)
  tricode.setup(vim.deepcopy(opts))
  check(require("tricode.config").options.ghost_text.debounce_ms == 10, "options not merged")
  check(require("tricode.config").options.keymaps.accept == "<Tab>", "defaults not merged")
  check(#api.nvim_get_autocmds({ group = "tricode", event = "FileType" }) == 1, "duplicate autocmds")

  vim.cmd("edit " .. tmp .. "/t.py")
  local bufnr = api.nvim_get_current_buf()
  local client = wait_for("the fake client", 10, function()
    local c = vim.lsp.get_clients({ bufnr = bufnr, name = "tricode" })[1]
    return c and c.initialized and c
  end)
  check(client.offset_encoding == "utf-16", "encoding %s", tostring(client.offset_encoding))
  local init = Fake.requests[1].params
  check(init.capabilities.textDocument.inlineCompletion ~= nil, "the client does not announce inlineCompletion")
  check(type(init.initializationOptions) == "table", "no initializationOptions")
  check(#vim.tbl_filter(function(m)
    return m.lhs == "<Tab>"
  end, api.nvim_buf_get_keymap(bufnr, "i")) == 1, "the <Tab> mapping is not buffer-local once")
  log("OK setup twice, client attached (utf-16), keys mapped")

  -- 1. a multi-line suggestion: drawn as virtual text + virtual lines; accept line, word, rest
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "def f():", "    s = 'é😀'" })
  Fake.items = { { insertText = " + 'ü'\n    g(s)\nreturn s" } }
  api.nvim_win_set_cursor(0, { 2, 0 })
  local fb0 = #Fake.notifications
  api.nvim_input("A")
  local g = wait_for("ghost text", 5, function()
    return H.ghost(bufnr)
  end)
  local line2 = H.line(bufnr, 1)
  check(g.row == 1 and g.col == #line2, "ghost at %d:%d", g.row, g.col)
  check(g.first == " + 'ü'" and g.virt_lines == 2 and g.text == " + 'ü'\n    g(s)\nreturn s", "drawn %q", g.text)
  check(g.pos == "inline" and g.hl == "TricodeSuggestion", "pos %s hl %s", tostring(g.pos), tostring(g.hl))
  local req = Fake.requests[#Fake.requests]
  check(req.params.context.triggerKind == 2, "triggerKind %s", tostring(req.params.context.triggerKind))
  check(req.params.position.line == 1 and req.params.position.character == 13,
    "position %d:%d (utf-16)", req.params.position.line, req.params.position.character)
  log("OK multi-line ghost text at the cursor: %q", g.text)

  type_keys({ "<M-C-Right>" }, 30)     -- accept line
  check(H.line(bufnr, 1) == "    s = 'é😀' + 'ü'", "after accept line: %q", H.line(bufnr, 1))
  g = H.ghost(bufnr)
  check(g and g.first == "" and g.text == "\n    g(s)\nreturn s", "after accept line drawn %q", g and g.text or "-")
  type_keys({ "<M-Right>" }, 30)       -- accept word: the line break and the indentation
  check(api.nvim_buf_line_count(bufnr) == 3 and H.line(bufnr, 2) == "    ", "after accept word: %q",
    tostring(H.line(bufnr, 2)))
  g = H.ghost(bufnr)
  check(g and g.row == 2 and g.col == 4 and g.text == "g(s)\nreturn s", "after accept word drawn %q",
    g and g.text or "-")
  check(#feedback_since(fb0) == 0, "feedback before the suggestion ended")
  type_keys({ "<Tab>" }, 30)
  local got = api.nvim_buf_get_lines(bufnr, 0, -1, false)
  check(vim.deep_equal(got, { "def f():", "    s = 'é😀' + 'ü'", "    g(s)", "return s" }), "after <Tab>: %s",
    vim.inspect(got))
  local cur = api.nvim_win_get_cursor(0)
  check(cur[1] == 4 and cur[2] == 8, "cursor %d:%d", cur[1], cur[2])
  local fb = feedback_since(fb0)
  check(#fb == 1 and fb[1].method == "tricode/accepted" and fb[1].params.shown == 24
    and fb[1].params.accepted == 24, "feedback %s", vim.inspect(fb))
  log("OK accept line, word, then <Tab>: buffer and cursor right, one tricode/accepted %s",
    vim.inspect(fb[1].params, { newline = " ", indent = "" }))
  type_keys({ "<Esc>" }, 30)
  H.wait_mode("n")
  check(H.ghost(bufnr) == nil, "ghost text after <Esc>")

  -- 2. typing what the suggestion says keeps it, with no new request; typing something else drops it
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "x = " })
  Fake.items = { { insertText = "hello_world" } }
  api.nvim_win_set_cursor(0, { 1, 0 })
  api.nvim_input("A")
  wait_for("ghost text", 5, function()
    return H.ghost(bufnr)
  end)
  local n0 = inline_requests()
  type_keys(chars("hel"), 40)
  g = H.ghost(bufnr)
  check(g and g.text == "lo_world" and g.col == 7, "after typing hel: %s", vim.inspect(g))
  sleep(60)
  check(inline_requests() == n0, "typing through sent %d requests", inline_requests() - n0)
  type_keys({ "z" }, 30)
  check(H.ghost(bufnr) == nil or H.ghost(bufnr).col == 8, "the old ghost text is still drawn")
  wait_for("a new request", 5, function()
    return inline_requests() > n0
  end)
  log("OK typing through the suggestion keeps it without a request; a different key asks again")
  type_keys({ "<Esc>" }, 30)
  H.wait_mode("n")

  -- 3. a range that replaces the closing text after the cursor (UTF-16 columns)
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "print('😀', )" })
  Fake.items = function(p)
    return { items = { { insertText = "end='')",
                         range = { start = p.position, ["end"] = { line = p.position.line,
                                                                    character = p.position.character + 1 } } } } }
  end
  local line = H.line(bufnr, 0)
  api.nvim_win_set_cursor(0, { 1, #line - 1 })          -- on ")"
  fb0 = #Fake.notifications
  api.nvim_input("i")
  g = wait_for("ghost text", 5, function()
    return H.ghost(bufnr)
  end)
  check(g.first == "end=''" and g.col == #line - 1, "drawn %q at %d", g.first, g.col)
  type_keys({ "<Tab>" }, 30)
  check(H.line(bufnr, 0) == "print('😀', end='')", "after <Tab>: %q", H.line(bufnr, 0))
  cur = api.nvim_win_get_cursor(0)
  check(cur[2] == #H.line(bufnr, 0), "cursor at %d", cur[2])
  log("OK a suggestion that replaces the auto-inserted ')' : %q", H.line(bufnr, 0))
  type_keys({ "<Esc>" }, 30)
  H.wait_mode("n")

  -- 4. every keystroke cancels the request before it; only the last answer is drawn
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "" })
  Fake.items = function(p)
    return { items = { { insertText = "<" .. p.position.character .. ">" } } }
  end
  Fake.delay_ms = 150
  api.nvim_win_set_cursor(0, { 1, 0 })
  api.nvim_input("i")
  H.wait_mode("i")
  sleep(40)
  n0 = inline_requests()
  local c0 = vim.tbl_count(Fake.cancelled)
  type_keys(chars("abcd"), 40)
  g = wait_for("ghost text", 5, function()
    return H.ghost(bufnr)
  end)
  sleep(200)
  g = H.ghost(bufnr)
  local sent, cancelled = inline_requests() - n0, vim.tbl_count(Fake.cancelled) - c0
  check(g and g.text == "<4>" and g.col == 4, "drawn %s", vim.inspect(g))
  check(sent >= 2 and cancelled >= sent - 1, "%d requests, %d cancelled", sent, cancelled)
  log("OK typing fast: %d requests, %d cancelled, the answer for the last position drawn", sent, cancelled)
  Fake.delay_ms = 0
  type_keys({ "<Esc>" }, 30)
  H.wait_mode("n")

  -- 5. next / previous suggestion, dismiss
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "y = " })
  Fake.items = { { insertText = "one" }, { insertText = "two" } }
  api.nvim_win_set_cursor(0, { 1, 0 })
  fb0 = #Fake.notifications
  api.nvim_input("A")
  wait_for("ghost text", 5, function()
    return H.ghost(bufnr)
  end)
  local seen = { H.ghost(bufnr).text }
  for _, k in ipairs({ "<M-]>", "<M-]>", "<M-[>" }) do
    type_keys({ k }, 30)
    seen[#seen + 1] = H.ghost(bufnr).text
  end
  check(table.concat(seen, ",") == "one,two,one,two", "cycled through %s", table.concat(seen, ","))
  n0 = inline_requests()
  type_keys({ "<C-]>" }, 30)
  check(H.ghost(bufnr) == nil, "ghost text after dismiss")
  fb = feedback_since(fb0)
  check(#fb == 1 and fb[1].method == "tricode/rejected" and fb[1].params.shown == 3, "feedback %s", vim.inspect(fb))
  sleep(100)
  check(inline_requests() == n0 and H.ghost(bufnr) == nil, "asked again after dismiss")
  log("OK <M-]>/<M-[> cycle (%s), <C-]> dismisses and sends tricode/rejected", table.concat(seen, ","))

  -- 6. <Tab> with nothing shown falls through to the mapping it had before
  Fake.items = {}
  type_keys({ "<Tab>" }, 60)
  check(H.line(bufnr, 0) == "y = PREV", "<Tab> without a suggestion gave %q", H.line(bufnr, 0))
  log("OK <Tab> without a suggestion runs the previous <Tab> mapping")
  type_keys({ "<Esc>" }, 30)
  H.wait_mode("n")

  -- 7. :TricodeToggle, the statusline
  local sl = wait_for("the statusline", 5, function()
    local s = tricode.statusline()
    return s ~= "tricode starting" and s
  end)
  check(sl == "tricode spec", "statusline %q", sl)
  vim.cmd("TricodeToggle")
  check(tricode.statusline() == "tricode off", "statusline when off %q", tricode.statusline())
  Fake.items = { { insertText = "zzz" } }
  n0 = inline_requests()
  api.nvim_input("A")
  type_keys(chars("ab"), 30)
  sleep(80)
  check(inline_requests() == n0 and H.ghost(bufnr) == nil, "requests while off")
  type_keys({ "<Esc>" }, 30)
  vim.cmd("TricodeToggle")
  log("OK :TricodeToggle stops requests; statusline %q / %q", sl, "tricode off")

  -- 8. :TricodeRefactor on a characterwise visual selection (UTF-16 range), and on lines
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { 'x = "😀" + y', "z = 2" })
  Fake.refactor_text = "y2"
  api.nvim_win_set_cursor(0, { 1, 0 })
  local done
  api.nvim_create_autocmd("User", { pattern = "TricodeRefactorDone", callback = function(a)
    done = a.data
  end })
  api.nvim_input("$v:TricodeRefactor use y2<CR>")
  wait_for("the refactor", 5, function()
    return done
  end)
  local cmd
  for _, r in ipairs(Fake.requests) do
    if r.method == "workspace/executeCommand" then
      cmd = r.params
    end
  end
  check(cmd and cmd.command == "tricode.refactor", "command %s", vim.inspect(cmd))
  local a = cmd.arguments[1]
  check(a.action == "rewrite" and a.instruction == "use y2" and a.uri == vim.uri_from_bufnr(bufnr), "arguments %s",
    vim.inspect(a))
  check(vim.deep_equal(a.range, { start = { line = 0, character = 11 }, ["end"] = { line = 0, character = 12 } }),
    "range %s", vim.inspect(a.range))
  check(H.line(bufnr, 0) == 'x = "😀" + y2', "after the refactor: %q", H.line(bufnr, 0))
  check(done.result.applied == true, "result %s", vim.inspect(done.result))
  log("OK :'<,'>TricodeRefactor sends %s and the edit is applied",
    vim.inspect(a.range, { newline = " ", indent = "" }))
  done = nil
  Fake.refactor_text = "w = 3"
  vim.cmd("2TricodeRefactor rename")
  wait_for("the refactor", 5, function()
    return done
  end)
  a = Fake.requests[#Fake.requests].params.arguments[1]
  check(vim.deep_equal(a.range, { start = { line = 1, character = 0 }, ["end"] = { line = 1, character = 5 } }),
    "line range %s", vim.inspect(a.range))
  check(H.line(bufnr, 1) == "w = 3", "after the line refactor: %q", H.line(bufnr, 1))
  done = nil
  vim.cmd("TricodeAction docstring")
  wait_for("the action", 5, function()
    return done
  end)
  a = Fake.requests[#Fake.requests].params.arguments[1]
  check(a.action == "docstring" and a.range.start.line == a.range["end"].line, "action %s", vim.inspect(a))
  log("OK :2TricodeRefactor (whole line) and :TricodeAction docstring (at the cursor)")

  -- 8b. prefetch: the cursor comes to rest on another line (normal mode) -> one tricode/cursorIdle
  --     after prefetch_idle_ms with that line; moving on before the timer fires sends nothing for
  --     the line passed over, and resting again on the same line sends nothing new
  vim.cmd("stopinsert")
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "def f():", "    a = 1", "    b = 2", "    return a" })
  local function idles()
    return vim.tbl_filter(function(n)
      return n.method == "tricode/cursorIdle"
    end, Fake.notifications)
  end
  local n0 = #idles()
  api.nvim_win_set_cursor(0, { 2, 0 })
  vim.wait(50)
  api.nvim_win_set_cursor(0, { 3, 4 })
  local rest = wait_for("tricode/cursorIdle", 5, function()
    local got = idles()
    return #got > n0 and got[#got]
  end)
  check(rest.params.position.line == 2 and rest.params.textDocument.uri == vim.uri_from_bufnr(bufnr),
    "cursorIdle %s", vim.inspect(rest.params))
  vim.wait(600)
  check(#idles() == n0 + 1, "the passed-over line or a repeat was sent: %s", vim.inspect(idles()))
  api.nvim_win_set_cursor(0, { 3, 0 })
  vim.wait(600)
  check(#idles() == n0 + 1, "a rest on the same line was sent again")
  log("OK prefetch: tricode/cursorIdle once the cursor rests on a new line")

  -- 8b. next edit: UTF-16 range over non-ASCII text, a multi-line replacement (virtual text + virtual
  --     lines), didShowInlineEdit, insert-mode <Tab>: the ghost text first, then jump, then apply
  --     (the edit's command runs, the next place is asked for at once)
  local ne = require("tricode.next_edit")
  Fake.items = {}
  api.nvim_buf_set_lines(bufnr, 0, -1, false, { "x = 'é😀'.upper()", "y = 'é😀'.lower()", "z = 1" })
  api.nvim_win_set_cursor(0, { 3, 4 })
  -- "'é😀'" on line 2: UTF-16 characters 4..9 (😀 is two), bytes 4..12
  Fake.next_edit = { range = { start = { line = 1, character = 4 }, ["end"] = { line = 1, character = 9 } },
                     text = "f(\n    'é😀')", command = { title = "accepted", command = "tricode.accepted",
                                                          arguments = { { kind = "next_edit" } } } }
  local n_ne = count("textDocument/copilotInlineEdit")
  local nfrom = #Fake.notifications
  vim.cmd("TricodeNextEdit")
  local e = wait_for("the next edit", 5, function()
    return ne.current(bufnr)
  end)
  local rq = Fake.requests[#Fake.requests]
  check(rq.method == "textDocument/copilotInlineEdit" and rq.params.position.line == 2
    and rq.params.position.character == 4 and rq.params.textDocument.version == vim.lsp.util.buf_versions[bufnr],
    "request %s", vim.inspect(rq.params))
  check(e.row0 == 1 and e.col0 == 4 and e.row1 == 1 and e.col1 == 12 and e.old == "'é😀'", "edit %s", vim.inspect(e))
  local nens = api.nvim_get_namespaces()["tricode_next_edit"]
  local del, ins
  for _, m in ipairs(api.nvim_buf_get_extmarks(bufnr, nens, 0, -1, { details = true })) do
    if m[4].hl_group == "TricodeNextEditDelete" then
      del = m
    elseif m[4].virt_text_pos == "inline" then
      ins = m
    end
  end
  check(del and del[2] == 1 and del[3] == 4 and del[4].end_col == 12, "removed text mark %s", vim.inspect(del))
  check(ins and ins[3] == 12 and ins[4].virt_text[1][1] == "f(" and ins[4].virt_lines
    and ins[4].virt_lines[1][1][1] == "    'é😀')", "inserted text mark %s", vim.inspect(ins))
  local shown_note
  for i = nfrom + 1, #Fake.notifications do
    if Fake.notifications[i].method == "textDocument/didShowInlineEdit" then
      shown_note = Fake.notifications[i].params
    end
  end
  check(shown_note and shown_note.item.text == Fake.next_edit.text, "didShowInlineEdit %s", vim.inspect(shown_note))
  log("OK next edit: UTF-16 range over 'é😀' -> bytes 4..12, multi-line preview, didShowInlineEdit")

  -- insert mode: the ghost text takes <Tab> first (its change ends the preview, which then comes back)
  Fake.items = { { insertText = "0" } }
  api.nvim_input("A")
  wait_for("ghost text next to the preview", 5, function()
    return H.ghost(bufnr) and ne.current(bufnr)
  end)
  Fake.items = {}
  type_keys({ "<Tab>" }, 30)
  check(H.line(bufnr, 2) == "z = 10" and H.line(bufnr, 1) == "y = 'é😀'.lower()", "<Tab> with ghost text: %q / %q",
    H.line(bufnr, 2), H.line(bufnr, 1))
  wait_for("the preview again after the change", 5, function()
    return ne.current(bufnr) and not H.ghost(bufnr)
  end)
  type_keys({ "<Tab>" }, 30)
  local c3 = api.nvim_win_get_cursor(0)
  check(c3[1] == 2 and c3[2] == 4 and H.line(bufnr, 1) == "y = 'é😀'.lower()", "<Tab> jump: cursor %d:%d",
    c3[1], c3[2])
  Fake.next_edit = nil
  local before_accept = count("textDocument/copilotInlineEdit")
  type_keys({ "<Tab>" }, 60)
  check(table.concat(api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n")
    == "x = 'é😀'.upper()\ny = f(\n    'é😀').lower()\nz = 10", "after apply: %s",
    table.concat(api.nvim_buf_get_lines(bufnr, 0, -1, false), "\n"))
  local c4 = api.nvim_win_get_cursor(0)
  check(c4[1] == 3 and c4[2] == #"    'é😀')", "cursor after apply %d:%d", c4[1], c4[2])
  check(count("textDocument/copilotInlineEdit") == before_accept + 1, "no request right after the accept")
  local ran
  for _, r in ipairs(Fake.requests) do
    if r.method == "workspace/executeCommand" and r.params.command == "tricode.accepted" then
      ran = r.params
    end
  end
  check(ran and ran.arguments[1].kind == "next_edit", "the edit's command did not run: %s", vim.inspect(ran))
  check(count("textDocument/copilotInlineEdit") > n_ne, "no requests")
  type_keys({ "<Esc>" }, 30)
  log("OK next edit in insert mode: <Tab> takes the ghost text first, then jumps, then applies (command, prefetch)")

  -- 9. :checkhealth, then the server goes away: keys and ghost text are removed
  check(pcall(vim.cmd, "checkhealth tricode"), "checkhealth failed")
  vim.cmd("bwipeout!")
  vim.cmd("buffer " .. bufnr)
  client:stop()
  wait_for("the client to stop", 5, function()
    return #vim.lsp.get_clients({ name = "tricode" }) == 0
  end)
  wait_for("the keys to be unmapped", 5, function()
    return #vim.tbl_filter(function(m)
      return (m.desc or ""):match("^tricode")
    end, api.nvim_buf_get_keymap(bufnr, "i")) == 0
  end)
  log("OK :checkhealth tricode; after the server stops the buffer-local keys are gone")

  -- 10. the glue over Neovim 0.12's vim.lsp.inline_completion, against a stand-in with its API
  --     (enable, get{on_accept}, select; items with insert_text and a vim.Range-like range)
  local ic_ns = api.nvim_create_namespace("nvim.lsp.inline_completion")
  local IC = { enabled = {}, selects = {} }
  function IC.enable(on, filter)
    IC.enabled[filter and filter.bufnr or 0] = on ~= false
  end
  function IC.get(o)
    local item = IC.current
    if not item then
      return false
    end
    vim.schedule(function()
      IC.current = nil
      api.nvim_buf_clear_namespace(o.bufnr or 0, ic_ns, 0, -1)
      o.on_accept(item)
    end)
    return true
  end
  function IC.select(o)
    IC.selects[#IC.selects + 1] = o.count
  end
  local real_ic = rawget(vim.lsp, "inline_completion")
  rawset(vim.lsp, "inline_completion", IC)
  tricode.setup(vim.tbl_deep_extend("force", opts, { ghost_text = { implementation = "builtin" } }))
  check(tricode.engine().name == "builtin", "engine %s", tricode.engine().name)
  vim.cmd("edit " .. tmp .. "/t2.py")
  local b2 = api.nvim_get_current_buf()
  local c2 = wait_for("the second client", 10, function()
    local c = vim.lsp.get_clients({ bufnr = b2, name = "tricode" })[1]
    return c and c.initialized and c
  end)
  wait_for("enable()", 5, function()
    return IC.enabled[b2] == true
  end)
  local function offer(text, scol, ecol)
    local cur2 = api.nvim_win_get_cursor(0)
    local r0 = cur2[1] - 1
    IC.current = { _index = 1, client_id = c2.id, insert_text = text,
                   range = { start = { row = r0, col = scol }, end_ = { row = r0, col = ecol } },
                   command = { title = "accepted", command = "tricode.accepted", arguments = {} } }
    api.nvim_buf_set_extmark(b2, ic_ns, r0, cur2[2], { virt_text = { { "x", "ComplHint" } },
                                                       virt_text_pos = "inline" })
  end
  api.nvim_buf_set_lines(b2, 0, -1, false, { "z = f" })
  api.nvim_win_set_cursor(0, { 1, 0 })
  api.nvim_input("A")
  H.wait_mode("i")
  fb0 = #Fake.notifications
  offer("f(1, 2)", 4, 5)                 -- the item repeats the typed "f", as servers may
  type_keys({ "<M-Right>" }, 60)
  check(H.line(b2, 0) == "z = f(", "after accept word: %q", H.line(b2, 0))
  offer("f(1, 2)", 4, 6)
  type_keys({ "<Tab>" }, 60)
  check(H.line(b2, 0) == "z = f(1, 2)", "after <Tab>: %q", H.line(b2, 0))
  check(api.nvim_win_get_cursor(0)[2] == 11, "cursor %d", api.nvim_win_get_cursor(0)[2])
  fb = feedback_since(fb0)
  check(#fb == 2 and fb[1].method == "tricode/partiallyAccepted" and fb[1].params.accepted == 1
    and fb[2].method == "tricode/accepted" and fb[2].params.shown == 7 and fb[2].params.accepted == 7,
    "feedback %s", vim.inspect(fb))
  offer("g", 11, 11)
  type_keys({ "<M-]>" }, 40)
  check(IC.selects[1] == 1, "select %s", vim.inspect(IC.selects))
  type_keys({ "<C-]>" }, 60)
  fb = feedback_since(fb0)
  check(#fb == 3 and fb[3].method == "tricode/rejected" and fb[3].params.shown == 1, "feedback %s", vim.inspect(fb))
  check(#api.nvim_buf_get_extmarks(b2, ic_ns, 0, -1, {}) == 0, "still drawn after dismiss")
  type_keys({ "<Tab>" }, 60)
  check(H.line(b2, 0) == "z = f(1, 2)PREV", "<Tab> without a suggestion: %q", H.line(b2, 0))
  type_keys({ "<Esc>" }, 30)
  tricode.set_enabled(false)
  check(IC.enabled[b2] == false, "toggle off did not disable the built-in")
  tricode.set_enabled(true)
  check(IC.enabled[b2] == true, "toggle on did not enable the built-in")
  rawset(vim.lsp, "inline_completion", real_ic)
  log("OK the vim.lsp.inline_completion glue (0.12 API): accept word, <Tab>, cycle, dismiss, feedback, toggle")
  vim.fn.delete(tmp, "rf")
end, { timeout_s = 60 })
