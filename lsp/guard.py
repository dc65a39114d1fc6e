"""The JSON-RPC edge of `tricode lsp`: whatever a client sends, every request gets exactly one response,
and a client's protocol error never becomes a window/showMessage.

pygls 2 turns each message into lsprotocol types inside `json.loads` (an object_hook); when that fails
it raises out of its read loop, so the request is never answered and the error goes to
`report_server_error`, whose default pops an "Error in server" dialog. `GuardedProtocol` instead:

- a message whose params do not fit the method's type becomes an `Invalid` placeholder: a request is
  answered InvalidParams (-32602) with the bad fields named in LSP spelling
  ("params.position.line: should be in range [0:2147483647], but was -1"); a notification is logged;
- integers are strict: a string or a fractional number for a line is InvalidParams (cattrs alone would
  turn "3" into 3 and 1.7 into 1);
- a JSON value that is not a JSON-RPC 2.0 object: InvalidRequest (-32600) when an id can be read;
  a body that is not JSON: ParseError (-32700) with id null (JSON-RPC 2.0, section 5);
- requests before `initialize`: ServerNotInitialized (-32002); a second `initialize`, and any request
  after `shutdown`: InvalidRequest (-32600); notifications then are dropped (only `exit` acts);
  unknown methods: MethodNotFound (-32601, pygls);
- failures of notifications and of the transport are logged, rate-limited per kind (`RateLimitedLog`),
  and so are pygls' own error logs (`RateLimitFilter`).

What this module does not know: the meaning of any method. Handlers check meaning (open documents,
ranges) and answer with their own errors.
"""
from __future__ import annotations

import json
import logging
import time

from cattrs.errors import BaseValidationError
from lsprotocol import types
from pygls.exceptions import (JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError,
                              JsonRpcServerNotInitialized)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import (JsonRPCNotification, JsonRPCProtocol, JsonRPCRequestMessage,
                                     JsonRPCResponseMessage)

log = logging.getLogger(__name__)

MAX_DETAIL = 3          # fields named in one error message


class RateLimitedLog:
    """At most `burst` lines per `window` seconds per key; the number left out is told with the next line."""

    def __init__(self, logger: logging.Logger, burst: int = 5, window: float = 10.0):
        self.logger, self.burst, self.window = logger, burst, window
        self._seen: dict[str, list] = {}       # key -> [window start, lines this window, suppressed]

    def warning(self, key: str, msg: str, *args) -> bool:
        now = time.monotonic()
        entry = self._seen.setdefault(key, [now, 0, 0])
        if now - entry[0] > self.window:
            entry[0], entry[1] = now, 0
        if entry[1] >= self.burst:
            entry[2] += 1
            return False
        entry[1] += 1
        if entry[2]:
            msg += f" ({entry[2]} similar messages suppressed)"
            entry[2] = 0
        self.logger.warning(msg, *args)
        return True


class RateLimitFilter(logging.Filter):
    """For pygls' own loggers: a traceback per bad request is logged at most `burst` times per `window`
    seconds for each message format (a client looping on a bad request would flood the log)."""

    def __init__(self, burst: int = 5, window: float = 10.0):
        super().__init__()
        self.burst, self.window = burst, window
        self._seen: dict[str, list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        entry = self._seen.setdefault(str(record.msg), [now, 0])
        if now - entry[0] > self.window:
            entry[0], entry[1] = now, 0
        entry[1] += 1
        return entry[1] <= self.burst


_PYGLS_LOGGERS = ("pygls.protocol.json_rpc", "pygls.protocol.language_server", "pygls.server", "pygls.io_")


def limit_pygls_logs() -> None:
    for name in _PYGLS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(RateLimitFilter())


class Invalid:
    """A message that did not structure: the raw JSON object and what was wrong with it."""

    def __init__(self, raw: dict, problem: str, request_error: bool = False):
        self.raw, self.problem = raw, problem
        self.request_error = request_error      # the message itself is wrong (InvalidRequest), not its params

    @property
    def method(self):
        return self.raw.get("method")

    @property
    def id(self):
        return self.raw.get("id")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def describe(exc: BaseException, path: str = "") -> list[str]:
    """The leaf errors of a cattrs validation error, each as "<LSP field path>: <what was wrong>"."""
    if isinstance(exc, BaseValidationError):
        out: list[str] = []
        for sub in exc.exceptions:
            where = path
            for note in getattr(sub, "__notes__", []):
                if hasattr(note, "name") and isinstance(note.name, str):
                    where = f"{path}.{_camel(note.name)}" if path else _camel(note.name)
                elif isinstance(getattr(note, "index", None), int):
                    where = f"{path}[{note.index}]"
            out += describe(sub, where)
        return out
    text = str(exc)
    if isinstance(exc, KeyError):
        text = "required field missing"
    return [f"{path or 'message'}: {text}"]


def strict_int(value, want) -> int:
    """An int (or an IntEnum member) from a JSON number that is an integer; no strings, no bools.
    (Registered for int, it also receives bool, a subclass: there only true and false pass.)"""
    if want is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {_short(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected an integer, got {type(value).__name__} {_short(value)}")
    if isinstance(value, float) and not value.is_integer():
        raise TypeError(f"expected an integer, got {value!r}")
    return int(value) if want is int else want(int(value))


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _valid_id(value) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class GuardedProtocol(LanguageServerProtocol):
    def __init__(self, server, converter):
        super().__init__(server, converter)
        converter.register_structure_hook(int, strict_int)      # IntEnums too (they are ints)
        self.initialize_seen = False
        self.limited = RateLimitedLog(log)
        limit_pygls_logs()

    # -- structuring (called by json.loads for every JSON object of a message) -------------------------

    def structure_message(self, data: dict):
        if "jsonrpc" not in data:
            return data             # a nested object, or a message without "jsonrpc" (see handle_message)
        if data["jsonrpc"] != JsonRPCProtocol.VERSION:
            return Invalid(data, f'"jsonrpc" must be "2.0", got {_short(data["jsonrpc"])}', request_error=True)
        try:
            if "id" in data and "error" in data:
                cls = types.ResponseErrorMessage
            elif "id" in data and "method" in data:
                cls = self.get_message_type(data["method"]) or JsonRPCRequestMessage
            elif "id" in data:
                cls = self._result_types.pop(data["id"], None) or JsonRPCResponseMessage
            else:
                cls = self.get_message_type(data.get("method", "")) or JsonRPCNotification
            if cls in (JsonRPCRequestMessage, JsonRPCNotification) and "params" not in data:
                data = {**data, "params": None}     # custom methods: params may be left out (JSON-RPC 2.0)
            return self._converter.structure(data, cls)
        except Exception as exc:        # noqa: BLE001 - whatever is wrong, it is the message's fault
            problems = describe(exc)
            text = "; ".join(problems[:MAX_DETAIL]) + (f" (and {len(problems) - MAX_DETAIL} more)"
                                                       if len(problems) > MAX_DETAIL else "")
            return Invalid(data, text)

    # -- dispatch -------------------------------------------------------------------------------------

    def handle_message(self, message):
        if isinstance(message, Invalid):
            self._answer_invalid(message)
            return
        if not hasattr(message, "jsonrpc"):
            self._answer_not_jsonrpc(message)
            return
        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")
        if message.jsonrpc != JsonRPCProtocol.VERSION:
            if is_request:
                self._error(message.id, JsonRpcInvalidRequest(f'"jsonrpc" must be "2.0", got {_short(message.jsonrpc)}'))
            return
        if is_request and not _valid_id(message.id):
            self._error(None, JsonRpcInvalidRequest(f"{method}: the id must be an integer or a string, "
                                                    f"got {_short(message.id)}"))
            return
        if method is None:                  # a response to one of our requests
            super().handle_message(message)
            return
        if method == types.EXIT:
            super().handle_message(message)
            return
        if self._shutdown:
            if is_request:
                self._error(message.id, JsonRpcInvalidRequest(
                    f"{method}: the server was shut down; only the exit notification is accepted now"))
            else:
                self.limited.warning("after-shutdown", "dropped %s: the server was shut down", method)
            return
        if method == types.INITIALIZE:
            if self.initialize_seen:
                self._error(message.id, JsonRpcInvalidRequest("initialize was already sent; it is sent once"))
                return
            self.initialize_seen = True
        elif not self.initialize_seen:
            if is_request:
                self._error(message.id, JsonRpcServerNotInitialized(
                    f"{method}: the server is not initialized; send initialize first"))
            else:
                self.limited.warning("before-initialize", "dropped %s: sent before initialize", method)
            return
        super().handle_message(message)

    def _answer_invalid(self, message: Invalid) -> None:
        method, rid = message.method, message.id
        name = method if isinstance(method, str) else "message"
        if "id" in message.raw and isinstance(method, str):          # a request
            if not _valid_id(rid):
                self._error(None, JsonRpcInvalidRequest(f"{name}: the id must be an integer or a string, "
                                                        f"got {_short(rid)}"))
            elif not self.initialize_seen and method != types.INITIALIZE:
                self._error(rid, JsonRpcServerNotInitialized(f"{method}: the server is not initialized"))
            elif self._shutdown and method != types.EXIT:
                self._error(rid, JsonRpcInvalidRequest(f"{method}: the server was shut down"))
            elif message.request_error:
                self._error(rid, JsonRpcInvalidRequest(f"{name}: {message.problem}"))
            else:
                self._error(rid, JsonRpcInvalidParams(f"{name}: invalid params: {message.problem}"))
        elif "id" in message.raw and "method" not in message.raw:    # a client's response we cannot read
            self.limited.warning("bad-response", "unreadable response from the client: %s", message.problem)
        else:
            self.limited.warning(f"bad-notification:{name}", "ignored %s: %s", name, message.problem)

    def _answer_not_jsonrpc(self, message) -> None:
        rid = message.get("id") if isinstance(message, dict) else None
        if isinstance(message, dict) and "method" in message and "id" in message:
            self._error(rid if _valid_id(rid) else None,
                        JsonRpcInvalidRequest('not a JSON-RPC 2.0 request: "jsonrpc": "2.0" is missing'))
        elif isinstance(message, dict) and "method" not in message and "id" in message:
            self.limited.warning("bad-response", "a response without \"jsonrpc\": %s", _short(rid))
        elif isinstance(message, list):
            self._error(None, JsonRpcInvalidRequest("batches (JSON arrays) are not part of the LSP"))
        elif isinstance(message, dict) and "method" in message:
            self.limited.warning("not-jsonrpc", "ignored a notification without \"jsonrpc\"")
        else:
            self._error(None, JsonRpcInvalidRequest(f"a message must be a JSON-RPC 2.0 object, got "
                                                    f"{type(message).__name__}"))

    def _error(self, msg_id, exc) -> None:
        self.limited.warning(f"error:{exc.code}", "answered %s with %d: %s", msg_id, exc.code, exc.message)
        if msg_id is None:      # lsprotocol's converter would drop the null id, which JSON-RPC requires
            self._send_data({"jsonrpc": JsonRPCProtocol.VERSION, "id": None,
                             "error": {"code": exc.code, "message": exc.message}})
        else:
            self._send_response(msg_id, error=exc.to_response_error())

    def answer_parse_error(self, exc: Exception) -> None:
        """The body was not JSON (or not UTF-8): ParseError with id null."""
        self._error(None, JsonRpcParseError(f"the message body is not valid JSON: {exc}"))


def report_server_error(server, error: Exception, source) -> None:
    """Replacement for pygls' report_server_error: the body of an unreadable message is answered
    ParseError; everything else is logged, never shown to the user (a client's error is not theirs)."""
    if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
        protocol = server.protocol
        if isinstance(protocol, GuardedProtocol):
            protocol.answer_parse_error(error)
            return
    limited = getattr(server.protocol, "limited", None)
    if limited is not None:
        limited.warning(f"server-error:{type(error).__name__}", "%s: %s: %s",
                        getattr(source, "__name__", source), type(error).__name__, error)
    else:
        log.warning("%s: %s", type(error).__name__, error)
