"""lsp/edit_history.py on didChange sequences as editors send them, applied through the server's
DocumentStore (the same code path as the LSP handler)."""
from lsprotocol import types

from lsp.documents import DocumentStore
from lsp.edit_history import EditHistory, changed_span, make_edit

URI = "file:///w/pkg/mod.py"
OTHER = "file:///w/pkg/other.py"
SRC = ("class A(Base):\n"
       "    def f(self):\n"
       "        return super(A, self).f()\n"
       "\n"
       "    def g(self):\n"
       "        return super(A, self).g()\n")


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def ch(l0, c0, l1, c1, text):
    return types.TextDocumentContentChangePartial(
        range=types.Range(start=types.Position(line=l0, character=c0), end=types.Position(line=l1, character=c1)),
        text=text)


class Session:
    """A DocumentStore plus an EditHistory fed exactly like lsp/server.py's didChange handler."""

    def __init__(self, pause_s=2.0):
        self.docs = DocumentStore()
        self.clock = Clock()
        self.hist = EditHistory(clock=self.clock, pause_s=pause_s)
        self.version = {}

    def open(self, uri, text):
        self.docs.open(uri, text, 1, "python")
        self.version[uri] = 1

    def send(self, uri, *changes, dt=0.1):
        self.clock.t += dt
        doc = self.docs.get(uri)
        before = doc.text
        self.version[uri] += 1
        self.docs.change(uri, self.version[uri], list(changes))
        self.hist.changed(uri, before, doc.text, self.version[uri])

    def text(self, uri=URI):
        return self.docs.get(uri).text


def delete_chars(s, line, col, n):
    """Backspace n times ending at (line, col): one event per keystroke, as Neovim and VS Code send."""
    for i in range(n):
        s.send(URI, ch(line, col - i - 1, line, col - i, ""))


def test_keystroke_burst_is_one_edit():
    s = Session()
    s.open(URI, SRC)
    # delete "A, self" inside super(A, self) on line 2: 7 backspaces from column 29
    line = SRC.splitlines()[2]
    col = line.index(", self)") + len(", self")
    delete_chars(s, 2, col, 7)
    assert "super().f()" in s.text()
    edits = s.hist.recent()
    assert len(edits) == 1 and edits[0].open
    e = edits[0]
    assert e.old == "        return super(A, self).f()\n" and e.new == "        return super().f()\n"
    assert e.line == 2
    assert e.diff.startswith("--- a//w/pkg/mod.py\n+++ b//w/pkg/mod.py\n@@ -2,3 +2,3 @@\n")
    assert "-        return super(A, self).f()\n+        return super().f()\n" in e.diff


def test_cursor_jump_and_pause_end_an_edit():
    s = Session()
    s.open(URI, SRC)
    s.send(URI, ch(0, 6, 0, 7, "B"))                 # class B(Base)
    s.send(URI, ch(4, 8, 4, 9, "h"))                 # jump to line 4: def h
    assert [e.line for e in s.hist.recent()] == [0, 4]
    assert [e.open for e in s.hist.recent()] == [False, True]
    s.send(URI, ch(4, 9, 4, 9, "h"), dt=5.0)         # adjacent, but after a pause: a new edit
    assert len(s.hist.recent()) == 3
    s.clock.t += 5.0                                 # the open edit expires on its own
    assert not any(e.open for e in s.hist.recent())


def test_full_document_changes_give_the_same_edits():
    s = Session()
    s.open(URI, SRC)
    new = SRC.replace("super(A, self).f()", "super().f()")
    s.send(URI, types.TextDocumentContentChangeWholeDocument(text=new))
    e = s.hist.last(URI)
    assert (e.old, e.new) == ("        return super(A, self).f()\n", "        return super().f()\n")


def test_multiline_insert_and_newline_at_line_end():
    s = Session()
    s.open(URI, SRC)
    # Enter at the end of line 1, then type on the new line: one edit adding one line
    s.send(URI, ch(1, 16, 1, 16, "\n        "))
    for i, c in enumerate("x = 1"):
        s.send(URI, ch(2, 8 + i, 2, 8 + i, c))
    e = s.hist.last()
    assert e.old == "" and e.new == "        x = 1\n" and e.line == 2
    assert "@@ -2,1 +2,2 @@" in e.diff or "+        x = 1\n" in e.diff


def test_other_document_closes_and_order_is_kept():
    s = Session()
    s.open(URI, SRC)
    s.open(OTHER, "import six\nx = six.text_type('a')\n")
    s.send(URI, ch(0, 6, 0, 7, "B"))
    s.send(OTHER, ch(1, 4, 1, 17, "str"))
    edits = s.hist.recent()
    assert [e.uri for e in edits] == [URI, OTHER]
    assert edits[1].new == "x = str('a')\n" and edits[1].path == "/w/pkg/other.py"
    assert "--- a//w/pkg/other.py" in s.hist.diffs()[1]


def test_undo_of_last_edit_is_recognised():
    s = Session()
    s.open(URI, SRC)
    line = SRC.splitlines()[5]
    col = line.index(", self)") + len(", self")
    s.send(URI, ch(5, col - 7, 5, col, ""))          # delete "A, self" in one change
    s.send(URI, ch(0, 0, 0, 0, "#"))                 # elsewhere: closes it
    s.send(URI, ch(0, 0, 0, 1, ""), dt=3.0)          # take the "#" back (separate edit)
    s.hist.cursor(URI, 0)
    s.clock.t += 3.0
    edits = s.hist.recent()
    # the "#" edit and its undo left the history; the undone edit is remembered
    assert [e.new for e in edits] == ["        return super().g()\n"]
    assert s.hist.undone and s.hist.undone[-1].new == "#class A(Base):\n"


def test_history_is_bounded_and_span_helper():
    s = Session()
    s.hist.max_edits = 3
    s.open(URI, SRC)
    for i in range(6):
        s.send(URI, ch(i % 6, 0, i % 6, 0, "#"), dt=3.0)
    edits = s.hist.recent()
    assert len(edits) == 4 and [e.open for e in edits] == [False, False, False, True]
    assert [e.line for e in edits] == [2, 3, 4, 5]
    assert changed_span("abcdef", "abXdef") == (2, 3, 3)
    assert changed_span("aaa", "aaaa") == (3, 3, 4)
    e = make_edit(URI, "x\ny\n", "x\nz\n")
    assert (e.old, e.new, e.line) == ("y\n", "z\n", 1)
