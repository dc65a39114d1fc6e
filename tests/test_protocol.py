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


def test_next_edit_round_trips_through_a_frame_and_is_checked():
    from protocol import NextEdit, NextEditResult, decode_request, pack, unpack_body
    msg = NextEdit(id=7, doc="file:///a.py", version=3, path="a.py", text="x = 1\ny = 2\n", cursor=6,
                   region_start=0, region_end=12, history=("--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x=1\n+x = 1\n",),
                   last_old="x=1\n", last_new="x = 1\n")
    frame = pack(msg)
    back = decode_request(unpack_body(frame[protocol.HEADER.size:]))
    assert back == msg and isinstance(back.history, tuple)
    with pytest.raises(protocol.ProtocolError) as e:
        decode_request({"type": "next_edit", "id": 3, "cursor": "6"})
    assert e.value.code == protocol.BAD_REQUEST and e.value.id == 3 and "next_edit.cursor" in e.value.message
    with pytest.raises(protocol.ProtocolError) as e:
        decode_request({"type": "next_edit", "id": 4, "history": ["ok", 5]})
    assert "next_edit.history" in e.value.message
    res = decode_reply(protocol.to_wire(NextEditResult(id=7, rewrite="x = 1\n", start=0, end=3, text="x = 1",
                                                       confidence=-0.5, source="pattern")) | {"newer": 1})
    assert isinstance(res, NextEditResult) and res.has_edit and res.source == "pattern"
    none = decode_reply({"type": "next_edit_result", "id": 8, "reason": "gate"})
    assert isinstance(none, NextEditResult) and not none.has_edit and none.reason == "gate"
