"""A small HTTP/1.1 client on asyncio streams (stdlib only), for the remote backend (daemon/remote.py):
connections kept alive and reused per host; a response read as chunked, Content-Length or
close-delimited, as it arrives. Every failure is a RemoteError with a kind the status groups by.
Knows nothing of models or prompts.
"""
from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

MAX_BODY = 1 << 20         # an error body or a /models listing larger than this is cut
IDLE_POOL = 8              # idle keep-alive connections kept per host


class RemoteError(Exception):
    """A failure of the served model, with a kind the status groups by."""

    def __init__(self, kind: str, message: str, retry: bool = False):
        super().__init__(message)
        self.kind, self.message, self.retry = kind, message, retry


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.reused = False

    def close(self) -> None:
        try:
            transport = self.writer.transport
            if transport is not None:
                transport.abort()        # no lingering: the server sees the disconnect now
            else:
                self.writer.close()
        except (OSError, RuntimeError):
            pass


class Response:
    """A response whose body is read on demand; `release()` gives the connection back when the body
    was read to its end, `close()` drops it (mid-body: the only way to stop a stream)."""

    def __init__(self, pool: "Pool", key, conn: _Conn, status: int, reason: str, headers: dict):
        self.pool, self.key, self.conn = pool, key, conn
        self.status, self.reason, self.headers = status, reason, headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left = int(length) if length is not None and length.isdigit() and not self._chunked else None
        self._chunk_left = 0
        self.done = False
        self._keep = headers.get("connection", "").lower() != "close"

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self.done:
            return b""
        r = self.conn.reader
        if self._chunked:
            if self._chunk_left == 0:
                line = await r.readline()
                if not line:
                    raise RemoteError("stream", "the server closed the connection inside a chunked response")
                try:
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                except ValueError:
                    raise RemoteError("stream", f"a malformed chunk header {line[:40]!r}") from None
                if size == 0:
                    while True:          # trailers up to the empty line
                        t = await r.readline()
                        if t in (b"\r\n", b"\n", b""):
                            break
                    self.done = True
                    return b""
                self._chunk_left = size
            data = await r.read(self._chunk_left)
            if not data:
                raise RemoteError("stream", "the server closed the connection mid-chunk (truncated response)")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                await r.readline()       # the CRLF after the chunk
            return data
        if self._left is not None:
            if self._left == 0:
                self.done = True
                return b""
            data = await r.read(min(self._left, 1 << 16))
            if not data:
                raise RemoteError("stream", "the server closed the connection before the end of its response")
            self._left -= len(data)
            return data
        data = await r.read(1 << 16)     # close-delimited
        if not data:
            self.done, self._keep = True, False
        return data

    async def body(self, limit: int = MAX_BODY) -> bytes:
        out = bytearray()
        while len(out) < limit:
            piece = await self.read()
            if not piece:
                break
            out += piece
        return bytes(out[:limit])

    def release(self) -> None:
        if self.conn is None:
            return
        if self.done and self._keep:
            self.pool.put(self.key, self.conn)
        else:
            self.conn.close()
        self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Pool:
    """Keep-alive connections per (scheme, host, port)."""

    def __init__(self):
        self.idle: dict[tuple, list[_Conn]] = {}
        self.opened = 0

    def put(self, key, conn: _Conn) -> None:
        conns = self.idle.setdefault(key, [])
        if len(conns) < IDLE_POOL and not conn.writer.is_closing():
            conn.reused = True
            conns.append(conn)
        else:
            conn.close()

    def clear(self) -> None:
        for conns in self.idle.values():
            for c in conns:
                c.close()
        self.idle.clear()

    async def _connect(self, key, timeout: float) -> _Conn:
        conns = self.idle.get(key) or []
        while conns:
            c = conns.pop()
            if not c.writer.is_closing() and not c.reader.at_eof():
                return c
            c.close()
        scheme, host, port = key
        ctx = ssl.create_default_context() if scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, limit=1 << 20), timeout)
        except asyncio.TimeoutError:
            raise RemoteError("unreachable", f"no connection to {host}:{port} within {timeout * 1e3:.0f} ms",
                              retry=True) from None
        except ssl.SSLError as e:
            raise RemoteError("unreachable", f"TLS with {host}:{port} failed: {e}") from None
        except OSError as e:
            raise RemoteError("unreachable", f"cannot connect to {host}:{port}: {e.strerror or e}",
                              retry=True) from None
        self.opened += 1
        return _Conn(reader, writer)

    async def request(self, method: str, url: str, headers: dict, body: bytes | None,
                      timeout: float) -> Response:
        """Send one request and read its status line and headers (within `timeout` seconds)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname, port)
        end = time.monotonic() + timeout
        while True:   # a reused connection the server already closed is retried on a fresh one
            conn = await self._connect(key, timeout)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            head = [f"{method} {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: keep-alive",
                    "User-Agent: tricode"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            if body is not None:
                head.append(f"Content-Length: {len(body)}")
            try:
                conn.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
                await conn.writer.drain()
                left = max(end - time.monotonic(), 0.001)
                status_line = await asyncio.wait_for(conn.reader.readline(), left)
                if not status_line:
                    raise ConnectionResetError("closed before answering")
            except asyncio.TimeoutError:
                conn.close()
                raise RemoteError("slow", f"{parts.netloc} did not answer within {timeout * 1e3:.0f} ms") from None
            except (OSError, asyncio.IncompleteReadError) as e:
                conn.close()
                if conn.reused:
                    continue
                raise RemoteError("unreachable", f"{parts.netloc} dropped the connection before answering ({e})",
                                  retry=True) from None
            except asyncio.CancelledError:
                conn.close()
                raise
            break
        try:
            _, code, *reason = status_line.decode("latin-1").split(" ", 2)
            status = int(code)
            hdrs = {}
            while True:
                line = await asyncio.wait_for(conn.reader.readline(), max(end - time.monotonic(), 0.001))
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise ValueError("the headers end early")
                k, _, v = line.decode("latin-1").partition(":")
                hdrs[k.strip().lower()] = v.strip()
        except asyncio.TimeoutError:
            conn.close()
            raise RemoteError("slow", f"{parts.netloc} sent no complete headers within {timeout * 1e3:.0f} ms") from None
        except (ValueError, OSError) as e:
            conn.close()
            raise RemoteError("stream", f"{parts.netloc} sent a malformed HTTP response ({e}): "
                                        f"{status_line[:60]!r}") from None
        except asyncio.CancelledError:
            conn.close()
            raise
        return Response(self, key, conn, status, (reason or [""])[0].strip(), hdrs)
