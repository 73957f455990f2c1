"""Signal resume (`reconnect=1`, livekit-protocol.md §7.3) with the LiveKit Python SDK.

The server aborts the signalling WebSockets (`ss -K` on its side, like a proxy restart). The
participants stay in the room while their media keeps flowing, the clients resume on a new
WebSocket (ReconnectResponse), nobody sees anybody leave, and media still arrives afterwards.
A participant that never comes back is removed once the resume window has passed.
"""
from __future__ import annotations

import time

import harness
from harness import assert_joined, metric

RESUMED_WITHIN_S = 15.0  # generous: the SDKs retry at once, then back off
RESUME_WINDOW_S = 10.0  # the server's RESUME_WINDOW
FRAMES_AFTER_RESUME = 20  # video frames decoded after the drop (the peer sends 15/s or more)


def test_clients_resume_after_the_server_drops_their_websockets(server, peers):
    room = "!resume:example.org"
    alice = peers("alice", room, duration=30, tone=440.0, video=True, wait_for=["bob"])
    bob = peers("bob", room, duration=30, tone=660.0, video=True, wait_for=["alice"])
    alice.wait_event("first_frame", 30, identity="bob", kind="video")
    bob.wait_event("first_frame", 30, identity="alice", kind="video")
    before = server.metrics()
    killed = server.ns.kill_signalling()
    t_drop = time.time()
    assert killed >= 2, f"expected both signalling connections to be killed, killed {killed}"
    server.wait_metrics({"switchboard_signal_resumes_total": metric(before, "switchboard_signal_resumes_total") + 2},
                        timeout=RESUMED_WITHIN_S, op=">=")
    m = server.wait_metrics({"switchboard_signal_detached": 0}, timeout=5)
    assert metric(m, "switchboard_participants") == 2, m
    assert metric(m, "switchboard_signal_resumes_refused_total") == metric(before, "switchboard_signal_resumes_refused_total"), m
    a, b = alice.wait(), bob.wait()
    for who, res in (("alice", a), ("bob", b)):
        assert_joined(res, who)
        other = "bob" if who == "alice" else "alice"
        both_there_until = min(a["leaving"], b["leaving"])
        early = [e for e in harness.events(res, "participant_disconnected") if e["t"] < both_there_until]
        assert not early, f"{who} saw someone leave while both stayed: {early}"
        # the SDK noticed and came back (resume, not a new join: same sid, no re-subscription)
        assert harness.events(res, "reconnected"), f"{who} never reconnected: {[e['type'] for e in res['events']]}"
        subs = harness.events(res, "track_subscribed", identity=other)
        assert len(subs) == 2, f"{who} subscribed {len(subs)} times to {other}'s tracks: {subs}"
        after = [c for c, t in res["remote"][other]["video"]["counters"] if t > t_drop + 2.0]
        assert len(after) >= FRAMES_AFTER_RESUME, f"{who} decoded {len(after)} frames of {other} after the drop"


def test_a_participant_that_does_not_resume_is_removed_after_the_window(server, peers, raw_ws):
    """A raw protocol client joins and then its socket is killed; it never comes back."""
    room = "!noresume:example.org"
    alice = peers("alice", room, duration=40, tone=440.0)
    server.wait_metrics({"switchboard_participants": 1}, timeout=20)
    sc, reply = raw_ws(f"/rtc?access_token={harness.make_token('ghost', room)}&protocol=15")
    assert sc is not None, reply
    sc.wait_for("join", 5)
    server.wait_metrics({"switchboard_participants": 2}, timeout=5)
    t_drop = time.monotonic()
    server.ns.kill_signalling()
    server.wait_metrics({"switchboard_signal_detached": 1}, timeout=5)
    # kept through most of the window, then gone
    time.sleep(RESUME_WINDOW_S - 3)
    assert metric(server.metrics(), "switchboard_participants") == 2
    server.wait_metrics({"switchboard_participants": 1, "switchboard_signal_detached": 0}, timeout=10)
    assert time.monotonic() - t_drop >= RESUME_WINDOW_S - 1
    alice.proc.terminate()
    a = alice.wait()
    assert_joined(a, "alice")
    assert harness.events(a, "participant_disconnected", identity="ghost"), a["events"]

