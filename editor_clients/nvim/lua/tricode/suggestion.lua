-- A suggestion: what is left to insert at an anchor (the cursor), and how accepting it edits the buffer.
-- Shared by the extmark renderer (0.10/0.11) and the glue over vim.lsp.inline_completion (0.12+).
--
--   { bufnr, client_id, uri, row, col,   -- anchor: 0-based row, byte column (the cursor)
--     text,                              -- what is left to insert there ("\n" separates lines)
--     replace,                           -- text right after the anchor that the suggestion replaces
--                                        -- (auto-inserted closing brackets/quotes; usually "")
--     shown, accepted,                   -- characters shown (the item's insertText) / accepted so far
--     command }                          -- the item's command (tricode.accepted with statistics)
local util = require("tricode.util")

local M = {}
local api = vim.api

local function get_text(item)
  local t = item.insertText
  if type(t) == "table" then
    return t.value or "", t.kind == "snippet"
  end
  return t or "", false
end

--- Build a suggestion from an LSP InlineCompletionItem, for the cursor at (row, col).
--- Returns nil when the item does not continue the text at the cursor.
function M.from_item(bufnr, client, item, row, col)
  local text, snippet = get_text(item)
  if snippet then
    -- the server sends plain text; a snippet is shown and inserted without its placeholders
    text = text:gsub("%$%{%d+:([^}]*)%}", "%1"):gsub("%$%d+", ""):gsub("\\([$}\\])", "%1")
  end
  local enc = client.offset_encoding or "utf-16"
  local line = util.line(bufnr, row)
  local scol, ecol = col, col
  if item.range then
    local s, e = item.range.start, item.range["end"]
    if s.line ~= row or e.line ~= row then
      return nil                                    -- only ranges on the cursor line are supported
    end
    scol = util.byte_col(line, s.character, enc)
    ecol = util.byte_col(line, e.character, enc)
  end
  return M.build(bufnr, client, text, line, row, col, scol, ecol, item.command)
end

--- Build a suggestion from insert text replacing [scol, ecol) of `line` (row), cursor at `col`.
function M.build(bufnr, client, text, line, row, col, scol, ecol, command)
  if scol > col then
    return nil
  end
  local typed = line:sub(scol + 1, col)
  if text:sub(1, #typed) ~= typed then
    return nil                                      -- the item does not start with what is typed
  end
  local rest = text:sub(#typed + 1)
  local replace = ecol > col and line:sub(col + 1, ecol) or ""
  if rest == "" or rest == replace then
    return nil
  end
  return {
    bufnr = bufnr,
    client_id = client and client.id,
    uri = vim.uri_from_bufnr(bufnr),
    row = row,
    col = col,
    text = rest,
    replace = replace,
    shown = util.chars(text),
    accepted = 0,
    command = command,
  }
end

local WORD = "[%w_\128-\255]"

--- The next word of `text`: a line break with the next line's indentation, or leading blanks and
--- then a run of word characters (or of other non-blank characters).
function M.next_word(text)
  local nl = text:match("^\r?\n[ \t]*")
  if nl then
    return nl
  end
  return text:match("^[ \t]*" .. WORD .. "+") or text:match("^[ \t]*[^%w_%s\128-\255]+")
    or text:match("^[ \t]+") or text:sub(1, 1)
end

--- The rest of the current line of `text`; when `text` starts with a line break, that break and the
--- next line.
function M.next_line(text)
  local start = text:sub(1, 1) == "\n" and 2 or 1
  local nl = text:find("\n", start, true)
  return nl and text:sub(1, nl - 1) or text
end

--- The part of the suggestion that `kind` ("all" | "word" | "line") accepts.
function M.part(s, kind)
  if kind == "word" then
    return M.next_word(s.text)
  elseif kind == "line" then
    return M.next_line(s.text)
  end
  return s.text
end

--- Insert `part` (a prefix of s.text) at the anchor and move the cursor after it. When it is all that
--- is left, the replaced closing characters are replaced too. Updates s (anchor, text, accepted) and
--- returns true when the whole suggestion is now accepted.
function M.apply(s, part)
  local bufnr = s.bufnr
  local all = part == s.text
  local line = util.line(bufnr, s.row)
  local end_col = s.col
  if all and s.replace ~= "" and line:sub(s.col + 1, s.col + #s.replace) == s.replace then
    end_col = s.col + #s.replace
  end
  local lines = vim.split(part, "\n", { plain = true })
  api.nvim_buf_set_text(bufnr, s.row, s.col, s.row, end_col, lines)
  local row = s.row + #lines - 1
  local col = (#lines == 1 and s.col or 0) + #lines[#lines]
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    win = vim.fn.bufwinid(bufnr)
  end
  if win ~= -1 then
    api.nvim_win_set_cursor(win, { row + 1, col })
  end
  s.accepted = s.accepted + util.chars(part)
  s.text = s.text:sub(#part + 1)
  s.row, s.col = row, col
  if not all and s.replace ~= "" and s.text == s.replace then
    all = true                 -- what is left is the closing text that is already there
    s.text = ""
  end
  if all then
    s.accepted = math.max(s.accepted, s.shown)
  end
  return all
end

return M
