-- tricode/status: :TricodeStatus, the statusline component, $/progress of the daemon start and of
-- refactors.
local config = require("tricode.config")
local lsp = require("tricode.lsp")
local util = require("tricode.util")

local M = {}
local api = vim.api

M.cache = {}        -- client id -> { result, at, pending, error }
M.progress = {}     -- client id -> { title, message, percentage } while a $/progress runs

--- Ask the server for tricode/status; cb(err, result).
function M.request(client, cb)
  local entry = M.cache[client.id] or {}
  M.cache[client.id] = entry
  entry.pending = true
  local ok = util.request(client, "tricode/status", {}, function(err, result)
    entry.pending = false
    entry.at = util.uv.now()
    if err then
      entry.error = err.message or vim.inspect(err)
    else
      entry.result, entry.error = result, nil
    end
    if cb then
      cb(err, result)
    end
    pcall(vim.cmd.redrawstatus)
  end)
  if not ok then
    entry.pending = false
    if cb then
      cb({ message = "the tricode server is not running" }, nil)
    end
  end
end

local function maybe_refresh(client)
  local entry = M.cache[client.id]
  local now = util.uv.now()
  if entry and (entry.pending or (entry.at and now - entry.at < config.options.status_interval_ms)) then
    return
  end
  M.request(client)
end

--- A short text for the statusline: "" when no tricode server serves the buffer.
function M.statusline(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local client = lsp.client(bufnr)
  if not client then
    return ""
  end
  local tricode = require("tricode")
  if not tricode.is_enabled(bufnr) then
    return "tricode off"
  end
  maybe_refresh(client)
  local p = M.progress[client.id]
  if p then
    local pct = p.percentage and (" " .. p.percentage .. "%") or ""
    local what = (p.message and p.message ~= "") and p.message or (p.title or "working")
    return ("tricode %s%s"):format(what, pct)
  end
  local entry = M.cache[client.id] or {}
  local r = entry.result
  if not r then
    return entry.error and "tricode error" or "tricode starting"
  end
  local text = r.state == "ready" and ("tricode " .. (r.mode or "")) or ("tricode " .. tostring(r.state))
  if tricode.engine().pending(bufnr) then
    text = text .. " ..."
  end
  return text
end

local function pct(v)
  return type(v) == "number" and ("%d%%"):format(math.floor(v * 100 + 0.5)) or "-"
end

--- One-paragraph summary of a tricode/status result.
function M.format(r)
  local d = type(r.daemon) == "table" and r.daemon or {}
  local conn = type(r.connection) == "table" and r.connection or {}
  local l = type(r.lsp) == "table" and r.lsp or {}
  local comp = type(l.completions) == "table" and l.completions or {}
  local fb = type(d.feedback) == "table" and d.feedback or {}
  local lines = {
    ("tricode: %s  model %s on %s  inline mode %s"):format(tostring(r.state), tostring(r.model ~= "" and r.model or "-"),
      tostring(r.device ~= "" and r.device or "-"), tostring(r.mode)),
    ("daemon: pid %s  socket %s  restarts %s%s"):format(tostring(d.pid or conn.pid or "-"),
      tostring(conn.socket or "-"), tostring(conn.restarts or 0), (conn.error and conn.error ~= "") and ("  error " .. tostring(conn.error)) or ""),
    ("completions: %s requests  %s suggestions  %s cache hits  %s cancelled  %s errors"):format(
      tostring(comp.requests or 0), tostring(comp.suggestions or 0), tostring(comp.cache_hits or 0),
      tostring(comp.cancelled or 0), tostring(comp.errors or 0)),
    ("feedback: %s accepted  %s partial  %s rejected  (acceptance %s)"):format(tostring(fb.accepted or 0),
      tostring(fb.partial or 0), tostring(fb.rejected or 0), pct(d.acceptance_rate)),
  }
  local engine = require("tricode").engine()
  lines[#lines + 1] = ("client: ghost text %s (%s), server %s, position encoding %s"):format(
    require("tricode").is_enabled(0) and "on" or "off", engine.name, tostring(l.version or "?"),
    tostring(l.position_encoding or "?"))
  return table.concat(lines, "\n")
end

--- :TricodeStatus — echo the summary (bang: the whole result).
function M.show(full)
  local client = lsp.client(0) or lsp.client()
  if not client then
    vim.notify("tricode: no tricode server is running (is this a configured filetype? see :checkhealth tricode)",
      vim.log.levels.WARN)
    return
  end
  M.request(client, function(err, result)
    if err then
      vim.notify("tricode: status failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    local text = full and vim.inspect(result) or M.format(result)
    api.nvim_echo({ { text } }, true, {})
  end)
end

function M.on_progress(args)
  local data = args.data or {}
  local client = data.client_id and vim.lsp.get_client_by_id(data.client_id)
  if not client or client.name ~= lsp.name then
    return
  end
  local value = data.params and data.params.value or data.result and data.result.value
  if type(value) ~= "table" then
    return
  end
  if value.kind == "end" then
    M.progress[client.id] = nil
    M.cache[client.id] = nil         -- refresh: the state probably changed (e.g. the model is ready)
  else
    local p = M.progress[client.id] or {}
    p.title = value.title or p.title
    p.message = value.message or p.message
    p.percentage = value.percentage or p.percentage
    M.progress[client.id] = p
  end
  pcall(vim.cmd.redrawstatus)
end

function M.forget(client_id)
  M.cache[client_id] = nil
  M.progress[client_id] = nil
end

return M
