-- The one home of "debounce, then ask; a newer keystroke cancels": used by the ghost text
-- (textDocument/inlineCompletion) and by next-edit suggestions (textDocument/copilotInlineEdit).
--
-- A requester state `st` is any table; this module keeps three fields in it:
--   st.timer  the debounce timer (libuv)        st.seq  bumped by every cancel: older answers are dropped
--   st.req    { client_id, id } of the request in flight (cancelled with $/cancelRequest)
-- What it does not know: which method, what an answer means, drawing.
local util = require("tricode.util")

local M = {}

--- Stop the timer, forget the request in flight (and cancel it at the server). Answers to anything
--- sent before are ignored from now on.
function M.cancel(st)
  if st.timer then
    st.timer:stop()
  end
  st.seq = (st.seq or 0) + 1
  local req = st.req
  st.req = nil
  if req then
    local client = vim.lsp.get_client_by_id(req.client_id)
    if client and not util.is_stopped(client) then
      pcall(util.cancel_request, client, req.id)
    end
  end
end

--- Cancel what is pending, then run `fn` after `delay_ms` unless cancelled again meanwhile.
function M.schedule(st, delay_ms, fn)
  M.cancel(st)
  st.timer = st.timer or util.uv.new_timer()
  local seq = st.seq
  st.timer:start(delay_ms or 0, 0, vim.schedule_wrap(function()
    if seq == st.seq then
      fn()
    end
  end))
end

--- Send `method` (after cancelling what is pending); `handler(err, result, ms)` runs only when no
--- cancel came in between. Returns true when the request went out.
function M.send(st, client, method, params, bufnr, handler)
  M.cancel(st)
  local seq = st.seq
  local t0 = util.uv.hrtime()
  local id
  local ok, rid = util.request(client, method, params, function(err, result)
    if st.req and st.req.id == id then
      st.req = nil
    end
    if seq ~= st.seq then
      return                                  -- superseded or cancelled
    end
    handler(err, result, (util.uv.hrtime() - t0) / 1e6)
  end, bufnr)
  id = rid
  if ok and id then
    st.req = { client_id = client.id, id = id }
    return true
  end
  return false
end

--- Whether a request is in flight.
function M.pending(st)
  return st ~= nil and st.req ~= nil
end

--- Close the timer (the state is not used again).
function M.close(st)
  M.cancel(st)
  if st.timer then
    if not st.timer:is_closing() then
      st.timer:close()
    end
    st.timer = nil
  end
end

--- Stop serving buffer `bufnr` of a feature's per-buffer `states`: its request and timer closed,
--- `finish(st)` (the feature's own clean-up: extmarks), its autocommand group deleted.
function M.detach(states, bufnr, finish)
  local st = states[bufnr]
  if not st then
    return
  end
  M.close(st)
  finish(st)
  if st.augroup then
    pcall(vim.api.nvim_del_augroup_by_id, st.augroup)
  end
  states[bufnr] = nil
end

return M
