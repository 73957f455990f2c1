"""Connection quality (`ConnectionQualityUpdate`, every 5 s on change) on a clean call: the
Python SDK's `connection_quality_changed` and livekit-client's `ConnectionQualityChanged`
report EXCELLENT for everyone; a raw client reads the updates themselves."""
from __future__ import annotations

import time

import harness
import lkproto
from browser import connect_all
from harness import assert_joined
from lkproto import lkm, lkrtc

ROOM = "quality"


def test_a_clean_call_is_excellent_for_everyone(server, peers, raw_ws):
    sc, reply = raw_ws(lkproto.rtc_path(harness.make_token("eve", ROOM), protocol=16))
    assert sc is not None, reply.status_line
    assert sc.recv(5).WhichOneof("message") == "join"
    alice = peers("alice", ROOM, duration=14, tone=440.0, video=True)
    bob = peers("bob", ROOM, duration=14, tone=550.0)
    msgs: list[lkrtc.SignalResponse] = []
    end = time.monotonic() + 16
    while (left := end - time.monotonic()) > 0:
        sc.send(lkrtc.SignalRequest(ping_req=lkrtc.Ping(timestamp=int(time.time() * 1000))))
        msgs += sc.drain(min(3.0, left))
    res = harness.wait_all([alice, bob])
    for who in res:
        assert_joined(res[who], who)
    sids = {who: r["local_sid"] for who, r in res.items()}

    updates = [m.connection_quality for m in msgs if m.WhichOneof("message") == "connection_quality"]
    assert updates, f"eve got no connection_quality; got {[m.WhichOneof('message') for m in msgs]}"
    for u in updates:
        print("connection_quality", [(i.participant_sid, lkm.ConnectionQuality.Name(i.quality), i.score)
                                     for i in u.updates])
    latest: dict[str, lkm.ConnectionQuality] = {}
    for u in updates:
        for i in u.updates:
            latest[i.participant_sid] = i.quality
    for who in ("alice", "bob"):
        assert latest.get(sids[who]) == lkm.ConnectionQuality.EXCELLENT, (who, updates)
    # nobody was ever scored below EXCELLENT on a clean call
    assert all(i.quality == lkm.ConnectionQuality.EXCELLENT for u in updates for i in u.updates), updates

    for who, other in (("alice", "bob"), ("bob", "alice")):
        seen = harness.events(res[who], "connection_quality_changed", identity=other)
        assert seen, f"{who} never got {other}'s connection quality: {res[who]['events'][-20:]}"
        assert {e["quality"] for e in seen} == {"QUALITY_EXCELLENT"}, seen


def test_livekit_client_reports_excellent(server, browser):
    alice, bob = browser.open("alice", "2.23"), browser.open("bob", "2.22")
    connect_all([alice, bob], ROOM)
    alice.call("publishMic")
    got = bob.wait_event("connectionQualityChanged", 15, identity="alice")
    assert {e["quality"] for e in got} == {"excellent"}, got
    own = alice.wait_event("connectionQualityChanged", 15, identity="alice")
    assert {e["quality"] for e in own} == {"excellent"}, own
