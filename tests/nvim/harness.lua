-- A small harness for the Neovim tests: a script run with `nvim --headless --clean -c "luafile ..."`
-- returns at once and is driven from a coroutine on timers, so that Neovim's main loop runs and typed
-- keys go through insert mode, mappings and autocommands as they do for a user.
--
--   local H = dofile(".../harness.lua")
--   H.run(function() ... H.sleep(50) ... H.wait_for("what", 10, cond) ... end, { name = "inline" })
--
-- Every step prints a "TRICODE-NVIM:" line (stdout, and TRICODE_NVIM_RESULT when set). The script
-- ends Neovim with exit code 0 when `main` returns, 1 (`cquit`) on the first error or on the time limit.
local api = vim.api
local uv = vim.uv or vim.loop

local H = {}
local t_start = uv.hrtime()
local result_file = os.getenv("TRICODE_NVIM_RESULT")
local finished = false
local co

H.cleanups = {}        -- functions run before Neovim exits (pass or fail)
H.on_fail = {}         -- functions run after a failure is printed (e.g. print a log)

function H.elapsed()
  return (uv.hrtime() - t_start) / 1e9
end

function H.log(fmt, ...)
  local msg = select("#", ...) > 0 and fmt:format(...) or fmt
  local line = ("TRICODE-NVIM: [%6.2fs] %s\n"):format(H.elapsed(), msg)
  io.stdout:write(line)
  io.stdout:flush()
  if result_file then
    local f = io.open(result_file, "a")
    if f then
      f:write(line)
      f:close()
    end
  end
end

local function exit(code)
  if finished then
    return
  end
  finished = true
  for _, f in ipairs(H.cleanups) do
    local ok, err = pcall(f, code)
    if not ok then
      H.log("cleanup failed: %s", tostring(err))
    end
  end
  io.stdout:flush()
  vim.schedule(function()
    if code == 0 then
      vim.cmd("qall!")
    else
      vim.cmd("cquit " .. code)
    end
  end)
end

function H.fail(msg)
  if finished then
    return
  end
  H.log("FAIL %s", tostring(msg))
  for _, f in ipairs(H.on_fail) do
    pcall(f)
  end
  exit(1)
end

local function resume(...)
  if finished then
    return
  end
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    H.fail(debug.traceback(co, err))
  elseif coroutine.status(co) == "dead" and not finished then
    H.log("PASS (%.1f s)", H.elapsed())
    exit(0)
  end
end

function H.sleep(ms)
  vim.defer_fn(resume, ms)
  coroutine.yield()
end

function H.wait_for(what, timeout_s, cond, interval_ms)
  local deadline = uv.hrtime() + timeout_s * 1e9
  while true do
    local v = cond()
    if v then
      return v
    end
    if uv.hrtime() > deadline then
      error(("timed out after %s s waiting for %s"):format(tostring(timeout_s), what), 0)
    end
    H.sleep(interval_ms or 50)
  end
end

function H.check(cond, msg, ...)
  if not cond then
    error(msg:format(...), 0)
  end
end

--- Keys as a user types them (through mappings), one at a time.
function H.type_keys(keys, gap_ms)
  for _, k in ipairs(keys) do
    api.nvim_input(k)
    H.sleep(gap_ms or 20)
  end
end

--- The characters of `s` as a list of keys for type_keys.
function H.chars(s)
  local out = {}
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
    out[#out + 1] = ch == "<" and "<lt>" or ch
  end
  return out
end

function H.wait_mode(mode, timeout_s)
  return H.wait_for("mode " .. mode, timeout_s or 5, function()
    return api.nvim_get_mode().mode == mode
  end, 10)
end

--- The ghost text as drawn: the extmark's virtual text and virtual lines (nil when none).
function H.ghost(bufnr)
  local ns = api.nvim_get_namespaces()["tricode"]
  if not ns then
    return nil
  end
  local marks = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local m = marks[1]
  local d = m[4]
  local first = {}
  for _, chunk in ipairs(d.virt_text or {}) do
    first[#first + 1] = chunk[1]
  end
  local lines = { table.concat(first) }
  for _, vl in ipairs(d.virt_lines or {}) do
    local l = {}
    for _, chunk in ipairs(vl) do
      l[#l + 1] = chunk[1]
    end
    lines[#lines + 1] = table.concat(l)
  end
  return { row = m[2], col = m[3], text = table.concat(lines, "\n"), first = lines[1], virt_lines = #lines - 1,
           pos = d.virt_text_pos, hl = d.virt_text and d.virt_text[1] and d.virt_text[1][2], count = #marks }
end

function H.line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1]
end

--- A private environment for a real `tricode lsp` (and the daemon it starts): TRICODE_SOCKET, XDG dirs
--- under a short /tmp folder unless the caller set TRICODE_SOCKET; a workdir; the daemon stopped and
--- the LSP log printed on failure. Returns { env, workdir, tricode, lsp_log, short }.
function H.tricode_env(repo)
  local tricode_exe = os.getenv("TRICODE_NVIM_TRICODE") or (repo .. "/.venv/bin/tricode")
  local short = ("/tmp/tcnvim-%d"):format(vim.fn.getpid())   -- socket paths must stay short
  local own_tmp = false
  local env = {}
  if not os.getenv("TRICODE_SOCKET") then
    own_tmp = true
    vim.fn.mkdir(short, "p")
    env.TRICODE_SOCKET = short .. "/daemon.sock"
    env.XDG_RUNTIME_DIR = short
    env.XDG_STATE_HOME = short .. "/state"
    env.XDG_CONFIG_HOME = short .. "/config"
  else
    for _, k in ipairs({ "TRICODE_SOCKET", "XDG_RUNTIME_DIR", "XDG_STATE_HOME", "XDG_CONFIG_HOME" }) do
      env[k] = os.getenv(k)
    end
  end
  env.TRICODE_MODEL = os.getenv("TRICODE_MODEL")
  for k, v in pairs(env) do
    vim.env[k] = v
  end
  local workdir = os.getenv("TRICODE_NVIM_WORKDIR")
  if not workdir then
    own_tmp = true
    workdir = short .. "/work"
  end
  vim.fn.mkdir(workdir, "p")
  local lsp_log = workdir .. "/tricode-lsp.log"
  table.insert(H.cleanups, function(code)
    for _, c in ipairs(vim.lsp.get_clients({ name = "tricode" })) do
      pcall(function()
        c:stop(true)
      end)
    end
    if vim.fn.executable(tricode_exe) == 1 then
      local r = vim.system({ tricode_exe, "daemon", "stop" }, { env = env, text = true }):wait(30000)
      H.log("tricode daemon stop: exit %s %s", tostring(r.code), vim.trim((r.stdout or "") .. " " .. (r.stderr or "")))
    end
    if code == 0 and own_tmp then
      vim.fn.delete(short, "rf")
    end
  end)
  table.insert(H.on_fail, function()
    local f = io.open(lsp_log)
    if f then
      local lines = vim.split(f:read("*a"), "\n", { plain = true })
      f:close()
      H.log("the last lines of %s:", lsp_log)
      for i = math.max(1, #lines - 25), #lines do
        io.stdout:write("    " .. lines[i] .. "\n")
      end
    end
  end)
  return { env = env, workdir = workdir, tricode = tricode_exe, lsp_log = lsp_log, short = short }
end

--- Run `main` in a coroutine with an overall time limit.
function H.run(main, opts)
  opts = opts or {}
  local limit = tonumber(os.getenv("TRICODE_NVIM_TIMEOUT_S") or "") or opts.timeout_s or 240
  vim.o.showmode = false        -- headless Neovim prints messages to stdout: keep the log readable
  vim.o.more = false
  vim.defer_fn(function()
    H.fail(("overall time limit (%d s)"):format(limit))
  end, limit * 1000)
  co = coroutine.create(main)
  vim.schedule(resume)
end

return H
