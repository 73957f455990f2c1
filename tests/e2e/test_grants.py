"""Token grants are enforced with the SDK: canPublish=false, canSubscribe=false, hidden."""
from __future__ import annotations

import time

import harness
from harness import assert_joined, metric, tone_presence, video_delivery

WINDOW_S = 8.0
MIN_RATIO = 0.90
MIN_TONE_S = 5.0


def _receives(res: dict, receiver: str, sender: str, hz: float) -> None:
    v = video_delivery(res[receiver], res[sender], sender, WINDOW_S)
    assert v["ratio"] >= MIN_RATIO, f"{receiver} <- {sender} video: {v}"
    a = tone_presence(res[receiver], sender, hz)
    assert a["tone_seconds"] >= MIN_TONE_S, f"{receiver} <- {sender} audio: {a}"


def _token(identity: str, room: str, **grants) -> str:
    return harness.make_token(identity, room, **grants)


def test_without_can_publish_nothing_is_published_but_media_is_received(server, peers):
    room = "!nopub:example.org"
    alice = peers("alice", room, duration=18, tone=440.0, video=True)
    # tries to publish audio and video; the SDK gets NOT_ALLOWED (or no answer) for both
    nopub = peers("nopub", room, duration=18, tone=660.0, video=True, token=_token("nopub", room, can_publish=False),
                  extra=["--publish-may-fail", "--publish-timeout", "12"])
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 2}, timeout=25)
    # while nopub tries, the server never holds more than alice's two tracks
    peak = 0.0
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        peak = max(peak, metric(server.metrics(), "switchboard_published_tracks"))
        time.sleep(0.5)
    assert peak == 2, f"published_tracks reached {peak}"
    res = harness.wait_all([alice, nopub])
    for who in res:
        assert_joined(res[who], who)
    n = res["nopub"]
    assert set(n["publish_errors"]) == {"audio", "video"} and not n["published"], (n["publish_errors"], n["published"])
    a = res["alice"]
    assert not harness.events(a, "track_published", identity="nopub"), a["events"]
    assert not harness.events(a, "track_subscribed", identity="nopub"), a["events"]
    assert "nopub" not in a["remote"], a["remote"].keys()
    assert harness.events(a, "participant_connected", identity="nopub") or "nopub" in a["initial_participants"]
    _receives(res, "nopub", "alice", 440.0)


def test_without_can_subscribe_nothing_is_received_but_media_is_sent(server, peers):
    room = "!nosub:example.org"
    alice = peers("alice", room, duration=18, tone=440.0, video=True)
    nosub = peers("nosub", room, duration=18, tone=660.0, video=True,
                  token=_token("nosub", room, can_subscribe=False))
    server.wait_metrics({"switchboard_participants": 2, "switchboard_published_tracks": 4}, timeout=25)
    res = harness.wait_all([alice, nosub])
    for who in res:
        assert_joined(res[who], who)
    n = res["nosub"]
    assert not harness.events(n, "track_subscribed"), n["events"]
    assert n["remote"] == {}, n["remote"].keys()
    # it still knows alice is there (and what she publishes), it just gets none of it
    assert harness.events(n, "participant_connected", identity="alice") or "alice" in n["initial_participants"]
    _receives(res, "alice", "nosub", 660.0)
    server.wait_metrics({"switchboard_subscriptions": 0, "switchboard_participants": 0}, timeout=10)


def test_a_hidden_participant_is_never_announced_but_subscribes(server, peers):
    room = "!hidden:example.org"
    # the hidden one is there first, so it would be in the others' initial participant list
    ghost = peers("ghost", room, duration=24, token=_token("ghost", room, hidden=True))
    server.wait_metrics({"switchboard_participants": 1}, timeout=20)
    alice = peers("alice", room, duration=16, tone=440.0, video=True)
    bob = peers("bob", room, duration=16, tone=660.0, video=True)
    server.wait_metrics({"switchboard_published_tracks": 4}, timeout=25)
    ab = harness.wait_all([alice, bob])
    ghost.proc.terminate()
    res = {**ab, "ghost": ghost.wait()}
    for who in res:
        assert_joined(res[who], who)
    for who in ("alice", "bob"):
        r = res[who]
        assert "ghost" not in r["initial_participants"], r["initial_participants"]
        assert "ghost" not in r["final_participants"], r["final_participants"]
        mentions = [e for e in r["events"] if e.get("identity") == "ghost"]
        assert not mentions, f"{who} saw the hidden participant: {mentions}"
    for sender, hz in (("alice", 440.0), ("bob", 660.0)):
        _receives(res, "ghost", sender, hz)
    # alice and bob do see each other
    for me, other in (("alice", "bob"), ("bob", "alice")):
        r = res[me]
        assert other in r["initial_participants"] or harness.events(r, "participant_connected", identity=other)
