"""The wire protocol between `tricode lsp` (or the CLI) and the daemon. Imports no torch.

Frames: a 4-byte big-endian length, then one msgpack map. Every map has a "type"; requests carry a
client-chosen integer "id" that the reply repeats. The first frame on a connection is `hello`, which
must carry the same PROTOCOL_VERSION as the daemon's (a refusal names the daemon's version, build
and pid; `shutdown` alone needs no hello on the Unix socket, so that a newer client can replace an
older daemon). The daemon answers every request exactly once:
with its reply type, or with `error` (codes below). A frame over MAX_FRAME bytes, or one that is not a
msgpack map with a known "type", gets an `error` with id -1 (or the frame's id when it can be read).
A frame that can never be valid (a length prefix over MAX_FRAME, a body that is not msgpack) also
closes the connection: the stream can no longer be trusted to be at a frame boundary, so the daemon
answers at once instead of reading on. A valid msgpack body that is not a known request leaves the
connection open.

    client -> daemon                           daemon -> client
    hello {version, client}                    hello {version, build, pid, state}
    complete {doc, prefix, suffix, ...}        result {text, mode, stats...} | error
    generate {doc, prefix, suffix, ...}        result | error        (refactors: AR, lower priority)
    next_edit {doc, text, cursor, region_*,    next_edit_result {start, end, text, ...} | error
               history, last_old, last_new}
    prefetch {doc, prefix, suffix, cursor}     ok                    (prefill ahead of a completion)
    abort {target}                             ok
    feedback {event, doc, shown, accepted}     ok
    document {uri, path, language, text|None}  ok                    (open/changed/closed documents)
    status {}                                  status {...}
    shutdown {drain}                           ok                    (drain: after the running requests)
                                               progress {stage, fraction, message}  (no id, unsolicited)

Requests and replies are dataclasses both ways: `decode_request` on the daemon's side, `decode_reply`
on the client's (Result, NextEditResult, Error, Ok, HelloReply, Progress; a `status` report stays a map).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

PROTOCOL_VERSION = 1
# The daemon's behaviour level, in its hello reply as "build" (absent: 1). Bumped when `tricode lsp`
# relies on something an older daemon lacks (2: drain-then-exit shutdown, ageing refactors). The LSP
# replaces a daemon that reports less (after the requests it is running finish). The environment
# variable TRICODE_TEST_DAEMON_BUILD makes a daemon report another build: for tests only.
DAEMON_BUILD = 2
MAX_FRAME = 8 * 1024 * 1024    # bytes of one frame's body (protocol/framing.py enforces it)

# error codes
SUPERSEDED = "superseded"      # a newer completion for the same document and client replaced it
ABORTED = "aborted"            # the client asked for it to stop
BAD_REQUEST = "bad_request"    # malformed, unknown type, bad field
TOO_LARGE = "too_large"        # frame over MAX_FRAME
NOT_READY = "not_ready"        # model still loading or failed to load
VERSION = "version"            # protocol version mismatch
INTERNAL = "internal"          # a bug on the daemon side; the daemon keeps running
SHUTTING_DOWN = "shutting_down"
REMOTE = "remote"              # the model server (backend = "openai") failed; the message says how
FORBIDDEN = "forbidden"        # a peer of another user, or a TCP client without the right token


class ProtocolError(Exception):
    """`fatal`: the framing itself is broken (see the module docstring); the connection must close."""
    def __init__(self, code: str, message: str, id: int = -1, fatal: bool = False):
        super().__init__(message)
        self.code, self.message, self.id, self.fatal = code, message, id, fatal


# -- messages ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hello:
    id: int = 0
    version: int = PROTOCOL_VERSION
    client: str = ""           # e.g. "lsp:nvim", "cli"
    token: str = ""            # only on the optional TCP listener: the content of <runtime dir>/tcp_token
    type: str = "hello"


@dataclass(frozen=True)
class Complete:
    """An inline completion: the text between prefix and suffix of one document."""
    id: int = 0
    doc: str = ""              # document URI; with the connection, the key for supersede
    prefix: str = ""           # text before the cursor (the LSP may clip it; the daemon fits it to its budget)
    suffix: str = ""           # text after the cursor
    path: str = ""             # file path, for context from the workspace and the FIM file header
    language: str = "python"
    mode: str = ""             # "" = the daemon's configured mode for this kind
    max_tokens: int = 64
    max_lines: int = 1         # stop after this many lines (1 = single-line completion)
    deadline_ms: int = 0       # time budget from arrival; 0 = the configured default
    stop: tuple[str, ...] = ()  # extra stop strings
    temperature: float = 0.0
    block_size: int = 0        # 0 = default
    threshold: float = 0.0     # 0 = default
    type: str = "complete"


@dataclass(frozen=True)
class Generate(Complete):
    """A refactor: like Complete but AR by default, refactor priority, longer outputs."""
    max_tokens: int = 256
    max_lines: int = 0          # 0 = no line limit
    # what the refactor is, for a daemon that asks an instruct model directly (daemon/prompt/chat.py
    # rewrite_messages) rather than through prefix/suffix; older clients leave them empty
    action: str = ""           # "rewrite" | "docstring" | "type_hints" | "complete_body" | ""
    original: str = ""         # rewrite: the selected code (whole lines), which the result replaces
    instruction: str = ""      # rewrite: what to do to it
    scaffold: int = 0          # characters at the end of `prefix` that are the FIM prompt's scaffold
                               # (the original commented out), not the document
    type: str = "generate"


@dataclass(frozen=True)
class Prefetch:
    """Prepare the KV cache for a completion at this place before it is asked for (answered `ok` at
    once; the daemon prefills at the lowest priority, drops it for a newer prefetch or a completion
    of the same document, and bounds the work per second)."""
    id: int = 0
    doc: str = ""
    prefix: str = ""
    suffix: str = ""
    path: str = ""
    language: str = "python"
    cursor: bool = True        # False: no cursor known (a file just opened): only the part of the
                               # prompt that does not depend on the cursor (other files, the file's head)
    type: str = "prefetch"


@dataclass(frozen=True)
class Abort:
    id: int = 0
    target: int = 0
    type: str = "abort"


@dataclass(frozen=True)
class Feedback:
    id: int = 0
    event: str = "accepted"    # accepted | rejected | partial
    doc: str = ""
    shown: int = 0             # characters shown
    accepted: int = 0          # characters accepted
    type: str = "feedback"


@dataclass(frozen=True)
class DocumentUpdate:
    """A document the editor opened, changed or closed (wire type "document"); not lsp.documents.Document,
    the LSP server's own copy of an open document."""
    id: int = 0
    uri: str = ""
    path: str = ""
    language: str = ""
    text: str | None = None    # None: the document was closed
    type: str = "document"


@dataclass(frozen=True)
class Status:
    id: int = 0
    type: str = "status"


@dataclass(frozen=True)
class Shutdown:
    id: int = 0
    drain: bool = False        # True: refuse new work (SHUTTING_DOWN), finish what is queued and running, exit
    type: str = "shutdown"


@dataclass(frozen=True)
class NextEdit:
    """A next-edit suggestion: predict the user's next edit in text[region_start:region_end] of one
    document. Offsets are code-point indices into `text` (the request's snapshot), never LSP positions.
    Like `complete`, a newer `next_edit` for the same (connection, doc) supersedes the older one."""
    id: int = 0
    doc: str = ""                  # document URI (the key for supersede)
    version: int = 0               # the document version `text` is
    path: str = ""                 # file path (the prompt names it)
    language: str = "python"
    text: str = ""                 # the whole document
    cursor: int = 0                # offset of the cursor in `text`
    region_start: int = 0          # the editable region: whole lines around the cursor
    region_end: int = 0
    history: tuple[str, ...] = ()  # the user's recent edits as unified diffs, oldest first
    last_old: str = ""             # the user's newest edit of this document (lines before/after), so the
    last_new: str = ""             # daemon can refuse a rewrite that only takes it back
    max_tokens: int = 256
    deadline_ms: int = 0
    type: str = "next_edit"


REQUESTS = {
    "hello": Hello, "complete": Complete, "generate": Generate, "prefetch": Prefetch, "abort": Abort, "feedback": Feedback,
    "document": DocumentUpdate, "status": Status, "shutdown": Shutdown, "next_edit": NextEdit}


@dataclass(frozen=True)
class Result:
    id: int
    text: str
    mode: str
    stop_reason: str = ""
    tokens: int = 0
    nfe: int = 0
    tokens_per_forward: float = 0.0
    accept_length: float = 0.0
    prefill_tokens: int = 0
    reused_tokens: int = 0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    post_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0     # length of the prompt the daemon built (context + suffix + prefix)
    context_ms: float = 0.0    # building that prompt (workspace context, tokenization)
    context_files: tuple[str, ...] = ()   # the extra-context files in the prompt, as labelled there
    loop_cut: bool = False     # the text was cut where it began to repeat itself (textkit/loops.py)
    # the repository snippets in the prompt (daemon/repo_context.py), each a map: path (relative to
    # its workspace root), start and end (1-based lines, inclusive), score, why; () when none
    repo_context: tuple[dict, ...] = ()
    # the daemon's inline prompt budget (config context_tokens) when it answered: `tricode lsp` sends no
    # more text around the cursor than that budget could use (lsp/context.py); 0 from an older daemon
    budget_tokens: int = 0
    prompt_form: str = ""      # full | window: the cursor's window alone, the full prompt being neither cached
                               # nor prefillable within prefill_budget_ms (daemon/prompt_sizing.py)
    type: str = "result"


# the stats of a result (its fields less the text and the addressing): what `tricode lsp` reports
Result.STATS = tuple(f.name for f in fields(Result)
                     if f.name not in ("id", "text", "type", "context_files", "repo_context"))


@dataclass(frozen=True)
class Error:
    """The answer to a request that failed (codes above); id -1 when the request's id is unknown."""
    id: int = -1
    code: str = ""
    message: str = ""
    type: str = "error"


@dataclass(frozen=True)
class Ok:
    id: int = 0
    queued: bool | None = None  # prefetch only: the prefill was queued
    reason: str = ""            # prefetch only: why not
    type: str = "ok"


@dataclass(frozen=True)
class HelloReply:
    id: int = 0
    version: int = PROTOCOL_VERSION
    build: int = 1              # absent from a daemon of build 1
    pid: int = 0
    state: str = ""             # loading | ready | error
    model: str = ""
    device: str = ""
    progress: float = 0.0
    message: str = ""
    budget_tokens: int = 0      # the inline prompt budget (config context_tokens), as in Result
    type: str = "hello"


@dataclass(frozen=True)
class Progress:
    """Unsolicited (no id): the model's load, while a client waits for it."""
    stage: str = ""             # loading | ready | error
    fraction: float = 0.0
    message: str = ""
    type: str = "progress"


@dataclass(frozen=True)
class NextEditResult:
    """The answer to `next_edit`: the chosen rewrite of the region and the smallest edit it makes, in
    offsets of the request's `text` (start == end == -1: no edit, `reason` says why)."""
    id: int = 0
    rewrite: str = ""              # the whole region as chosen ("" when nothing was decoded)
    start: int = -1
    end: int = -1
    text: str = ""
    confidence: float = 0.0        # mean token log-probability of the chosen rewrite (<= 0; 0: no model)
    min_logprob: float = 0.0       # the lowest token log-probability in it
    copy_logprob: float = 0.0      # mean log-probability of the region copied unchanged, for the gate
    reason: str = ""               # why there is no edit (same | undo | gate | no_pattern | ...), or ""
    source: str = ""               # the candidate chosen: pattern | model | "" (none)
    tokens: int = 0                # tokens of the model's rewrite
    forwards: int = 0              # its forwards (the prefill counted as one)
    tokens_per_forward: float = 0.0
    prompt_tokens: int = 0
    total_ms: float = 0.0
    format: str = ""               # the prompt format used (daemon/next_edit_prompt.py), or "pattern"
    type: str = "next_edit_result"

    @property
    def has_edit(self) -> bool:
        return self.start >= 0 and self.end >= self.start


# a `status` reply is an open-ended report for people and status lines: it stays a map
REPLIES = {"result": Result, "error": Error, "ok": Ok, "hello": HelloReply, "progress": Progress,
           "next_edit_result": NextEditResult}


def decode_reply(frame: dict):
    """A reply frame -> its dataclass (keys it does not know are ignored, so a client reads a newer
    daemon's replies); a `status` reply or an unknown type stays the map it was. Raises
    ProtocolError(BAD_REQUEST) when a known reply lacks a required field."""
    cls = REPLIES.get(frame.get("type")) if isinstance(frame, dict) else None
    if cls is None:
        return frame
    names = {f.name for f in fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in frame.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ProtocolError(BAD_REQUEST, f"a malformed {frame.get('type')} reply: {e}") from None


def decode_request(obj) -> object:
    """A decoded msgpack object -> a request dataclass. Raises ProtocolError(BAD_REQUEST)."""
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"a frame must be a map, got {type(obj).__name__}")
    rid = obj.get("id", -1)
    rid = rid if isinstance(rid, int) and not isinstance(rid, bool) else -1
    kind = obj.get("type")
    cls = REQUESTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(BAD_REQUEST, f"unknown message type {kind!r}; known: {', '.join(sorted(REQUESTS))}", rid)
    kwargs = {}
    for f in fields(cls):
        if f.name not in obj or f.name == "type":
            continue
        value = obj[f.name]
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if not _type_ok(value, want):
            raise ProtocolError(BAD_REQUEST, f"{kind}.{f.name}: expected {want}, got {type(value).__name__}", rid)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _type_ok(value, want: str) -> bool:
    if want == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if want == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want == "str":
        return isinstance(value, str)
    if want == "bool":
        return isinstance(value, bool)
    if want == "str | None":
        return value is None or isinstance(value, str)
    if want.startswith("tuple[str"):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return True


def to_wire(msg) -> dict:
    return asdict(msg) if hasattr(msg, "__dataclass_fields__") else dict(msg)


def error(id: int, code: str, message: str) -> dict:
    return to_wire(Error(id, code, message))


def ok(id: int, **extra) -> dict:
    return {"type": "ok", "id": id, **extra}
