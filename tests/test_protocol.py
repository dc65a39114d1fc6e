"""Typed replies (protocol/messages.py): what the daemon sends decodes into the reply's dataclass."""
import pytest

import protocol
from protocol import Error, HelloReply, Ok, Progress, Result, decode_reply


def test_replies_decode_to_their_dataclasses():
    res = Result(id=3, text="x = 1", mode="ar", stop_reason="eos", tokens=4, context_files=("a.py",), loop_cut=True)
    wire = protocol.unpack_body(protocol.pack(res)[protocol.HEADER.size:])     # through msgpack, lists and all
    assert decode_reply(wire) == res
    assert decode_reply(protocol.error(7, protocol.ABORTED, "request 7 was aborted")) == \
        Error(7, protocol.ABORTED, "request 7 was aborted")
    assert decode_reply(protocol.ok(2, queued=False, reason="prefetch is off")) == Ok(2, False, "prefetch is off")
    assert decode_reply({"type": "hello", "id": 1, "version": 1, "pid": 9, "state": "ready"}) == \
        HelloReply(id=1, pid=9, state="ready")
    assert decode_reply(protocol.to_wire(Progress("loading", 0.5, "reading"))) == Progress("loading", 0.5, "reading")


def test_newer_fields_are_ignored_status_stays_a_map_and_a_broken_result_is_an_error():
    assert decode_reply({"type": "result", "id": 1, "text": "t", "mode": "ar", "from_the_future": 1}).text == "t"
    status = {"type": "status", "id": 1, "state": "ready"}
    assert decode_reply(status) is status
    with pytest.raises(protocol.ProtocolError, match="malformed result"):
        decode_reply({"type": "result", "id": 1})
    assert set(Result.STATS) >= {"mode", "tokens", "stop_reason", "total_ms", "loop_cut"}
    assert not {"id", "text", "type"} & set(Result.STATS)
