"""Frames on the wire: a 4-byte big-endian length, then one msgpack map (protocol/messages.py says
what the maps hold). Reads and writes frames over asyncio streams and blocking sockets; knows
nothing of what a request means.
"""
from __future__ import annotations

import asyncio
import socket
import struct

import msgpack

from protocol.messages import BAD_REQUEST, MAX_FRAME, TOO_LARGE, ProtocolError, to_wire

HEADER = struct.Struct(">I")


def pack(msg) -> bytes:
    body = msgpack.packb(to_wire(msg), use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(TOO_LARGE, f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


def unpack_body(body: bytes):
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:
        raise ProtocolError(BAD_REQUEST, f"frame is not valid msgpack ({type(e).__name__}: {e})",
                            fatal=True) from None


# -- framing over asyncio streams and blocking sockets ----------------------------------------------

async def read_frame(reader: asyncio.StreamReader):
    """Next decoded frame, or None at EOF. A length prefix over MAX_FRAME raises TOO_LARGE at once,
    without reading the body (it may claim up to 4 GB); a body that is not msgpack raises BAD_REQUEST.
    Both are `fatal`: the caller answers and closes the connection."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError:
        return None
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(TOO_LARGE, f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit; "
                            "closing the connection", fatal=True)
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        return None
    return unpack_body(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket):
    header = _recv_exact(sock, HEADER.size)
    if header is None:
        return None
    (n,) = HEADER.unpack(header)
    if n > MAX_FRAME:
        raise ProtocolError(TOO_LARGE, f"frame of {n} bytes exceeds the {MAX_FRAME}-byte limit", fatal=True)
    body = _recv_exact(sock, n)
    return None if body is None else unpack_body(body)
