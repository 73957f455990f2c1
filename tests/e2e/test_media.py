"""Audio + video through the SFU with the real LiveKit Python SDK (acceptance items 1, 2, 7)."""
from __future__ import annotations

import time

import pytest

import harness
from harness import assert_joined, tone_presence, video_delivery

TONES = {"alice": 440.0, "bob": 660.0, "carol": 550.0}
WINDOW_S = 10.0  # counters must arrive over this long, from the first decoded frame
MIN_RATIO = 0.90  # share of the sender's distinct frame counters the receiver must decode
MIN_TONE_S = 7.0  # seconds of the sender's tone (dominant frequency) the receiver must hear


def check_av(results: dict, receiver: str, sender: str, *, window: float = WINDOW_S,
             min_tone_s: float = MIN_TONE_S) -> None:
    r, s = results[receiver], results[sender]
    v = video_delivery(r, s, sender, window)
    assert v["ratio"] >= MIN_RATIO, f"{receiver} <- {sender} video: {v}"
    a = tone_presence(r, sender, TONES[sender])
    assert a["tone_seconds"] >= min_tone_s, f"{receiver} <- {sender} audio: {a}"
    # nothing else (e.g. the receiver's own tone, or a third peer's) dominates this track
    assert a["other_seconds"] <= 0.1 * a["tone_seconds"] + 0.6, f"{receiver} <- {sender} audio: {a}"


@pytest.mark.parametrize("single_pc", ["default", "false"], ids=["client-default", "client-single_pc=False"])
@pytest.mark.parametrize("server_args", [[], ["--disable-rtc-v1"]], ids=["server-default", "server-disable-rtc-v1"])
def test_two_participants_exchange_audio_and_video(start_server, peers, server_args, single_pc):
    server = start_server(*server_args)
    room = "!abc:example.org"
    if "--disable-rtc-v1" in server_args:
        # the fallback to /rtc only happens on a 404 for /rtc/v1 (and, for JS, a CORS'd 404
        # on /rtc/v1/validate); make sure that is what this server answers
        tok = harness.make_token("probe", room)
        r = server.ns.ws_upgrade(f"/rtc/v1?access_token={tok}&join_request=AAAA")
        assert r["status"] == 404, f"/rtc/v1 with --disable-rtc-v1: {r['status_line']} {r['body'][:200]!r}"
        r = server.ns.http_get(f"/rtc/v1/validate?access_token={tok}&join_request=AAAA")
        assert r["status"] == 404, f"/rtc/v1/validate with --disable-rtc-v1: {r}"
        acao = {k.lower(): v for k, v in r["headers"].items()}.get("access-control-allow-origin")
        assert acao == "*", f"/rtc/v1/validate 404 without Access-Control-Allow-Origin: * ({r['headers']})"
    duration = WINDOW_S + 8  # leaves up to ~7 s for join + first frame
    ps = [peers(who, room, duration=duration, tone=TONES[who], video=True, single_pc=single_pc)
          for who in ("alice", "bob")]
    res = harness.wait_all(ps)
    for who in res:
        assert_joined(res[who], who)
    check_av(res, "alice", "bob")
    check_av(res, "bob", "alice")
    # each got exactly the other's two tracks, and never its own
    for me, other in (("alice", "bob"), ("bob", "alice")):
        assert set(res[me]["remote"]) == {other}, res[me]["remote"].keys()
        subs = harness.events(res[me], "track_subscribed", identity=other)
        assert sorted(e["kind"] for e in subs) == ["audio", "video"], subs


def test_late_joiner_receives_both(start_server, peers):
    start_server()
    room = "a/b+c="
    early = [peers(who, room, duration=32, tone=TONES[who], video=True) for who in ("alice", "bob")]
    # let alice and bob join and publish before carol comes
    time.sleep(8)
    carol = peers("carol", room, duration=14, wait_for=["alice", "bob"], settle=0)
    res = harness.wait_all([carol, *early])
    for who in res:
        assert_joined(res[who], who)
    assert set(res["carol"]["initial_participants"]) == {"alice", "bob"}, res["carol"]["initial_participants"]
    for sender in ("alice", "bob"):
        check_av(res, "carol", sender, window=6.0, min_tone_s=5.0)
    # the early pair saw carol arrive, and were not disturbed by it
    for who in ("alice", "bob"):
        assert harness.events(res[who], "participant_connected", identity="carol"), res[who]["events"]
    check_av(res, "alice", "bob", window=20.0, min_tone_s=15.0)
    check_av(res, "bob", "alice", window=20.0, min_tone_s=15.0)
