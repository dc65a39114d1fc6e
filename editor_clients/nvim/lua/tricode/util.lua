-- Small helpers that hide the differences between Neovim 0.10, 0.11 and 0.12.
local M = {}

local api = vim.api
M.has_011 = vim.fn.has("nvim-0.11") == 1
M.uv = vim.uv or vim.loop

--- The client methods became `client:method()` in 0.11 (0.10 has closures called as `client.method()`).
function M.request(client, method, params, handler, bufnr)
  if M.has_011 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.notify(client, method, params)
  if M.has_011 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

function M.cancel_request(client, id)
  if M.has_011 then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

function M.is_stopped(client)
  if M.has_011 then
    return client:is_stopped()
  end
  return client.is_stopped()
end

function M.get_clients(filter)
  return (vim.lsp.get_clients or vim.lsp.get_active_clients)(filter)
end

--- The byte column of LSP `character` in `line` for the client's position encoding.
function M.byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if M.has_011 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  if ok and col then
    return math.min(col, #line)
  end
  return #line
end

--- The LSP character of byte column `col` in `line`.
function M.lsp_character(line, col, encoding)
  col = math.min(col, #line)
  if encoding == "utf-8" then
    return col
  end
  local ok, n
  if M.has_011 then
    ok, n = pcall(vim.str_utfindex, line, encoding, col, false)
  else
    ok, n = pcall(function()
      local u32, u16 = vim.str_utfindex(line, col)
      return encoding == "utf-16" and u16 or u32
    end)
  end
  return ok and n or col
end

function M.line(bufnr, row)
  return api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ""
end

--- An LSP position for (row, byte col) of a buffer.
function M.position(bufnr, row, col, encoding)
  return { line = row, character = M.lsp_character(M.line(bufnr, row), col, encoding) }
end

--- Character count (code points) of a string, as the server counts `shown`/`accepted`.
function M.chars(s)
  return vim.fn.strchars(s)
end

--- `s` with tabs expanded to spaces, as if it started at display column `start`.
function M.expand_tabs(s, start, tabstop)
  if not s:find("\t", 1, true) then
    return s
  end
  tabstop = tabstop > 0 and tabstop or 8
  local out, col = {}, start or 0
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do
    if ch == "\t" then
      local n = tabstop - (col % tabstop)
      out[#out + 1] = string.rep(" ", n)
      col = col + n
    else
      out[#out + 1] = ch
      col = col + vim.fn.strdisplaywidth(ch)
    end
  end
  return table.concat(out)
end

function M.in_insert_mode()
  local mode = api.nvim_get_mode().mode
  return mode:sub(1, 1) == "i" or mode:sub(1, 1) == "R"
end

return M
